import math

import torch

from llmdoctor.server.engine.sampling import apply_top_k, apply_top_p, sample_next_token, top_logprobs


def _logprobs(probs):
    return torch.tensor(probs).log()


def test_top_k_keeps_k_largest():
    out = apply_top_k(torch.tensor([1.0, 4.0, 3.0, 2.0]), 2)
    assert torch.isinf(out[[0, 3]]).all() and out[1] == 4.0 and out[2] == 3.0


def test_top_k_zero_is_off():
    logits = torch.tensor([1.0, 2.0])
    assert torch.equal(apply_top_k(logits, 0), logits)


def test_top_p_keeps_smallest_set_reaching_p():
    lp = _logprobs([0.5, 0.3, 0.15, 0.05])
    kept = ~torch.isinf(apply_top_p(lp, 0.8))
    assert kept.tolist() == [True, True, False, False]


def test_top_p_tiny_keeps_the_most_likely_token():
    lp = _logprobs([0.2, 0.7, 0.1])
    kept = ~torch.isinf(apply_top_p(lp, 1e-6))
    assert kept.tolist() == [False, True, False]


def test_sample_greedy_at_temperature_zero():
    assert sample_next_token(_logprobs([0.2, 0.7, 0.1]), 0.0, 0, 1.0, None) == 1


def test_sample_same_seed_same_tokens():
    lp = torch.log_softmax(torch.randn(1000), -1)
    draw = lambda: [sample_next_token(lp, 1.0, 0, 1.0, g) for g in [torch.Generator().manual_seed(7)] for _ in range(20)]
    assert draw() == draw()


def test_sample_respects_top_k_one():
    lp = torch.log_softmax(torch.randn(1000), -1)
    g = torch.Generator().manual_seed(0)
    assert {sample_next_token(lp, 1.5, 1, 1.0, g) for _ in range(20)} == {int(lp.argmax())}


def test_sample_frequencies_follow_distribution():
    lp = _logprobs([0.6, 0.3, 0.1])
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([sample_next_token(lp, 1.0, 0, 1.0, g) for _ in range(3000)]), minlength=3)
    assert torch.allclose(counts / 3000, torch.tensor([0.6, 0.3, 0.1]), atol=0.04)


def test_top_logprobs_best_first():
    top = top_logprobs(_logprobs([0.2, 0.7, 0.1]), 2)
    assert [t for t, _ in top] == [1, 0] and math.isclose(top[0][1], math.log(0.7), rel_tol=1e-6)


def test_top_p_below_float32_resolution_keeps_the_most_likely_token():
    lp = _logprobs([0.2, 0.7, 0.1])
    kept = ~torch.isinf(apply_top_p(lp, 1e-300))  # 1e-300 is 0 in float32
    assert kept.tolist() == [False, True, False]
