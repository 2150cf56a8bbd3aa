import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from llmdoctor.training.losses import (
    LOSS_TYPES,
    dpo_loss,
    gdpo_loss,
    implicit_rewards,
    plackett_luce_loss,
    preference_loss,
    preference_metrics,
)

T = torch.tensor


# ---------------------------------------------------------------- hand-computed cases


def test_implicit_rewards_scale_the_log_ratio():
    assert torch.allclose(implicit_rewards(T([-3.0, -1.0]), T([-5.0, -1.5]), 0.1), T([0.2, 0.05]))


def test_dpo_sigmoid_hand_computed():
    # beta (Δc - Δr) = 0.5 * (2 - 0) = 1  ->  -log σ(1) = log(1 + e^-1) = 0.3132617
    assert dpo_loss(T([2.0]), T([0.0]), 0.5, "sigmoid").item() == pytest.approx(0.3132617, abs=1e-6)


def test_dpo_hinge_hand_computed():
    # relu(1 - 0.5 * 1) = 0.5; relu(1 - 0.5 * 4) = 0 (margin met, no gradient)
    assert torch.allclose(dpo_loss(T([1.0, 4.0]), T([0.0, 0.0]), 0.5, "hinge"), T([0.5, 0.0]))


def test_dpo_ipo_hand_computed_per_token():
    # per token: 6/3 - (-2)/2 = 3; target 1/(2*0.5) = 1; (3 - 1)^2 = 4
    loss = dpo_loss(T([6.0]), T([-2.0]), 0.5, "ipo", chosen_lengths=T([3.0]), rejected_lengths=T([2.0]))
    assert loss.item() == pytest.approx(4.0)


def test_dpo_ipo_without_lengths_names_them():
    with pytest.raises(ValueError, match="chosen_lengths and rejected_lengths"):
        dpo_loss(T([1.0]), T([0.0]), 0.1, "ipo")


def test_dpo_unknown_loss_type_lists_known_ones():
    with pytest.raises(ValueError, match="known: sigmoid, hinge, ipo"):
        dpo_loss(T([1.0]), T([0.0]), 0.1, "kto")


def test_plackett_luce_hand_computed():
    # s = (log 3, log 2, 0): P(ranking) = 3/6 * 2/3 = 1/3, so the loss is log 3
    rewards = T([[math.log(3), math.log(2), 0.0]])
    assert plackett_luce_loss(rewards).item() == pytest.approx(math.log(3), abs=1e-6)


def test_gdpo_hand_computed():
    # pairwise -log σ(log 3 - 0) = log(4/3); ranking log 3; 0.5 * log(4/3) + 0.5 * log 3 = log 2
    logratios = T([[math.log(3), math.log(2), 0.0]])
    loss = gdpo_loss(logratios, beta=1.0, loss_type="sigmoid", group_delay_weight=0.5)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_gdpo_weight_zero_is_pairwise_best_vs_worst():
    logratios = torch.randn(5, 4)
    for loss_type in ("sigmoid", "hinge"):
        expected = dpo_loss(logratios[:, 0], logratios[:, -1], 0.3, loss_type)
        assert torch.allclose(gdpo_loss(logratios, 0.3, loss_type, 0.0), expected)


def test_gdpo_weight_one_is_ranking_only():
    logratios = torch.randn(5, 4)
    assert torch.allclose(gdpo_loss(logratios, 0.3, "hinge", 1.0), plackett_luce_loss(0.3 * logratios))


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_gdpo_with_two_responses_equals_dpo_sigmoid(weight):
    torch.manual_seed(0)
    logratios = torch.randn(8, 2) * 3
    dpo = dpo_loss(logratios[:, 0], logratios[:, 1], 0.1, "sigmoid")
    assert torch.allclose(gdpo_loss(logratios, 0.1, "sigmoid", weight), dpo, atol=1e-6)


def test_gdpo_ipo_uses_the_best_and_worst_lengths():
    logratios, lengths = T([[6.0, 5.0, -2.0]]), T([[3.0, 9.0, 2.0]])
    loss = gdpo_loss(logratios, 0.5, "ipo", 0.0, lengths)
    assert loss.item() == pytest.approx(4.0)  # the ipo case above: 6/3 - (-2/2) = 3, (3 - 1)^2


# ---------------------------------------------------------------- shapes, gradients, metrics


