"""Ray Serve's added latency per request: `llmdoctor serve` (in-process) vs `--replicas 1` (Serve).

Builds a random-weights Llama-shaped model with the embedded model's tokenizer (speed only; the
"patient" shape of bench_torch_engine_gpu.py, ~1.07 B, or a toy one with --tiny), starts each
server in turn on it, and times short chat requests (greedy, `ignore_eos`, 16 new tokens by
default) at concurrency 1 and 8 after a warm-up at each: mean, p50 and p90 seconds per request,
then what Serve adds at p50.

    python benchmarks/bench_serve_overhead.py --tokenizer DIR                  # GPU, bf16
    python benchmarks/bench_serve_overhead.py --tokenizer DIR --tiny           # CPU smoke run

--tiny checks the script, not the overhead: on a small busy CPU the two paths' torch threads fight
the HTTP side differently (in-process, 2 threads on a loaded 2-core box were ~18x slower than 1).
benchmarks/device_serve_overhead.sh runs it on a GPU machine that lacks Ray and FastAPI.
Each server's log is kept in --log-dir (serve-in-process.log, serve-replicas.log).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

CONCURRENCY = (1, 8)
SETUPS = (  # label, log file, extra `llmdoctor serve` flags
    ("in-process", "serve-in-process.log", ()),
    ("Serve, 1 replica", "serve-replicas.log", ("--replicas", "1")),
)
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}


def build_random_model(folder: Path, tokenizer: Path, tiny: bool, device: str, dtype: str) -> Path:
    """A transformers folder with random weights in `dtype`, built on `device` (faster on a GPU)."""
    import torch
    from bench_torch_engine_gpu import build_model  # benchmarks/ is sys.path[0] when run as a script

    build_model("tiny-patient" if tiny else "patient", folder, tokenizer, device, getattr(torch, dtype))
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def start_server(port: int, model: Path, log: Path, args: argparse.Namespace, extra: tuple[str, ...]):
    """Start `llmdoctor serve` and return it once /health (and every replica) says healthy.

    Raises RuntimeError with the log's tail if the server exits or is not healthy in time."""
    command = [sys.executable, "-m", "llmdoctor.server.cli", "serve", "--model", str(model), "--port", str(port),
               "--device", args.device, "--dtype", args.dtype, "--log-level", "warning", "--shutdown-grace", "2",
               *extra]
    process = subprocess.Popen(command, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)
    started = time.monotonic()
    while time.monotonic() - started < args.start_timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail(log)}")
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            replicas = health.json().get("replicas")
            if health.status_code == 200 and (replicas is None or all(r["healthy"] for r in replicas)):
                print(f"  healthy after {time.monotonic() - started:.1f} s", flush=True)
                return process
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"server not healthy after {args.start_timeout:.0f} s:\n{tail(log)}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def latencies(client: httpx.Client, requests: int, concurrency: int, max_tokens: int) -> list[float]:
    """Seconds per request for `requests` chat requests, `concurrency` in flight, after two
    uncounted rounds of `concurrency` requests (warm-up)."""
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True}

    def one(_: int) -> float:
        started = time.perf_counter()
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == max_tokens, response.text
        return time.perf_counter() - started

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(2 * concurrency)))  # warm-up
        return list(pool.map(one, range(requests)))


def measure(model: Path, args: argparse.Namespace) -> dict[tuple[str, int], list[float]]:
    rows = {}
    for port, (label, log_name, extra) in enumerate(SETUPS, start=args.port):
        print(f"{label}: starting on port {port}", flush=True)
        server = start_server(port, model, args.log_dir / log_name, args, extra)
        try:
            limits = httpx.Limits(max_connections=max(CONCURRENCY), max_keepalive_connections=max(CONCURRENCY))
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300, limits=limits) as client:
                for c in CONCURRENCY:
                    rows[(label, c)] = latencies(client, args.requests, c, args.max_tokens)
                    print(f"  c={c}: p50 {statistics.median(rows[(label, c)]) * 1000:.1f} ms", flush=True)
        finally:
            stop_server(server)
    return rows


def report(rows: dict[tuple[str, int], list[float]], args: argparse.Namespace, hardware: str) -> str:
    model = "tiny" if args.tiny else "1.07 B"
    title = (f"## Serve's added latency: {hardware}, {args.dtype}, {model} random Llama, "
             f"{args.requests} chat requests x {args.max_tokens} tokens per row (greedy, ignore_eos)")
    lines = [title, "", "| path | concurrency | mean ms | p50 ms | p90 ms |", "|---|---|---|---|---|"]
    for (label, c), values in rows.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        lines.append(f"| {label} | {c} | {statistics.mean(values) * 1000:.1f} | "
                     f"{statistics.median(values) * 1000:.1f} | {p90 * 1000:.1f} |")
    lines.append("")
    for c in CONCURRENCY:
        base, serve = (statistics.median(rows[(label, c)]) for label, _, _ in SETUPS)
        lines.append(f"c={c}: Serve adds {(serve - base) * 1000:.1f} ms per request at p50 ({serve / base:.2f}x)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True, help="folder holding tokenizer.json etc.")
    parser.add_argument("--tiny", action="store_true", help="a toy model on the CPU in float32, to check the script")
    parser.add_argument("--device", help="cuda or cpu (default: cuda, cpu with --tiny)")
    parser.add_argument("--dtype", help="default: bfloat16, float32 with --tiny")
    parser.add_argument("--requests", type=int, default=32, help="timed requests per path and concurrency")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--port", type=int, default=8760, help="the in-process server's port; Serve's is the next")
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds a server may take to turn healthy")
    parser.add_argument("--log-dir", type=Path, help="where the servers' logs go (default: a temporary folder)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: stop the servers on the way out
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    args.log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="serve-overhead-logs-"))
    args.log_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="serve-overhead-model-") as work:
        model = build_random_model(Path(work) / "model", args.tokenizer, args.tiny, args.device, args.dtype)
        import torch

        hardware = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
        print(report(measure(model, args), args, hardware), flush=True)


if __name__ == "__main__":
    main()
