"""What `guidance.explain` and `guidance.max_kl` cost: tokens/s at concurrency 8 of requests guided by the shipped
positivity doctor, plain vs with explain vs with a KL budget every step hits, over HTTP against a real
`llmdoctor serve` (issue 19's bar for explain: >= 0.8x).

    .venv/bin/python benchmarks/bench_explain.py [--engine torch|vllm] [--concurrency 8] [--rounds 3]

Each request runs to max_tokens (ignore_eos), greedy, so every setting generates the same number of tokens.
"""

from __future__ import annotations

import statistics
import sys

from bench_serving import measure_on_server, post_throughput, settings_bench_parser  # run as a script: benchmarks/ is on sys.path

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
    args = settings_bench_parser(__doc__.splitlines()[0]).parse_args()
    results = measure_on_server(args, measure)
    print(f"{'setting':<12} {'tok/s':>8} {'vs guided':>10}")
    for name, value in results.items():
        print(f"{name:<12} {value:>8.1f} {value / results['guided']:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
