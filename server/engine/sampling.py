"""Batched sampling: temperature, min_p, top-k, top-p and a seeded draw for every row of a step at once.

One call per decode step, whatever the rows ask for: no Python per row, no per-row kernel launches,
one device-to-host transfer (the chosen tokens). Greedy rows (temperature 0) take the argmax.

Seeded draws without a generator per row: the draw is Gumbel-max, argmax(logits / T + g), with the
noise g a pure function of (seed, position, token id), computed by an integer hash (`uniform_noise`).
A request's tokens therefore depend only on its own seed and log-probs, never on what shares its
batch or in which order rows sit, and the noise is bit-identical on every device (integer arithmetic).
Unseeded requests get a random seed when they arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmdoctor.server.engine.logit_adjust import min_p_filter

MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingBatch:
    """Per-row sampling parameters of one step, as tensors on the logits' device, shape (R,)."""

    temperature: torch.Tensor  # float32; 0 = greedy
    top_k: torch.Tensor  # int64; <= 0 = off
    top_p: torch.Tensor  # float32; 1 = off
    seed: torch.Tensor  # int64: the request's 64-bit seed (two's complement)
    position: torch.Tensor  # int64: index of the token being drawn (0 = first output token)
    all_greedy: bool  # known on the host, so no device sync decides which path a step takes
    filtered: bool  # some row has top-k or top-p on
    min_p: torch.Tensor | None = None  # float32; None when no row has min_p on

    @classmethod
    def build(cls, temperatures: list[float], top_ks: list[int], top_ps: list[float], seeds: list[int],
              positions: list[int], device: torch.device | str = "cpu",
              min_ps: list[float] | None = None) -> SamplingBatch:
        return cls(
            torch.tensor(temperatures, dtype=torch.float32, device=device),
            torch.tensor(top_ks, dtype=torch.int64, device=device),
            torch.tensor(top_ps, dtype=torch.float32, device=device),
            torch.tensor([_as_int64(s) for s in seeds], dtype=torch.int64, device=device),
            torch.tensor(positions, dtype=torch.int64, device=device),
            all_greedy=all(t == 0.0 for t in temperatures),
            filtered=any(k > 0 for k in top_ks) or any(p < 1.0 for p in top_ps),
            min_p=torch.tensor(min_ps, dtype=torch.float32, device=device) if any(min_ps or ()) else None,
        )


def _as_int64(seed: int) -> int:
    """Any seed the API takes ([-2**63, 2**64)) as the int64 with the same low 64 bits."""
    seed %= 2**64
    return seed - 2**64 if seed >= 2**63 else seed


# ---- counter-based noise -----------------------------------------------------------------------------


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for x in [0, 2**32), in int64 without overflow (16-bit halves)."""
    low = (x & 0xFFFF) * constant
    high = (((x >> 16) * constant) & 0xFFFF) << 16
    return (low + high) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with good avalanche (Wellons' "lowbias32"), elementwise on int64 in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_noise(seed: torch.Tensor, position: torch.Tensor, vocab: int) -> torch.Tensor:
    """(R, V) float32 uniforms in (0, 1), a pure function of (seed, position, token id)."""
    key = _mix32(_mix32((seed & MASK32) ^ 0x9E3779B9) ^ ((seed >> 32) & MASK32))
    key = _mix32(key ^ (position & MASK32))  # (R,)
    ids = _mix32(torch.arange(vocab, dtype=torch.int64, device=seed.device) + 0x632BE5AB)  # (V,)
    bits = _mix32(key.unsqueeze(-1) ^ ids.unsqueeze(0))  # (R, V)
    # 24 high bits and a half step, capped below 1: the top value, 1 - 2**-25, rounds to 1.0 in float32, and
    # u = 1 makes the Gumbel noise +inf, which drew that token whatever its log-prob (a masked -inf one too)
    return (((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))).clamp(max=1.0 - 2.0**-24)


# ---- filters -----------------------------------------------------------------------------------------


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per-row top-k, then top-p on what top-k kept, with one sort for the batch; -inf where dropped.

    top-p keeps the smallest set of tokens whose probability reaches p; the most likely token always
    stays (as in vLLM and HF), so a p that rounds to 0 in float32 degrades to greedy.
    """
    vocab = logits.shape[-1]
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab).unsqueeze(-1)
    drop_sorted = rank >= k
    sorted_logits = sorted_logits.masked_fill(drop_sorted, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted |= mass_before >= top_p.unsqueeze(-1)
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_rows(logprobs: torch.Tensor, params: SamplingBatch) -> torch.Tensor:
    """One token per row of (R, V) log-probs (the rule's, re-normalised): (R,) int64 on their device.
    The caller moves them to the host, with whatever else the step needs, in one transfer."""
    greedy = params.temperature == 0.0
    if params.all_greedy:
        return logprobs.argmax(dim=-1)
    logprobs = logprobs.float()
    temperature = torch.where(greedy, 1.0, params.temperature).unsqueeze(-1)
    logits = logprobs / temperature
    if params.min_p is not None:  # after temperature, before top-k / top-p, as in vLLM
        logits = min_p_filter(logits, params.min_p)
    if params.filtered:
        logits = filter_top_k_top_p(logits, params.top_k, params.top_p)
    gumbel = -torch.log(-torch.log(uniform_noise(params.seed, params.position, logits.shape[-1])))
    drawn = (logits + gumbel).argmax(dim=-1)
    return torch.where(greedy, logprobs.argmax(dim=-1), drawn)


def top_logprobs(logprobs: torch.Tensor, k: int) -> tuple[tuple[int, float], ...]:
    """The k most likely (token id, log-prob) pairs of a (V,) row, best first."""
    if k <= 0:
        return ()
    values, ids = torch.topk(logprobs, k)
    return tuple(zip(ids.tolist(), values.tolist()))