def test_dpo_returns_one_loss_per_pair():
    for loss_type in LOSS_TYPES:
        lengths = torch.full((6,), 4.0)
        assert dpo_loss(torch.randn(6), torch.randn(6), 0.1, loss_type, lengths, lengths).shape == (6,)


def test_gdpo_returns_one_loss_per_group():
    assert gdpo_loss(torch.randn(3, 5), 0.1, "sigmoid", 0.5).shape == (3,)


def test_preference_loss_gradients_reach_the_policy_logps():
    policy = torch.randn(4, 3, requires_grad=True)
    out = preference_loss(policy, torch.randn(4, 3), beta=0.1, group_delay_weight=0.5)
    out.loss.backward()
    assert out.loss.dim() == 0 and out.per_example.shape == (4,)
    assert policy.grad is not None and policy.grad.abs().sum() > 0
    # the best response is pushed up, the worst down
    assert (policy.grad[:, 0] < 0).all() and (policy.grad[:, -1] > 0).all()


def test_preference_loss_without_weight_is_dpo():
    policy, ref = torch.randn(4, 2), torch.randn(4, 2)
    out = preference_loss(policy, ref, beta=0.2, loss_type="hinge")
    lr = policy - ref
    assert torch.allclose(out.per_example, dpo_loss(lr[:, 0], lr[:, 1], 0.2, "hinge"))


def test_preference_metrics_hand_computed():
    m = preference_metrics(T([[3.0, 2.0, 1.0], [1.0, 2.0, 0.0]]))
    assert m.reward_accuracy == pytest.approx(0.75)  # adjacent pairs: 2/2 and 1/2
    assert m.best_over_worst == 1.0
    assert m.margin == pytest.approx(1.5)  # (3 - 1 + 1 - 0) / 2
    assert m.chosen_reward == pytest.approx(2.0) and m.rejected_reward == pytest.approx(0.5)


def test_preference_metrics_for_pairs_match_dpo_accuracy():
    m = preference_metrics(T([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.5, 0.5]]))
    assert m.reward_accuracy == m.best_over_worst == 0.5  # a tie is not correct (TRL: chosen > rejected)


# ---------------------------------------------------------------- against TRL 1.16's own code


def _trl_loss(loss_type, beta, policy_tok, ref_chosen, ref_rejected, completion_mask):
    """Run DPOTrainer._compute_loss (TRL 1.16) on given per-token log-probs; its loss math is inline
    there, not a callable, so a stand-in trainer and model feed it numbers (precomputed ref logps)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    n, t = completion_mask.shape
    outputs = SimpleNamespace(
        log_probs=policy_tok, entropy=torch.zeros(n, t - 1), mean_logits=torch.zeros(n, t - 1),
        is_top1=torch.zeros(n, t - 1, dtype=torch.bool),
    )
    accelerator = SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=0.0, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(n, t, dtype=torch.long), "attention_mask": torch.ones(n, t, dtype=torch.long),
        "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected,
    }
    return DPOTrainer._compute_loss(trainer, lambda **kw: outputs, inputs, False)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_dpo_loss_equals_trl(loss_type):
    torch.manual_seed(1)
    b, t, beta = 4, 9, 0.3
    completion_mask = torch.zeros(2 * b, t, dtype=torch.long)
    lengths = torch.tensor([3, 8, 5, 1, 6, 2, 8, 4])  # rows: chosen 0..b-1, then rejected
    for row, n in enumerate(lengths.tolist()):
        completion_mask[row, t - n :] = 1  # prompt first, then the completion
    policy_tok = -torch.rand(2 * b, t - 1) * 3 * completion_mask[:, 1:]  # zero outside the completion
    ref_logps = policy_tok.sum(1) + torch.randn(2 * b)
    expected = _trl_loss(loss_type, beta, policy_tok, ref_logps[:b], ref_logps[b:], completion_mask)

    logratios = policy_tok.sum(1) - ref_logps
    ours = dpo_loss(logratios[:b], logratios[b:], beta, loss_type, lengths[:b].float(), lengths[b:].float())
    assert ours.mean().item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    if loss_type == "sigmoid":  # and TRL's label_smoothing = 0 sigmoid is the textbook -log σ(β Δ)
        assert torch.allclose(ours, -F.logsigmoid(beta * (logratios[:b] - logratios[b:])))
