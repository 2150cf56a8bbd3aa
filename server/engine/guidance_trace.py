"""What a guided step did to the token drawn: the numbers behind `guidance.explain` and `usage.mean_kl_per_token`.

Both engines gather them the same way, on the device, into one small (G, 4 + D) tensor per step, so a step costs
one transfer more however many rows ask: columns rule log-prob, patient log-prob, KL, max_kl's scale, then each
doctor's log-prob of the token (padding columns for requests with fewer doctors are ignored).
"""

from __future__ import annotations

import torch

from llmdoctor.server.engine.protocol import TokenExplanation


def gather_trace(tokens: torch.Tensor, rule: torch.Tensor, patient: torch.Tensor, doctors: torch.Tensor | None,
                 kl: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(G, 4 + D) float32 for G rows: tokens (G,) drawn from rule (G, V); patient (G, V) and doctors (G, D, V)
    log-probs as the models gave them; kl and scale (G,) from decode_rule.RuleStep."""
    at = tokens.to(rule.device).long().unsqueeze(-1)
    columns = [rule.gather(-1, at), patient.gather(-1, at), kl.unsqueeze(-1), scale.unsqueeze(-1)]
    if doctors is not None:
        columns.append(doctors.gather(-1, at.unsqueeze(-1).expand(-1, doctors.shape[1], 1)).squeeze(-1))
    return torch.cat([c.float() for c in columns], dim=-1)


def explanation(token: int, values: list[float], doctors: tuple[str, ...]) -> TokenExplanation:
    """One row of `gather_trace` (moved to the host) as the engine protocol's TokenExplanation."""
    rule, patient, kl, scale = values[:4]
    return TokenExplanation(token, patient, tuple(zip(doctors, values[4:4 + len(doctors)])), rule, kl, scale)
