"""Token-level rewards from the patient's two faces (LLMdoctor stage 1; DESIGN.md "Training").

For a response y to prompt x, the patient is run twice over the same tokens: under a "positive
face" behaviour prompt (pi_pos) and a "negative face" one (pi_neg). A token matters to the
preference dimension when the two faces disagree about it:

    Delta_t = | log pi_pos(y_t | x, y_<t) - log pi_neg(y_t | x, y_<t) |        (token importance)
    S_t     = tanh( Delta_t / (tau * mean_j Delta_j + eps) )                  (normalised, in [0, 1))
    r_t     = sign(y) * S_t * 1[S_t > theta]                                  (directional, sparse)

sign(y) = +1 on the chosen response and -1 on the rejected one. The mean runs over the response's
own tokens, so S_t compares a token with the rest of its response. These are the LLMdoctor paper's
stage-1 formulas (arXiv 2601.10416, Sec. 3, "token-level reward acquisition") as DESIGN.md states
them; tau is DESIGN.md's temperature on the normaliser (tau = 1: the paper's form).

Where the sign comes from (`rewards.direction`, `token_signs`):

    preference   sign(y)                                   the paper's form above
    faces        sign(log pi_pos(y_t) - log pi_neg(y_t))    the side of the faces the token is on
    agree        sign(y) where the faces' side agrees with it, else 0

Delta_t is unsigned, so under `preference` every important token of a rejected response is
penalised, including the ones the positive face prefers. On pairs sampled from one patient that is
about half of them (positivity recipe: 58% of the chosen responses' rewarded tokens and 45% of the
rejected ones' were on the side of the faces their sign says). It did not matter: doctors trained
on `preference` and on `faces` rewards, otherwise alike, reached 0.90 and 0.86 sentiment at the DPO
adapter's KL (README "Training"), so the paper's form stays the default.
"""

from __future__ import annotations

import torch


def token_importance(
    logp_positive: torch.Tensor,  # (B, T) log pi_pos of each response token
    logp_negative: torch.Tensor,  # (B, T) log pi_neg of the same tokens
    mask: torch.Tensor,  # (B, T) 1 on response tokens, 0 on padding
    tau: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """S_t in [0, 1), (B, T); 0 on padding."""
    mask = mask.to(logp_positive.dtype)
    delta = (logp_positive - logp_negative).abs() * mask  # (B, T)
    mean = delta.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)  # (B, 1) per response
    return torch.tanh(delta / (tau * mean + eps)) * mask


def token_signs(
    direction: str,  # "preference" | "faces" | "agree" (module docstring)
    response_sign: torch.Tensor,  # (B,) +1 chosen, -1 rejected
    logp_positive: torch.Tensor,  # (B, T)
    logp_negative: torch.Tensor,  # (B, T)
) -> torch.Tensor:
    """The sign of each token's reward, (B, T), in {-1, 0, +1}."""
    preference = response_sign.to(logp_positive.dtype).unsqueeze(-1).expand_as(logp_positive)
    faces = torch.sign(logp_positive - logp_negative)
    if direction == "preference":
        return preference
    if direction == "faces":
        return faces
    if direction == "agree":
        return preference * (faces == preference)
    raise ValueError(f"unknown reward direction {direction!r}")


def directional_rewards(importance: torch.Tensor, sign: torch.Tensor, theta: float = 0.1) -> torch.Tensor:
    """r_t = sign * S_t * 1[S_t > theta], (B, T); `sign` is (B,) with +1 (chosen) or -1 (rejected), or
    (B, T), one per token (`token_signs`)."""
    sign = sign.to(importance.dtype)
    if sign.dim() == 1:
        sign = sign.unsqueeze(-1)
    return sign * importance * (importance > theta)


def response_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, start: torch.Tensor, length: int) -> torch.Tensor:
    """log p of the `length` tokens from position `start[b]` of each row, (B, length).

    logits (B, L, V) from a causal LM over input_ids (B, L); token at position p is predicted by the
    logits at p - 1. Rows whose response is shorter than `length` read padding there: mask it.
    """
    positions = start.unsqueeze(-1) + torch.arange(length, device=start.device)  # (B, length)
    positions = positions.clamp(max=input_ids.shape[1] - 1)
    predicted_at = (positions - 1).clamp(min=0)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(-1)
    logps = torch.log_softmax(logits[rows, predicted_at].float(), dim=-1)  # (B, length, V)
    return logps.gather(-1, input_ids[rows, positions].unsqueeze(-1)).squeeze(-1)
