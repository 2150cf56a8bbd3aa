"""Load an engine directly (no HTTP): `concurrency` greedy requests of random prompts at once."""

from __future__ import annotations

import asyncio
import time

import torch

from llmdoctor.server.engine.protocol import GenerateRequest, Guidance, SamplingParams


async def throughput(engine, guidance: Guidance, concurrency: int, prompt_len: int, max_tokens: int,
                     vocab: int) -> tuple[float, float]:
    """(tokens/s over all requests, mean time to first token in s)."""
    firsts = []

    async def one(i):
        prompt = tuple(int(t) for t in torch.randint(100, vocab, (prompt_len,)))
        request = GenerateRequest(f"b{time.monotonic_ns()}-{i}", prompt,
                                  SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True), guidance)
        start, n = time.perf_counter(), 0
        async for event in engine.generate(request):
            if n == 0:
                firsts.append(time.perf_counter() - start)
            n += len(event.token_ids)
        return n

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(concurrency))))
    return tokens / (time.perf_counter() - start), sum(firsts) / len(firsts)
