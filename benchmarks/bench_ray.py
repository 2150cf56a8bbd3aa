"""Ray scale-out on the embedded model, in one run (issue 9's tables).

1. `llmdoctor batch`: rows/s of one job with 1 and with 2 replicas (wall clock of the whole job,
   Ray start and model loads included, and rows/s once the first result was written).
2. Serve's added latency: mean and p50 seconds per request at concurrency 1 and 8 for the
   in-process server (`llmdoctor serve`) and the Serve path (`llmdoctor serve --replicas 1`).

    .venv/bin/python benchmarks/bench_ray.py [--rows 300] [--requests 48] [--max-tokens 16]

On a 2-core CPU 2 replicas share the same cores, so expect little gain; on GPUs each gets its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}
PROMPTS = ["rain", "cats", "music", "bread", "rivers", "stars", "chess", "tea", "snow", "trains"]


def batch_job(folder: Path, rows: int, replicas: int, max_tokens: int) -> dict[str, float]:
    requests, results = folder / "requests.jsonl", folder / f"results-{replicas}.jsonl"
    requests.write_text("".join(json.dumps({
        "id": f"r{i}", "messages": [{"role": "user", "content": f"Tell me about {PROMPTS[i % 10]} ({i})."}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}) + "\n" for i in range(rows)))
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "llmdoctor.server.cli", "batch", "--input", str(requests),
                                "--output", str(results), "--replicas", str(replicas), "--log-level", "warning"],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while process.poll() is None:
        if first is None and results.exists() and results.stat().st_size:
            first = time.monotonic()
        time.sleep(0.05)
    total = time.monotonic() - started
    assert process.returncode == 0, f"batch job failed ({process.returncode})"
    done = sum(1 for _ in results.open())
    steady = done / (time.monotonic() - first) if first else float("nan")
    return {"rows": done, "seconds": total, "rows_per_s": done / total, "rows_per_s_after_first": steady}


def start_server(port: int, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "llmdoctor.server.cli", "serve", "--port", str(port),
                                "--log-level", "warning", *extra], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            replicas = health.json().get("replicas")
            if health.status_code == 200 and (replicas is None or all(r["healthy"] for r in replicas)):
                return process
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not become healthy")


def latencies(url: str, requests: int, concurrency: int, max_tokens: int) -> list[float]:
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True}

    def one(_: int) -> float:
        started = time.perf_counter()
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
        assert response.status_code == 200, response.text
        return time.perf_counter() - started

    one(0)  # warm-up
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(requests)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    print(f"## batch: {args.rows} chat rows x {args.max_tokens} tokens")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {n: batch_job(Path(tmp), args.rows, n, args.max_tokens) for n in (1, 2)}
    print("| replicas | job s | rows/s (whole job) | rows/s (after first result) |")
    print("|---|---|---|---|")
    for n, job in jobs.items():
        print(f"| {n} | {job['seconds']:.1f} | {job['rows_per_s']:.2f} | {job['rows_per_s_after_first']:.2f} |")
    print(f"2 vs 1 replicas: {jobs[2]['rows_per_s_after_first'] / jobs[1]['rows_per_s_after_first']:.2f}x "
          f"(after first result), {jobs[2]['rows_per_s'] / jobs[1]['rows_per_s']:.2f}x (whole job)")

    print(f"\n## latency per request, {args.requests} requests x {args.max_tokens} tokens")
    rows = {}
    for label, extra in (("in-process", ()), ("Serve, 1 replica", ("--replicas", "1"))):
        port = 8700 + len(rows)
        server = start_server(port, *extra)
        try:
            for c in (1, 8):
                rows[(label, c)] = latencies(f"http://127.0.0.1:{port}", args.requests, c, args.max_tokens)
        finally:
            server.terminate()
            server.wait(120)
    print("| path | c | mean s | p50 s |")
    print("|---|---|---|---|")
    for (label, c), values in rows.items():
        print(f"| {label} | {c} | {statistics.mean(values):.3f} | {statistics.median(values):.3f} |")
    for c in (1, 8):
        base, serve = rows[("in-process", c)], rows[("Serve, 1 replica", c)]
        added = statistics.median(serve) - statistics.median(base)
        print(f"c={c}: Serve adds {added * 1000:.0f} ms per request at p50 "
              f"({statistics.median(serve) / statistics.median(base):.2f}x)")


if __name__ == "__main__":
    main()
