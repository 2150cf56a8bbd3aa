"""A left-padded, growable KV cache for rows that join and leave a running batch.

Every row shares one column axis: row r holds its tokens in columns [start[r], length). A row
that joins shorter than the batch is padded on the left; all rows then write their next token
into the same column, so a decode step is one (B, 1) forward. Buffers are preallocated and grow
geometrically, so a step writes one column instead of re-concatenating the whole cache
(transformers' DynamicCache copies O(B * T) per layer per step). Copies of the whole cache
happen only when rows join, leave, or the buffer grows.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _PaddedLayer(CacheLayerMixin):
    """One layer's K/V buffers (B, H, capacity, D); writes at the owner's current length."""

    def __init__(self, owner: "RowKVCache"):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        shape = (b, h, self.owner.capacity, d)
        self.keys = key_states.new_zeros(shape)
        self.values = value_states.new_zeros(shape)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.owner.length, self.owner.length + key_states.shape[-2]
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return -1

    def resize(self, rows: torch.Tensor | None, capacity: int, shift: int = 0) -> None:
        """Keep `rows` (all if None), drop the first `shift` columns, reallocate to `capacity`."""
        if not self.is_initialized:
            return
        keep = slice(shift, self.owner.length)
        for name in ("keys", "values"):
            old = getattr(self, name)
            old = old if rows is None else old.index_select(0, rows.to(old.device))
            new = old.new_zeros((old.shape[0], old.shape[1], capacity, old.shape[3]))
            new[:, :, : self.owner.length - shift] = old[:, :, keep]
            setattr(self, name, new)


class RowKVCache(Cache):
    """Cache for a batch of rows. `starts[r]` is row r's first real column; `length` is shared."""

    def __init__(self, num_layers: int, rows: int, capacity: int = 256):
        self.length = 0
        self.capacity = capacity
        self.starts = torch.zeros(rows, dtype=torch.long)
        super().__init__(layers=[_PaddedLayer(self) for _ in range(num_layers)])

    @property
    def rows(self) -> int:
        return self.starts.shape[0]

    def row_lengths(self) -> torch.Tensor:
        """Tokens held per row, (B,)."""
        return self.length - self.starts

    def reserve(self, new_columns: int) -> None:
        """Grow buffers (doubling) so `new_columns` more columns fit."""
        needed = self.length + new_columns
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity)
        for layer in self.layers:
            layer.resize(None, capacity)
        self.capacity = capacity

    def advance(self, columns: int) -> None:
        """Call after a forward wrote `columns` new columns into every layer."""
        self.length += columns

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices, in the new order) and drop left columns no row uses any more."""
        starts = self.starts.index_select(0, rows)
        shift = int(starts.min()) if rows.numel() else self.length
        for layer in self.layers:
            layer.resize(rows, self.capacity, shift)
        self.starts = starts - shift
        self.length -= shift

    def append_rows(self, other: "RowKVCache") -> None:
        """Append `other`'s rows after ours, left-padding whichever is shorter to a common length."""
        length = max(self.length, other.length)
        capacity = max(self.capacity, other.capacity, length + 1)
        for mine, theirs in zip(self.layers, other.layers):
            mine.keys, mine.values = _stack_right_aligned(mine, theirs, self.length, other.length, length, capacity)
            mine.is_initialized = True
        self.starts = torch.cat([self.starts + (length - self.length), other.starts + (length - other.length)])
        self.length, self.capacity = length, capacity


def _stack_right_aligned(a: _PaddedLayer, b: _PaddedLayer, len_a: int, len_b: int, length: int, capacity: int):
    """Concatenate two layers' rows so both end at column `length` (left padding with zeros)."""
    ref = a.keys if a.is_initialized else b.keys
    rows_a = a.keys.shape[0] if a.is_initialized else 0
    h, d = ref.shape[1], ref.shape[3]
    out = []
    for name in ("keys", "values"):
        new = ref.new_zeros((rows_a + b.keys.shape[0], h, capacity, d))
        if rows_a:
            new[:rows_a, :, length - len_a : length] = getattr(a, name)[:, :, :len_a]
        new[rows_a:, :, length - len_b : length] = getattr(b, name)[:, :, :len_b]
        out.append(new)
    return out
