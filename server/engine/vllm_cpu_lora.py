"""A vLLM plugin (entry point `vllm.general_plugins`): on CPUs, a LoRA costs one matmul per adapter in
the batch, and rows without a LoRA pay nothing.

vLLM (0.32) applies LoRA on CPUs through `bgmv` (vllm/lora/ops/torch_ops), which gathers a copy of
the LoRA weights for every row of the batch (`lora_b[indices]`: rows x out x rank) and multiplies
row by row. Rows without a LoRA (index -1) are gathered too: the index reads as the last slot, whose
delta is zero unless that slot holds an adapter. Decode steps run it on every LoRA layer even when no
row has a LoRA (only prefill checks `no_lora`), and the LM head runs it on every step. Measured on
the 2-core CPU, embedded model, AsyncLLM driven directly, greedy, 64 tokens:

- no LoRA request at all, engine started with `enable_lora=True` (max rank 64): 0.88x / 0.56x /
  0.41x of the same engine without LoRA at concurrency 1 / 8 / 32 (the LM head above all);
- 8 requests, each beside one companion request with a rank-16 LoRA on all seven projections:
  0.35x of the 8 alone, where the extra rows alone would cost far less.

The patch groups the rows of a step by LoRA slot once (vLLM writes the slot of each row into one
persistent buffer per step) and, per layer, runs one `x[rows] @ A.T @ B.T` per slot present: vLLM's
arithmetic (float32 shrink, scale on the shrink), without the per-row weight copies. A step with no
LoRA row skips every LoRA layer. vLLM loads general plugins in every process it starts (the engine
core too); GPUs are untouched: their Triton kernels group rows already.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

Groups = list[tuple[int, torch.Tensor | None]]  # (LoRA slot, its rows; None: every row)


def register() -> None:
    """vLLM calls this in each of its processes; patching twice is harmless."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    if getattr(PunicaWrapperCPU, "llmdoctor_grouped", False):
        return
    PunicaWrapperCPU._apply_shrink = _grouped_shrink(PunicaWrapperCPU._apply_shrink)
    PunicaWrapperCPU._apply_expand = _grouped_expand(PunicaWrapperCPU._apply_expand)
    PunicaWrapperCPU.add_lora_logits = _grouped_logits(PunicaWrapperCPU.add_lora_logits)
    PunicaWrapperCPU.llmdoctor_grouped = True
    logger.debug("llmdoctor: vLLM's CPU LoRA runs one matmul per adapter in the batch")


def slot_groups(wrapper, indices: torch.Tensor) -> Groups:
    """The rows of each LoRA slot in `indices` (-1: no LoRA), computed once per step: vLLM rewrites
    the indices in place each step, which bumps the tensor's version."""
    key = (indices.data_ptr(), indices._version, indices.numel())
    cache = wrapper.__dict__.setdefault("_llmdoctor_groups", {})
    hit = cache.get(indices.data_ptr())
    if hit is not None and hit[0] == key:
        return hit[1]
    slots = torch.unique(indices).tolist()
    if len(slots) == 1:
        groups = [(slots[0], None)] if slots[0] >= 0 else []
    else:
        groups = [(s, torch.nonzero(indices == s).flatten()) for s in slots if s >= 0]
    cache[indices.data_ptr()] = (key, groups)
    return groups


def _weights(stacked: torch.Tensor, slot: int) -> torch.Tensor:
    w = stacked[slot]
    return w.squeeze(0) if w.dim() == 3 else w  # (1, out, in) per slot in vLLM's layout


def _grouped_shrink(original):
    def _apply_shrink(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float):
        """y[:, :rank] = scale * x @ A[slot].T per row (y arrives zeroed; rows without LoRA stay 0)."""
        indices = self.token_lora_indices
        y2 = y.view(-1, y.shape[-1])
        if x.shape[0] != indices.numel() or y2.shape[0] != indices.numel():
            return original(self, y, x, w_t_all, scale)
        rank = w_t_all.shape[-2]
        for slot, rows in slot_groups(self, indices):
            a = _weights(w_t_all, slot).to(torch.float32)
            if rows is None:
                y2[:, :rank] = scale * (x.to(torch.float32) @ a.T)
            else:
                y2[rows, :rank] = scale * (x[rows].to(torch.float32) @ a.T)
        return None

    _apply_shrink.__wrapped__ = original
    return _apply_shrink


def _grouped_expand(original):
    def _apply_expand(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, y_offset: int,
                      y_slice_size: int, add_inputs: bool = True):
        """y[:, offset:offset+size] (+)= x @ B[slot].T per row; rows without LoRA get nothing."""
        indices = self.token_lora_indices
        if x.shape[0] != indices.numel() or y.shape[0] != indices.numel():
            return original(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs)
        out = y[:, y_offset:y_offset + y_slice_size]
        groups = slot_groups(self, indices)
        if not add_inputs and (not groups or groups[0][1] is not None):
            out.zero_()
        for slot, rows in groups:
            b = _weights(w_t_all, slot)
            xs = x if rows is None else x[rows]
            delta = (xs.to(y.dtype) @ b.to(y.dtype).T)[:, :y_slice_size]
            if rows is None:
                out.add_(delta) if add_inputs else out.copy_(delta)
            else:
                out.index_add_(0, rows, delta)
        return None

    _apply_expand.__wrapped__ = original
    return _apply_expand


def _grouped_logits(original):
    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale, *, buffer: torch.Tensor | None = None, **kwargs):
        """The LM-head LoRA (y += scale * x @ A.T @ B.T) on the rows that have one."""
        indices = self.sampler_indices  # one LoRA slot per logits row
        y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        if x2.shape[0] != indices.numel() or y2.shape[0] != indices.numel():
            return original(self, y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)
        for slot, rows in slot_groups(self, indices):
            a, b = _weights(lora_a_stacked, slot), _weights(lora_b_stacked, slot)
            xs = x2 if rows is None else x2[rows]
            delta = ((scale * (xs.to(torch.float32) @ a.to(torch.float32).T)).to(y.dtype) @ b.to(y.dtype).T)
            delta = delta[:, :y2.shape[1]]
            if rows is None:
                y2[:, :delta.shape[1]] += delta
            else:
                y2[:, :delta.shape[1]].index_add_(0, rows, delta)
        return None

    add_lora_logits.__wrapped__ = original
    return add_lora_logits
