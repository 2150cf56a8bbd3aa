"""Preference losses for patient adapters: DPO (sigmoid, hinge, IPO) and GDPO (group ranking).

Pure functions on per-sequence log-probs, the way TRL's `DPOTrainer._compute_loss` (1.16) writes
them: the shared quantities are named once (log-ratios, implicit rewards), then one branch per
loss, each citing its paper and equation. Every loss returns one value per example, shape (B,);
the caller takes the mean (TRL does `per_sequence_loss.mean()`).

Inputs are token-summed log-probs of each response under the policy (adapter on) and the
reference (adapter off). Conventions checked against TRL 1.16 (tests/training/test_losses.py runs
TRL's own code on the same numbers):
- sigmoid is TRL's with label_smoothing = 0 (the plain DPO objective);
- ipo follows TRL's per-token normalisation: each log-ratio is divided by its response's token
  count before the squared loss, so beta's target 1/(2 beta) means the same at any length (TRL
  says the IPO authors confirmed the paper's results use this form). Hence `ipo` needs lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def check_loss_type(loss_type: str) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """s = beta * (log pi(y|x) - log pi_ref(y|x)); DPO's implicit reward (Rafailov et al. 2023, eq. 5)."""
    return beta * (policy_logps - ref_logps)


def dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair loss, shape (B,), from log-ratios log pi - log pi_ref of chosen and rejected, each (B,).

    `chosen_lengths`/`rejected_lengths` (token counts, (B,)) are required for `ipo` only.
    """
    check_loss_type(loss_type)
    delta = chosen_logratios - rejected_logratios  # Δ_c - Δ_r, (B,)
    if loss_type == "sigmoid":
        # DPO, Rafailov et al. 2023, "Direct Preference Optimization", eq. 7
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        # SLiC-HF, Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", eq. 1
        # (hinge on the log-ratio margin with delta = 1/beta, as TRL writes it)
        return torch.relu(1 - beta * delta)
    # IPO, Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    # Preferences", eq. 17 (beta plays the paper's tau), on per-token averaged log-ratios (see module doc)
    if chosen_lengths is None or rejected_lengths is None:
        raise ValueError("loss_type 'ipo' needs chosen_lengths and rejected_lengths (response token counts)")
    delta = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
    return (delta - 1 / (2 * beta)) ** 2


def plackett_luce_loss(rewards: torch.Tensor) -> torch.Tensor:
    """-sum_{k=1}^{K-1} [ s_k - logsumexp(s_k..s_K) ] for rewards (B, K) ranked best-first; (B,).

    Negative log-likelihood of the ranking under the Plackett-Luce model (Plackett 1975; Luce 1959)
    with scores s; the DPO form of it is Rafailov et al. 2023, eq. 18 (appendix A.3). The k = K term
    is s_K - s_K = 0 and is left out.
    """
    # logsumexp over each suffix s_k..s_K: flip, running logcumsumexp, flip back. (B, K)
    suffix_lse = torch.logcumsumexp(rewards.flip(-1), dim=-1).flip(-1)
    return -(rewards - suffix_lse)[:, :-1].sum(-1)


def gdpo_loss(
    logratios: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    group_delay_weight: float = 0.5,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """GDPO per-group loss, (B,), for log-ratios (B, K) of K >= 2 responses ranked best-first.

    loss = (1 - w) * pairwise + w * ranking: pairwise = the `loss_type` DPO loss of best (column 0)
    vs worst (column K-1); ranking = the Plackett-Luce loss on s = beta * logratios; w =
    `group_delay_weight`. For K = 2 and sigmoid the two terms are equal, so this is DPO for any w.
    `lengths` (B, K) token counts are required for `ipo` only.
    """
    assert logratios.dim() == 2 and logratios.shape[1] >= 2, f"expected (B, K >= 2), got {tuple(logratios.shape)}"
    first, last = (None, None) if lengths is None else (lengths[:, 0], lengths[:, -1])
    pairwise = dpo_loss(logratios[:, 0], logratios[:, -1], beta, loss_type, first, last)
    ranking = plackett_luce_loss(beta * logratios)
    return (1 - group_delay_weight) * pairwise + group_delay_weight * ranking


@dataclass(frozen=True)
class PreferenceMetrics:
    """Batch means of the implicit rewards, as floats for logging (TRL's `rewards/*` metrics)."""

    reward_accuracy: float  # fraction of adjacent ranked pairs ordered correctly (K = 2: chosen > rejected)
    best_over_worst: float  # fraction of groups with s_best > s_worst (equals reward_accuracy at K = 2)
    margin: float  # mean s_best - s_worst
    chosen_reward: float  # mean s_best
    rejected_reward: float  # mean s_worst


def preference_metrics(rewards: torch.Tensor) -> PreferenceMetrics:
    """Metrics from implicit rewards (B, K) ranked best-first; pairs are (B, 2)."""
    rewards = rewards.detach().float()
    adjacent = (rewards[:, :-1] > rewards[:, 1:]).float()  # (B, K-1)
    best, worst = rewards[:, 0], rewards[:, -1]
    return PreferenceMetrics(
        reward_accuracy=adjacent.mean().item(),
        best_over_worst=(best > worst).float().mean().item(),
        margin=(best - worst).mean().item(),
        chosen_reward=best.mean().item(),
        rejected_reward=worst.mean().item(),
    )


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar, the batch mean; backpropagate this
    per_example: torch.Tensor  # (B,)
    metrics: PreferenceMetrics


def preference_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    group_delay_weight: float | None = None,
    lengths: torch.Tensor | None = None,
) -> LossOutput:
    """One training step's loss from token-summed log-probs (B, K), columns ranked best-first.

    K = 2 with `group_delay_weight` None is DPO (column 0 chosen, column 1 rejected); a weight makes
    it GDPO over all K columns. `lengths` (B, K) token counts are needed for `ipo`.
    """
    check_loss_type(loss_type)
    logratios = policy_logps - ref_logps  # (B, K)
    if group_delay_weight is None:
        assert logratios.shape[1] == 2, f"DPO takes pairs (B, 2), got {tuple(logratios.shape)}"
        first, last = (None, None) if lengths is None else (lengths[:, 0], lengths[:, 1])
        per_example = dpo_loss(logratios[:, 0], logratios[:, 1], beta, loss_type, first, last)
    else:
        per_example = gdpo_loss(logratios, beta, loss_type, group_delay_weight, lengths)
    metrics = preference_metrics(implicit_rewards(policy_logps, ref_logps, beta))
    return LossOutput(per_example.mean(), per_example, metrics)
