"""TFPO losses (LLMdoctor stage 2; arXiv 2601.10416 Sec. 3, as DESIGN.md states them).

A response y_1..y_T to prompt x visits states s_0 = x, s_t = (x, y_1..y_t). Its flow is

    F(s_t) = Q(s_t) * V_phi(s_t),      log Q(s_t) = sum_{k<=t} r_k                        (prefix score)

Q aggregates the token rewards of the prefix (here: Q = exp of their sum, so a rewarded token
multiplies the flow by e^{r_t}); V_phi is the doctor's value head. At the terminal state the flow
is the prefix score alone (V_phi(s_T) = 1), as a GFlowNet pins a terminal flow to the reward;
without that, V could absorb every reward and the policy would learn nothing.

Subtrajectory balance (Madan et al. 2023, "Learning GFlowNets from partial episodes", eq. 7, the
lambda-weighted SubTB) over all 0 <= m < n <= T:

    L_SubTB = sum_{m<n} w_{mn} ( log F(s_n) - log F(s_m) - sum_{k=m}^{n-1} ell_k )^2 / sum_{m<n} w_{mn},
    w_{mn} = lambda^(n - m)

where ell_k is the doctor's step term for y_{k+1} at s_k: `logprob` = log pi_theta(y_{k+1}|s_k)
(the formula as DESIGN.md writes it), or `log_ratio` = log pi_theta - log pi_patient, the doctor's
log-probability relative to the frozen base it starts from (our default: the flow then explains
how the doctor departs from the patient, which is exactly what beta weighs at decode time, instead
of also having to explain the patient's own token probabilities).

Value discrimination, at the state where the chosen and the rejected response first differ:

    L_value = max(0, gamma - (log V_phi(s, y_w) - log V_phi(s, y_l)))

with y_w / y_l the chosen / rejected next token (V compared in log space, the scale it is learned
in). L_TFPO = L_SubTB + lambda_value * L_value.
"""

from __future__ import annotations

import torch


def log_prefix_scores(rewards: torch.Tensor) -> torch.Tensor:
    """log Q(s_t) for t = 0..T: 0 at s_0, then the cumulative reward. (B, T) -> (B, T + 1)."""
    return torch.nn.functional.pad(rewards.cumsum(-1), (1, 0))


def log_flows(rewards: torch.Tensor, log_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """log F(s_t) = log Q(s_t) + log V(s_t), with log V = 0 at each row's terminal state s_{len}.

    rewards (B, T) (0 past a row's length), log_values (B, T + 1), lengths (B,) -> (B, T + 1).
    """
    states = torch.arange(log_values.shape[1], device=log_values.device)
    terminal = states.unsqueeze(0) == lengths.unsqueeze(-1)  # (B, T + 1)
    return log_prefix_scores(rewards) + log_values.masked_fill(terminal, 0.0)


def subtb_loss(
    log_flow: torch.Tensor,  # (B, T + 1) log F(s_0..s_T)
    step_terms: torch.Tensor,  # (B, T) ell_k for the step s_k -> s_{k+1}
    lengths: torch.Tensor,  # (B,) response tokens per row (states 0..len are real)
    lam: float = 0.9,
) -> torch.Tensor:
    """Lambda-weighted subtrajectory balance, mean over rows, (). See the module docstring.

    With A_t = log F(s_t) - sum_{k<t} ell_k, a pair's residual is A_n - A_m, so all O(T^2) pairs
    are one (B, T+1, T+1) difference.
    """
    cumulative = torch.nn.functional.pad(step_terms.cumsum(-1), (1, 0))  # (B, T + 1)
    a = log_flow - cumulative
    residual = a.unsqueeze(1) - a.unsqueeze(2)  # [b, m, n] = A_n - A_m
    states = torch.arange(a.shape[1], device=a.device)
    span = states.view(1, 1, -1) - states.view(1, -1, 1)  # n - m
    real = states.view(1, -1) <= lengths.view(-1, 1)  # (B, T + 1): states 0..len
    valid = (span > 0) & real.unsqueeze(2) & real.unsqueeze(1)
    weights = torch.where(valid, lam ** span.clamp(min=0).to(a.dtype), torch.zeros((), dtype=a.dtype, device=a.device))
    per_row = (weights * residual.square()).sum((1, 2)) / weights.sum((1, 2)).clamp(min=1e-12)
    return per_row.mean()


def value_discrimination_loss(
    log_value_chosen: torch.Tensor,  # (P,) log V(s, y_w) at each pair's divergence state
    log_value_rejected: torch.Tensor,  # (P,) log V(s, y_l)
    gamma: float = 0.1,
) -> torch.Tensor:
    """mean max(0, gamma - (log V(s, y_w) - log V(s, y_l))), (); 0 for no pairs."""
    if log_value_chosen.numel() == 0:
        return log_value_chosen.new_zeros(())
    return torch.relu(gamma - (log_value_chosen - log_value_rejected)).mean()


def first_divergence(chosen: list[int], rejected: list[int]) -> int | None:
    """Index of the first token where the two responses differ (the number of shared leading tokens),
    or None when one is a prefix of the other (no state with two different next tokens)."""
    for i, (a, b) in enumerate(zip(chosen, rejected)):
        if a != b:
            return i
    return None
