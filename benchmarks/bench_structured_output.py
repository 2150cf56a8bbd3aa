"""What `response_format` json_schema costs: tokens/s at concurrency 8 with the schema vs without, unguided and
with the shipped positivity doctor, over HTTP against a real `llmdoctor serve` (issue 19's bar: >= 0.8x).

    .venv/bin/python benchmarks/bench_structured_output.py [--engine torch|vllm] [--concurrency 8] [--rounds 3]

Each request asks for a JSON object with a long free-text field (`{"story": "..."}`, at least 400 characters), so
the grammar masks every step and the output runs to max_tokens, as the plain request does with ignore_eos: both
settings generate the same number of tokens per request. (Without the minimum, greedy decoding closes the JSON
after ~19 tokens, and the comparison would mostly measure the prompt's prefill spread over fewer tokens.)
"""

from __future__ import annotations

import statistics
import sys

from bench_serving import measure_on_server, post_throughput, settings_bench_parser  # run as a script: benchmarks/ is on sys.path

PROMPT = "Write a short story about a lighthouse keeper, as JSON with one field, story."
SCHEMA = {"type": "object", "required": ["story"], "properties": {"story": {"type": "string", "minLength": 400}}}
POSITIVITY = {"doctors": [{"name": "positivity", "beta": 2, "mode": "ratio"}]}


async def throughput(url: str, concurrency: int, max_tokens: int, structured: bool, guidance: dict | None) -> float:
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0.0}
    if structured:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "story", "schema": SCHEMA}}
    else:
        body["ignore_eos"] = True
    if guidance:
        body["guidance"] = guidance
    return await post_throughput(url, "/v1/chat/completions", body, concurrency)


async def measure(url: str, args) -> dict[tuple[str, bool], float]:
    results = {}
    for setting, guidance in (("unguided", None), ("positivity", POSITIVITY)):
        await throughput(url, args.concurrency, 8, True, guidance)  # warm-up: compiles the schema once
        for structured in (False, True):  # interleaved rounds, so drift hits both alike
            results[(setting, structured)] = []
        for _ in range(args.rounds):
            for structured in (False, True):
                results[(setting, structured)].append(
                    await throughput(url, args.concurrency, args.max_tokens, structured, guidance))
    return {key: statistics.median(values) for key, values in results.items()}


def main() -> int:
    args = settings_bench_parser(__doc__.splitlines()[0]).parse_args()
    results = measure_on_server(args, measure)
    print(f"{'setting':<12} {'plain tok/s':>12} {'json_schema':>12} {'ratio':>7}")
    for setting in ("unguided", "positivity"):
        plain, structured = results[(setting, False)], results[(setting, True)]
        print(f"{setting:<12} {plain:>12.1f} {structured:>12.1f} {structured / plain:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
