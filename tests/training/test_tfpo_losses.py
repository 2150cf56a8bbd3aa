"""TFPO's loss functions and stage 1's reward formula on small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from llmdoctor.training.tfpo_losses import (
    first_divergence,
    log_flows,
    log_prefix_scores,
    subtb_loss,
    value_discrimination_loss,
)
from llmdoctor.training.token_rewards import directional_rewards, response_logprobs, token_importance


def test_token_importance_and_rewards_on_a_3_token_response():
    pos, neg = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -2.0, -3.5]])
    importance = token_importance(pos, neg, torch.ones(1, 3), tau=1.0, eps=0.0)
    # Delta = [0.5, 0, 3.0], mean 7/6: S = tanh(Delta / (7/6))
    expected = [math.tanh(0.5 * 6 / 7), 0.0, math.tanh(3.0 * 6 / 7)]
    assert importance[0].tolist() == pytest.approx(expected, abs=1e-6)
    chosen = directional_rewards(importance, torch.tensor([1.0]), theta=0.5)
    rejected = directional_rewards(importance, torch.tensor([-1.0]), theta=0.1)
    assert chosen[0].tolist() == pytest.approx([0.0, 0.0, expected[2]], abs=1e-6)  # 0.40 <= theta: dropped
    assert rejected[0].tolist() == pytest.approx([-expected[0], 0.0, -expected[2]], abs=1e-6)


def test_token_importance_tau_scales_the_normaliser_and_padding_stays_zero():
    pos, neg = torch.tensor([[-1.0, -2.0, 9.0]]), torch.tensor([[-2.0, -4.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: not in the mean, 0 out
    importance = token_importance(pos, neg, mask, tau=2.0, eps=0.0)
    # Delta = [1, 2], mean 1.5, tau * mean = 3
    assert importance[0].tolist() == pytest.approx([math.tanh(1 / 3), math.tanh(2 / 3), 0.0], abs=1e-6)


def test_response_logprobs_reads_each_token_from_the_previous_position():
    logits = torch.log(torch.tensor([[[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]]]))  # (1, 3, V=2)
    ids = torch.tensor([[0, 1, 0]])
    logps = response_logprobs(logits, ids, start=torch.tensor([1]), length=2)
    assert logps[0].tolist() == pytest.approx([math.log(0.9), math.log(0.7)], abs=1e-6)


def test_subtb_loss_on_a_3_token_sequence_matches_the_hand_sum():
    log_flow = torch.tensor([[0.0, 0.5, 1.5, 1.0]])  # log F(s_0..s_3)
    steps = torch.tensor([[0.2, 0.3, -0.1]])  # ell_0..ell_2
    lam = 0.5
    total = weights = 0.0
    for m in range(4):
        for n in range(m + 1, 4):
            residual = log_flow[0, n] - log_flow[0, m] - steps[0, m:n].sum()
            total += lam ** (n - m) * residual.item() ** 2
            weights += lam ** (n - m)
    assert total / weights == pytest.approx(0.6875 / 2.125, abs=1e-9)  # worked by hand: 0.3235...
    assert subtb_loss(log_flow, steps, torch.tensor([3]), lam).item() == pytest.approx(total / weights, abs=1e-6)


def test_subtb_loss_ignores_states_past_a_rows_length():
    log_flow = torch.tensor([[0.0, 0.5, 1.5, 1.0], [0.0, 0.4, 99.0, -99.0]])
    steps = torch.tensor([[0.2, 0.3, -0.1], [0.1, 42.0, 42.0]])
    both = subtb_loss(log_flow, steps, torch.tensor([3, 1]), 0.5)
    first = subtb_loss(log_flow[:1], steps[:1], torch.tensor([3]), 0.5)
    # row 2 has one step: one pair (0, 1), residual 0.4 - 0.1 = 0.3
    assert both.item() == pytest.approx((first.item() + 0.09) / 2, abs=1e-6)


def test_subtb_loss_is_zero_when_the_policy_balances_the_flow():
    rewards = torch.tensor([[0.5, -0.2, 0.8]])
    log_values = torch.tensor([[0.3, -0.1, 0.2, 7.0]])  # V(s_3) is pinned to 1 (log 0) by log_flows
    flow = log_flows(rewards, log_values, torch.tensor([3]))
    assert flow[0].tolist() == pytest.approx([0.3, 0.4, 0.5, 1.1], abs=1e-6)
    balanced = flow[:, 1:] - flow[:, :-1]  # ell_k = log F(s_{k+1}) - log F(s_k)
    assert subtb_loss(flow, balanced, torch.tensor([3]), 0.9).item() == pytest.approx(0.0, abs=1e-10)


def test_log_prefix_scores_are_the_cumulative_rewards_from_zero():
    assert log_prefix_scores(torch.tensor([[0.5, -0.2, 0.8]]))[0].tolist() == pytest.approx([0.0, 0.5, 0.3, 1.1])


def test_value_discrimination_loss_is_the_mean_hinge():
    chosen, rejected = torch.tensor([0.3, 0.0]), torch.tensor([0.1, 0.05])
    # margins 0.2 (>= gamma: 0) and -0.05 (0.1 + 0.05 = 0.15)
    assert value_discrimination_loss(chosen, rejected, gamma=0.1).item() == pytest.approx(0.075, abs=1e-7)
    assert value_discrimination_loss(torch.empty(0), torch.empty(0)).item() == 0.0


def test_first_divergence_finds_the_first_differing_token():
    assert first_divergence([5, 6, 7], [5, 6, 8, 9]) == 2
    assert first_divergence([1], [2]) == 0
    assert first_divergence([5, 6], [5, 6, 7]) is None  # a prefix: no state with two next tokens


def test_token_signs_preference_faces_and_agree():
    """preference: the pair's label on every token (the paper's form); faces: the side of the faces each
    token is on; agree: the label where the faces are on its side, else 0."""
    from llmdoctor.training.token_rewards import token_signs

    pos = torch.tensor([[-1.0, -3.0, -2.0], [-1.0, -3.0, -2.0]])
    neg = torch.tensor([[-2.0, -1.0, -2.0], [-2.0, -1.0, -2.0]])  # faces: +, -, 0
    label = torch.tensor([1.0, -1.0])  # chosen, rejected
    assert token_signs("preference", label, pos, neg).tolist() == [[1, 1, 1], [-1, -1, -1]]
    assert token_signs("faces", label, pos, neg).tolist() == [[1, -1, 0], [1, -1, 0]]
    assert token_signs("agree", label, pos, neg).tolist() == [[1, 0, 0], [0, -1, 0]]
    importance = torch.tensor([[0.9, 0.9, 0.9], [0.9, 0.05, 0.9]])
    rewards = directional_rewards(importance, token_signs("faces", label, pos, neg), theta=0.1)
    assert torch.allclose(rewards, torch.tensor([[0.9, -0.9, 0.0], [0.9, 0.0, 0.0]]))
