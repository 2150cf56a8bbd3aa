"""Pure sampling functions: temperature, top-k, top-p and a seeded draw, on one row of log-probs.

Each takes the rule's log-probs (already re-normalised) and an explicit torch.Generator, so a
request with a seed draws the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import torch


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the k largest entries of a (V,) row, -inf elsewhere. k <= 0 or >= V: unchanged."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter on a (V,) row: keep the smallest set of tokens whose probability reaches top_p.

    The most likely token always stays (as in vLLM and HF), so top_p near 0 degrades to greedy.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # drop a token when the mass before it already reaches top_p; never the first (a top_p that rounds
    # to 0 in float32, e.g. 1e-300, would otherwise drop every token and leave nothing to draw)
    drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logprobs: torch.Tensor,  # (V,) the rule's re-normalised log-probs
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> int:
    """Greedy when temperature is 0, else a seeded draw after temperature, top-k and top-p."""
    if temperature == 0.0:
        return int(torch.argmax(logprobs))
    logits = apply_top_p(apply_top_k(logprobs / temperature, top_k), top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logprobs: torch.Tensor, k: int) -> tuple[tuple[int, float], ...]:
    """The k most likely (token id, log-prob) pairs of a (V,) row, best first."""
    if k <= 0:
        return ()
    values, ids = torch.topk(logprobs, k)
    return tuple(zip(ids.tolist(), values.tolist()))


def sample_rows(
    logprobs: torch.Tensor,  # (R, V) the rule's log-probs, one row per request, on any device
    temperatures: list[float],
    top_ks: list[int],
    top_ps: list[float],
    generators: list[torch.Generator],  # CPU generators: a seed gives the same tokens on any device
) -> list[int]:
    """One token per row. Greedy rows cost one batched argmax; sampled rows move to the CPU once."""
    tokens = logprobs.argmax(dim=-1).tolist()
    sampled = [i for i, t in enumerate(temperatures) if t > 0.0]
    if sampled:
        rows = logprobs[sampled].float().cpu()
        for row, i in zip(rows, sampled):
            tokens[i] = sample_next_token(row, temperatures[i], top_ks[i], top_ps[i], generators[i])
    return tokens
