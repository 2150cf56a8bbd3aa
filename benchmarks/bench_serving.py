"""Serving throughput on the embedded model, in one run (issue 3's bars).

Prints tokens/s for concurrency 1, 8, 32 x {unguided, one doctor, two doctors}, for the torch
engine called directly and through HTTP (a real `llmdoctor serve` subprocess), then the ratios
the bars are about, and the server's time to ready. Doctors are LoRA adapters (r 8, q/v) with
random weights: speed does not depend on what they learned.

    .venv/bin/python benchmarks/bench_serving.py [--max-tokens 64] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from llmdoctor.server.engine.protocol import DoctorWeight, GenerateRequest, Guidance, SamplingParams
from llmdoctor.server.engine.torch_engine import TorchEngine
from llmdoctor.server.model_store import resolve_model

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle on the beach."
SETTINGS = {
    "unguided": [],
    "one doctor": [("doc_a", 0.5)],
    "two doctors": [("doc_a", 0.5), ("doc_b", 0.3)],
}


def make_random_doctors(model_folder: Path, root: Path) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = {}
    for i, name in enumerate(("doc_a", "doc_b")):
        torch.manual_seed(i)
        base = AutoModelForCausalLM.from_pretrained(model_folder)
        lora = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        lora.save_pretrained(root / name, save_embedding_layers=False)  # else peft asks the hub
        paths[name] = root / name
    return paths


async def engine_throughput(engine, prompt_ids, doctors, concurrency, max_tokens) -> float:
    guidance = Guidance(doctors=tuple(DoctorWeight(n, b) for n, b in doctors))

    async def one(i):
        request = GenerateRequest(f"b{time.monotonic_ns()}-{i}", prompt_ids,
                                  SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True), guidance)
        n = 0
        async for event in engine.generate(request):
            n += len(event.token_ids)
        return n

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(concurrency))))
    return tokens / (time.perf_counter() - start)


async def http_throughput(base_url, doctors, concurrency, max_tokens) -> float:
    body = {"model": "SmolLM2-135M-Instruct", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True}
    if doctors:
        body["guidance"] = {"doctors": [{"name": n, "beta": b} for n, b in doctors]}
    return await post_throughput(base_url, "/v1/completions", body, concurrency)


async def post_throughput(base_url: str, path: str, body: dict, concurrency: int) -> float:
    """Completion tokens/s of `concurrency` copies of one request sent at once."""
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        async def one(_):
            r = await client.post(path, json=body)
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(concurrency))))
        return tokens / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(doctors: dict[str, Path], root: Path, port: int, max_batch: int) -> tuple[subprocess.Popen, float]:
    cmd = [sys.executable, "-m", "llmdoctor.server.cli", "serve", "--port", str(port), "--adapter-root", str(root),
           "--max-batch", str(max_batch)]
    for name, path in doctors.items():
        cmd += ["--doctor", f"{name}={path}"]
    return launch(cmd, port)


def launch(cmd: list[str], port: int, timeout: float = 120, env: dict[str, str] | None = None,
           ) -> tuple[subprocess.Popen, float]:
    """A server subprocess once its /health answers 200, and the seconds that took. Its log goes to a temp
    file, whose tail the error shows if it dies first."""
    log = tempfile.NamedTemporaryFile(prefix="llmdoctor-bench-", suffix=".log", delete=False)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    while time.perf_counter() - start < timeout:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, time.perf_counter() - start
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd[:4])} exited with {proc.returncode}:\n"
                               f"{Path(log.name).read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{' '.join(cmd[:4])} not ready in {timeout:g} s (log: {log.name})")


def settings_bench_parser(description: str) -> argparse.ArgumentParser:
    """The flags of a bench that compares request settings over HTTP (bench_explain, bench_structured_output)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--engine", choices=("torch", "vllm"), default="torch")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    return parser


