"""A vLLM plugin (entry point `vllm.general_plugins`): on CPUs, rows without a LoRA pay nothing for LoRA.

vLLM (0.32) on CPUs applies the LM-head LoRA to every row of every step, through `bgmv`, which
gathers a (vocabulary x max_lora_rank) slice of LoRA weights per row even where the row has no LoRA
(index -1) and the result is zero. Its other LoRA layers skip a step in which no row has a LoRA
(`no_lora`); the LM head never does. Measured on the 2-core CPU, embedded model (vocabulary 49,152,
max_lora_rank 64), AsyncLLM driven directly, greedy, 64 tokens, no LoRA request at all: starting the
engine with `enable_lora=True` cut throughput to 0.88x / 0.56x / 0.41x of the same engine without
LoRA at concurrency 1 / 8 / 32. The llmdoctor vllm engine starts with LoRA on (patient adapters
hot-load), so every unguided request paid that.

The patch computes the LM-head LoRA for the rows that have one (vLLM's own arithmetic) and leaves the
others alone. (vLLM's bgmv reads index -1 as the last slot, so a row without a LoRA got the last
slot's LM-head delta: zero unless a loaded adapter targets lm_head.) With it, the same engine keeps
0.88x / 0.91x / 0.91x. vLLM loads general plugins in every process it starts (the engine core too);
GPUs are untouched: their Triton kernels skip index -1 rows already.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def register() -> None:
    """vLLM calls this in each of its processes; patching twice is harmless."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    if getattr(PunicaWrapperCPU.add_lora_logits, "llmdoctor_rows_only", False):
        return
    PunicaWrapperCPU.add_lora_logits = _rows_with_lora_only(PunicaWrapperCPU.add_lora_logits)
    logger.debug("llmdoctor: vLLM's CPU LM-head LoRA runs only on rows that have a LoRA")


def _rows_with_lora_only(original):
    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale, *, buffer: torch.Tensor | None = None, **kwargs):
        from vllm.lora.ops.torch_ops import bgmv_expand, bgmv_shrink

        indices = self.sampler_indices  # one LoRA slot per logits row; -1: no LoRA
        rows = torch.nonzero(indices >= 0).flatten()
        if rows.numel() == indices.numel():  # every row has a LoRA: vLLM's own path
            return original(self, y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)
        if rows.numel() == 0:
            return None  # as the original: it updates y in place and returns nothing
        y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        ours = indices[rows]
        shrunk = torch.zeros((rows.numel(), lora_b_stacked.size(-1)), dtype=torch.float32, device=x.device)
        bgmv_shrink(x2[rows], lora_a_stacked, shrunk, ours, scale)
        out = y2[rows]
        bgmv_expand(shrunk, lora_b_stacked, out, ours, add_inputs=True)
        y2[rows] = out
        return None

    add_lora_logits.llmdoctor_rows_only = True
    add_lora_logits.__wrapped__ = original
    return add_lora_logits
