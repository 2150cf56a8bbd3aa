"""What `guidance.explain` and `guidance.max_kl` cost: tokens/s at concurrency 8 of requests guided by the shipped
positivity doctor, plain vs with explain vs with a KL budget every step hits, over HTTP against a real
`llmdoctor serve` (issue 19's bar for explain: >= 0.8x).

    .venv/bin/python benchmarks/bench_explain.py [--engine torch|vllm] [--concurrency 8] [--rounds 3]

Each request runs to max_tokens (ignore_eos), greedy, so every setting generates the same number of tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

from bench_serving import free_port, launch, post_throughput  # run as a script: benchmarks/ is on sys.path

PROMPT = "Tell me about your week."
DOCTOR = {"doctors": [{"name": "positivity", "beta": 2, "mode": "ratio"}]}
SETTINGS = {
    "guided": DOCTOR,
    "explain": {**DOCTOR, "explain": True},
    "max_kl 0.02": {**DOCTOR, "max_kl": 0.02},  # below the doctor's usual pull: most steps bisect
}


async def throughput(url: str, concurrency: int, max_tokens: int, guidance: dict) -> float:
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "guidance": guidance}
    return await post_throughput(url, "/v1/chat/completions", body, concurrency)


async def measure(url: str, args) -> dict[str, float]:
    await throughput(url, args.concurrency, 8, DOCTOR)  # warm-up
    results: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):  # interleaved rounds, so drift hits every setting alike
        for name, guidance in SETTINGS.items():
            results[name].append(await throughput(url, args.concurrency, args.max_tokens, guidance))
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("torch", "vllm"), default="torch")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
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
    print(f"{'setting':<12} {'tok/s':>8} {'vs guided':>10}")
    for name, value in results.items():
        print(f"{name:<12} {value:>8.1f} {value / results['guided']:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
