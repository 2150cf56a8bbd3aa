"""Rows that decode together through one model: prefill joiners, decode everyone, drop leavers.

A row is one token sequence with its own KV cache columns and its own adapter: a patient
request, or one doctor of one request. Rows are named by hashable keys chosen by the caller.
The engine and the doctor runner both plan a step as a `StepPlan` and run it with `RowBatch.step`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from llmdoctor.server.engine.kv_cache import RowKVCache
from llmdoctor.server.engine.lora_host import BASE, LoraHost


@dataclass
class StepPlan:
    """What one step does: rows that join (prompt, adapter) and the next token of each running row."""

    join: dict[Hashable, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    feed: dict[Hashable, int] = field(default_factory=dict)


@dataclass
class StepLogits:
    """Next-token logits of every row a step touched: `logits[index[key]]`, (N, V)."""

    index: dict[Hashable, int]
    logits: torch.Tensor

    def of(self, key: Hashable) -> torch.Tensor:
        return self.logits[self.index[key]]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (B, 1, Q, K) -> additive float mask: 0 where allowed, the dtype's min elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)


class RowBatch:
    """One model's running rows and their shared left-padded cache. Call from one thread only."""

    def __init__(self, host: LoraHost, pad_token_id: int = 0, dtype: torch.dtype = torch.float32):
        self.host = host
        self.device = host.device  # inputs go here; row bookkeeping (starts, masks built) stays on the CPU
        self.pad_token_id = pad_token_id
        self.dtype = dtype
        self.keys: list[Hashable] = []
        self.adapters: list[str] = []
        self.cache = self._new_cache(0)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.keys

    def step(self, plan: StepPlan) -> StepLogits:
        """Decode one token for every running row and prefill every joining row.

        `plan.feed` must name every running row exactly (rows share cache columns, so all advance).
        """
        assert set(plan.feed) == set(self.keys), "every running row must be fed each step"
        index: dict[Hashable, int] = {}
        parts = []
        # 1) decode the running rows, one token each
        if self.keys:
            parts.append(self._decode([plan.feed[k] for k in self.keys]))
            index.update({k: i for i, k in enumerate(self.keys)})
        # 2) prefill the joining rows in their own cache, then append them to ours
        if plan.join:
            keys = list(plan.join)
            prompts = [plan.join[k][0] for k in keys]
            adapters = [plan.join[k][1] or BASE for k in keys]
            logits, cache = self._prefill(prompts, adapters)
            parts.append(logits)
            index.update({k: len(self.keys) + i for i, k in enumerate(keys)})
            self.cache.append_rows(cache)
            self.keys += keys
            self.adapters += adapters
        logits = torch.cat(parts) if len(parts) > 1 else parts[0]
        return StepLogits(index, logits)

    def remove(self, keys: list[Hashable]) -> None:
        """Drop rows (unknown keys are ignored) and compact the cache."""
        gone = set(keys) & set(self.keys)
        if not gone:
            return
        keep = [i for i, k in enumerate(self.keys) if k not in gone]
        self.cache.keep_rows(torch.tensor(keep, dtype=torch.long))
        self.keys = [self.keys[i] for i in keep]
        self.adapters = [self.adapters[i] for i in keep]

    def _on_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return [t.to(self.device, non_blocking=True) for t in tensors]

    def _new_cache(self, rows: int, capacity: int = 256) -> RowKVCache:
        return RowKVCache(self.host.config.num_hidden_layers, rows, capacity)

    def _decode(self, tokens: list[int]) -> torch.Tensor:
        cache = self.cache
        cache.reserve(1)
        input_ids = torch.tensor(tokens, dtype=torch.long).unsqueeze(1)  # (B, 1)
        positions = cache.row_lengths().unsqueeze(1)  # (B, 1)
        columns = torch.arange(cache.length + 1)
        allowed = columns.unsqueeze(0) >= cache.starts.unsqueeze(1)  # (B, K)
        mask = additive_mask(allowed[:, None, None, :], self.dtype)  # (B, 1, 1, K)
        logits = self.host.forward(*self._on_device(input_ids, mask, positions), cache, self.adapters)
        cache.advance(1)
        return logits

    def _prefill(self, prompts: list[tuple[int, ...]], adapters: list[str]) -> tuple[torch.Tensor, RowKVCache]:
        length = max(len(p) for p in prompts)
        pads = torch.tensor([length - len(p) for p in prompts], dtype=torch.long)  # (N,)
        input_ids = torch.tensor([[self.pad_token_id] * (length - len(p)) + list(p) for p in prompts])
        columns = torch.arange(length)
        positions = (columns.unsqueeze(0) - pads.unsqueeze(1)).clamp(min=0)  # (N, T)
        causal = columns.unsqueeze(0) <= columns.unsqueeze(1)  # (T, K)
        real = columns.unsqueeze(0) >= pads.unsqueeze(1)  # (N, K)
        # Padding queries attend to themselves only: a fully masked row would give NaN K/V later.
        allowed = (causal.unsqueeze(0) & real.unsqueeze(1)) | torch.eye(length, dtype=torch.bool).unsqueeze(0)
        mask = additive_mask(allowed.unsqueeze(1), self.dtype)  # (N, 1, T, K)
        cache = self._new_cache(len(prompts), capacity=length + 64)
        cache.starts = pads
        logits = self.host.forward(*self._on_device(input_ids, mask, positions), cache, adapters)
        cache.advance(length)
        return logits, cache
