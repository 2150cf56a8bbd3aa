"""The doctor decode rule (DESIGN.md, "The decode rule"; LLMdoctor, arXiv 2601.10416, online alignment):

    log p_decode(y | s_t) = alpha * log p_patient(y | s_t) + sum_i beta_i * log p_doctor_i(y | s_t) + const

Both terms are log-softmaxes over the same vocabulary; the sum is re-normalised by a second
log-softmax, and temperature / top-k / top-p apply afterwards (sampling.py).

Numerical safety: both terms are floored at LOGPROB_FLOOR before weighting, so no 0 * -inf (alpha 0)
or inf - inf (a negative beta on a token a doctor rules out) can arise, and with |weights| <= 100
(protocol.MAX_WEIGHT) the sum stays far inside float32. The floor lies far below what a float32
softmax tells from 0 (exp underflows near -104), so it changes no distribution a model really gives;
it only turns a masked (-inf) token into a very unlikely one. A NaN input stays NaN, for the caller
to blame on its row.

A token the patient rules out (at or below the floor: a -inf from a mask such as vLLM's structured
output, bad words or logit bias) stays ruled out whatever the weights: with a `ratio` doctor the
patient's weight (`Guidance.rule_alpha`) can be negative, which would otherwise turn the patient's
-1e4 into a bonus.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOGPROB_FLOOR = -1e4  # log-probs below this count as impossible; keeps every product with a weight finite
RULED_OUT = -1e30  # the rule's value for a token the patient rules out: exp gives 0, /0.01 stays finite


def combine_logprobs(
    patient_logprobs: torch.Tensor,  # (V,) or (B, V)
    doctor_logprobs: torch.Tensor | None,  # (D, V) or (B, D, V); None: no doctor term (alpha only)
    alpha: float | torch.Tensor,  # the patient's weight as computed: Guidance.rule_alpha (may be < 0); or (B,)
    betas: torch.Tensor,  # (D,) or (B, D): a batch pads rows with fewer doctors by beta 0 (and 0 log-probs)
) -> torch.Tensor:
    """Return the re-normalised rule distribution as log-probs, shaped like `patient_logprobs`.

    One call serves every guided row of a step: (B, V) patients, (B, D, V) doctors, (B,) alphas."""
    if isinstance(alpha, torch.Tensor) and alpha.dim() == patient_logprobs.dim() - 1:
        alpha = alpha.unsqueeze(-1)
    patient_logprobs = patient_logprobs.clamp(min=LOGPROB_FLOOR)
    guided = alpha * patient_logprobs
    if doctor_logprobs is not None:
        doctor_logprobs = doctor_logprobs.to(patient_logprobs.device).clamp(min=LOGPROB_FLOOR)
        guided = guided + (betas.unsqueeze(-1) * doctor_logprobs).sum(dim=-2)
    guided = guided.masked_fill(patient_logprobs <= LOGPROB_FLOOR, RULED_OUT)
    return torch.log_softmax(guided, dim=-1)


BISECTION_STEPS = 12  # max_kl's factor to within 2**-12 of the largest that fits, always on the side that fits


@dataclass(frozen=True)
class RuleStep:
    """The rule of a step's guided rows with what it did: `kl` (G,) is KL(rule || patient) in nats, `scale` (G,)
    the factor guidance.max_kl put on the rule's departure from the patient (1 where the rule fit its budget)."""

    logprobs: torch.Tensor  # (G, V)
    kl: torch.Tensor
    scale: torch.Tensor


def kl_from_patient(rule: torch.Tensor, patient_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(rule || patient) per row, in nats: sum_y p_rule(y) (log p_rule(y) - log p_patient(y)). Tokens the rule
    rules out weigh 0; the patient is floored as in the rule, so no 0 * inf arises."""
    return (rule.exp() * (rule - patient_logprobs.clamp(min=LOGPROB_FLOOR))).sum(dim=-1).clamp(min=0.0)


def guided_rule(
    patient_logprobs: torch.Tensor,  # (G, V)
    doctor_logprobs: torch.Tensor | None,  # (G, D, V)
    alpha: torch.Tensor,  # (G,): Guidance.rule_alpha per row
    betas: torch.Tensor,  # (G, D)
    max_kl: list[float | None] | None = None,  # per row; None: no budget
) -> RuleStep:
    """`combine_logprobs` for a batch of guided rows, held within each row's KL budget.

    A row over its budget gets log_softmax(patient + s * departure), where departure = (rule_alpha - 1) * patient
    + sum_i beta_i * doctor_i is the rule's pull away from the patient: s = 1 is the rule, s = 0 the patient. The
    KL from the patient grows with s (its derivative is s * Var(departure) >= 0 under the scaled rule), so a
    bisection, batched over the rows over budget, finds the largest s whose KL fits; it keeps the lower end,
    so the row's KL never exceeds its budget."""
    rule = combine_logprobs(patient_logprobs, doctor_logprobs, alpha, betas)
    kl = kl_from_patient(rule, patient_logprobs)
    scale = torch.ones_like(kl)
    if not max_kl or all(budget is None for budget in max_kl):
        return RuleStep(rule, kl, scale)
    budget = torch.tensor([float("inf") if b is None else b for b in max_kl], dtype=kl.dtype, device=kl.device)
    over = (kl > budget).nonzero().flatten()
    if over.numel() == 0:  # one sync, only for requests that set a budget
        return RuleStep(rule, kl, scale)
    patient = patient_logprobs.index_select(0, over).clamp(min=LOGPROB_FLOOR)
    departure = (alpha.index_select(0, over) - 1.0).unsqueeze(-1) * patient
    if doctor_logprobs is not None:
        doctors = doctor_logprobs.to(patient.device).index_select(0, over).clamp(min=LOGPROB_FLOOR)
        departure = departure + (betas.index_select(0, over).unsqueeze(-1) * doctors).sum(dim=-2)
    ruled_out = patient <= LOGPROB_FLOOR

    def scaled(s: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax((patient + s.unsqueeze(-1) * departure).masked_fill(ruled_out, RULED_OUT), dim=-1)

    limit = budget.index_select(0, over)
    low, high = torch.zeros_like(limit), torch.ones_like(limit)  # KL(low) <= budget < KL(high)
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        fits = kl_from_patient(scaled(middle), patient) <= limit
        low, high = torch.where(fits, middle, low), torch.where(fits, high, middle)
    kept = scaled(low)
    rule, kl, scale = rule.index_copy(0, over, kept), kl.index_copy(0, over, kl_from_patient(kept, patient)), \
        scale.index_copy(0, over, low)
    return RuleStep(rule, kl, scale)


def rule_weights(alphas: list[float], betas: list[tuple[float, ...]], device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of a batch of guided rows as tensors: alpha (G,), betas (G, D) padded by 0 to the
    most doctors any row has (DoctorRunner.logprobs pads their log-probs to the same width)."""
    width = max(map(len, betas), default=0)
    padded = torch.tensor([list(b) + [0.0] * (width - len(b)) for b in betas], dtype=torch.float32, device=device)
    return torch.tensor(alphas, dtype=torch.float32, device=device), padded.view(len(betas), width)


def logprobs_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax in float32 whatever the model dtype: the rule and logprobs need the precision."""
    return torch.log_softmax(logits.float(), dim=-1)
