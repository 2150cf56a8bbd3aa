"""The doctor decode rule (DESIGN.md, "The decode rule"; LLMdoctor, arXiv 2601.10416, online alignment):

    log p_decode(y | s_t) = alpha * log p_patient(y | s_t) + sum_i beta_i * log p_doctor_i(y | s_t) + const

Both terms are log-softmaxes over the same vocabulary; the sum is re-normalised by a second
log-softmax, and temperature / top-k / top-p apply afterwards (sampling.py).
"""

from __future__ import annotations

import torch


def combine_logprobs(
    patient_logprobs: torch.Tensor,  # (V,) or (B, V)
    doctor_logprobs: torch.Tensor,  # (D, V) or (B, D, V)
    alpha: float | torch.Tensor,
    betas: torch.Tensor,  # (D,) or (B, D)
) -> torch.Tensor:
    """Return the re-normalised rule distribution as log-probs, shaped like `patient_logprobs`."""
    guided = alpha * patient_logprobs + (betas.unsqueeze(-1) * doctor_logprobs).sum(dim=-2)
    return torch.log_softmax(guided, dim=-1)


def logprobs_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax in float32 whatever the model dtype: the rule and logprobs need the precision."""
    return torch.log_softmax(logits.float(), dim=-1)