def measure_on_server(args, measure):
    """`measure(url, args)` (a coroutine function) against a fresh `llmdoctor serve --engine args.engine` on the
    embedded default; its result, after printing the run's conditions."""
    port = free_port()
    proc, ready = launch([sys.executable, "-m", "llmdoctor.server.cli", "serve", "--port", str(port),
                          "--engine", args.engine], port, timeout=300)
    try:
        results = asyncio.run(measure(f"http://127.0.0.1:{port}", args))
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"engine {args.engine}, concurrency {args.concurrency}, {args.max_tokens} tokens, median of {args.rounds} "
          f"rounds (server ready in {ready:.0f} s)")
    return results


def print_table(results, concurrencies):
    print(f"\n{'path':<8} {'setting':<12} " + " ".join(f"{'c=' + str(c):>9}" for c in concurrencies) + "   tokens/s")
    for (path, setting), row in results.items():
        print(f"{path:<8} {setting:<12} " + " ".join(f"{row[c]:9.1f}" for c in concurrencies))


def print_ratios(results, concurrencies):
    direct = {s: results[("engine", s)] for s in SETTINGS}
    print("\nratios (bar in brackets)")
    if 1 in concurrencies and 8 in concurrencies:
        print(f"  concurrency 8 / 1, unguided, engine:   {direct['unguided'][8] / direct['unguided'][1]:.2f}  [>= 3]")
    for c in concurrencies:
        print(f"  one doctor / unguided, engine, c={c:<3}: {direct['one doctor'][c] / direct['unguided'][c]:.2f}  [>= 0.45]")
        print(f"  two doctors / unguided, engine, c={c:<2}: {direct['two doctors'][c] / direct['unguided'][c]:.2f}  [>= 0.30]")
    if ("http", "unguided") in results:
        for c in concurrencies:
            ratio = results[("http", "unguided")][c] / direct["unguided"][c]
            print(f"  http / engine, unguided, c={c:<9}: {ratio:.2f}  [>= 0.90 at c=8]")


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--no-http", action="store_true", help="engine only")
    args = parser.parse_args()
    model = resolve_model(None)
    root = Path(tempfile.mkdtemp(prefix="llmdoctor-bench-"))
    doctors = make_random_doctors(model.folder, root)
    max_batch = max(args.concurrency)
    results = {}

    engine = TorchEngine(model, max_batch=max_batch)
    await engine.start()
    for name, path in doctors.items():
        await engine.load_adapter(name, str(path), "doctor")
    from transformers import AutoTokenizer

    prompt_ids = tuple(AutoTokenizer.from_pretrained(model.folder)(PROMPT)["input_ids"])
    await engine_throughput(engine, prompt_ids, [], 1, 4)  # warm-up
    for setting, ds in SETTINGS.items():
        results[("engine", setting)] = {
            c: await engine_throughput(engine, prompt_ids, ds, c, args.max_tokens) for c in args.concurrency
        }
        print("engine", setting, {c: round(v, 1) for c, v in results[("engine", setting)].items()}, flush=True)
    await engine.shutdown(grace_seconds=0)
    del engine

    if not args.no_http:
        port = free_port()
        proc, ready = start_server(doctors, root, port, max_batch)
        try:
            url = f"http://127.0.0.1:{port}"
            await http_throughput(url, [], 1, 4)  # warm-up
            for setting, ds in SETTINGS.items():
                results[("http", setting)] = {
                    c: await http_throughput(url, ds, c, args.max_tokens) for c in args.concurrency
                }
                print("http", setting, {c: round(v, 1) for c, v in results[("http", setting)].items()}, flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
        print(f"\nserver ready after {ready:.1f} s (model cache already converted)")

    print_table(results, args.concurrency)
    print_ratios(results, args.concurrency)
    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"max_tokens {args.max_tokens}, prompt {len(prompt_ids)} tokens")


if __name__ == "__main__":
    asyncio.run(main())
