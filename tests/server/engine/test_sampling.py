import math

import pytest
import torch

from llmdoctor.server.engine.sampling import (
    SamplingBatch,
    filter_top_k_top_p,
    sample_rows,
    top_logprobs,
    uniform_noise,
)


def _logprobs(*rows):
    return torch.tensor(rows).log()


def _batch(n, temperature=1.0, top_k=0, top_p=1.0, seeds=None, positions=None):
    return SamplingBatch.build([temperature] * n, [top_k] * n, [top_p] * n, seeds or [7] * n,
                               positions or [0] * n)


def _kept(logits, top_k, top_p):
    n = logits.shape[0]
    out = filter_top_k_top_p(logits, torch.tensor([top_k] * n), torch.tensor([top_p] * n, dtype=torch.float32))
    return (~torch.isinf(out)).tolist()


def test_top_k_keeps_k_largest_per_row():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [4.0, 1.0, 2.0, 3.0]])
    assert _kept(logits, 2, 1.0) == [[False, True, True, False], [True, False, False, True]]


def test_top_k_zero_and_top_p_one_are_off():
    logits = torch.randn(3, 10)
    out = filter_top_k_top_p(logits, torch.tensor([0, -1, 10]), torch.ones(3))
    assert torch.equal(out, logits)


def test_top_p_keeps_smallest_set_reaching_p():
    assert _kept(_logprobs([0.5, 0.3, 0.15, 0.05]), 0, 0.8) == [[True, True, False, False]]


def test_top_p_tiny_or_below_float32_resolution_keeps_the_most_likely_token():
    for p in (1e-6, 1e-300):  # 1e-300 is 0 in float32
        assert _kept(_logprobs([0.2, 0.7, 0.1]), 0, p) == [[False, True, False]]


def test_top_p_applies_to_what_top_k_kept():
    # top-k 2 leaves 0.5 / 0.3, renormalised 0.625 / 0.375: top-p 0.6 keeps only the first
    assert _kept(_logprobs([0.5, 0.3, 0.2]), 2, 0.6) == [[True, False, False]]


def test_rows_have_their_own_parameters():
    logits = _logprobs([0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05])
    out = filter_top_k_top_p(logits, torch.tensor([1, 0]), torch.tensor([1.0, 0.8]))
    assert (~torch.isinf(out)).tolist() == [[True, False, False, False], [True, True, False, False]]


def test_greedy_rows_take_the_argmax():
    lp = _logprobs([0.2, 0.7, 0.1], [0.6, 0.3, 0.1])
    assert sample_rows(lp, _batch(2, temperature=0.0)).tolist() == [1, 0]


def test_mixed_greedy_and_sampled_rows():
    lp = _logprobs([0.2, 0.7, 0.1], [0.0, 0.0, 1.0])
    batch = SamplingBatch.build([0.0, 1.0], [0, 0], [1.0, 1.0], [1, 2], [0, 0])
    assert sample_rows(lp, batch).tolist() == [1, 2]


def test_a_seeded_row_draws_the_same_token_whatever_shares_its_batch():
    torch.manual_seed(0)
    lp = torch.log_softmax(torch.randn(5, 1000), -1)
    alone = [int(sample_rows(lp[i : i + 1], _batch(1, seeds=[100 + i], positions=[3]))[0]) for i in range(5)]
    order = [4, 2, 0, 3, 1]
    together = sample_rows(lp[order], _batch(5, seeds=[100 + i for i in order], positions=[3] * 5)).tolist()
    assert together == [alone[i] for i in order]


def test_draws_depend_on_seed_and_position():
    lp = torch.log_softmax(torch.zeros(1, 50_000), -1)  # uniform: any token, so collisions are rare
    draw = lambda seed, pos: int(sample_rows(lp, _batch(1, seeds=[seed], positions=[pos]))[0])
    assert draw(1, 0) == draw(1, 0)
    assert len({draw(1, p) for p in range(20)}) > 15
    assert len({draw(s, 0) for s in range(20)}) > 15


def test_frequencies_follow_the_distribution():
    n = 4000
    lp = _logprobs(*[[0.6, 0.3, 0.1]] * n)
    tokens = sample_rows(lp, _batch(n, seeds=[5] * n, positions=list(range(n))))
    counts = torch.bincount(tokens, minlength=3) / n
    assert torch.allclose(counts, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)


def test_temperature_flattens_the_distribution():
    n = 4000
    lp = _logprobs(*[[0.9, 0.1]] * n)
    hot = SamplingBatch.build([2.0] * n, [0] * n, [1.0] * n, [9] * n, list(range(n)))
    share = float((sample_rows(lp, hot) == 1).float().mean())
    expected = 0.1**0.5 / (0.9**0.5 + 0.1**0.5)  # p^(1/T), renormalised
    assert abs(share - expected) < 0.03


def test_top_k_one_is_greedy_when_sampling():
    lp = torch.log_softmax(torch.randn(8, 1000), -1)
    assert sample_rows(lp, _batch(8, top_k=1, seeds=list(range(8)))).tolist() == lp.argmax(-1).tolist()


def test_masked_tokens_are_never_drawn():
    n = 2000
    lp = torch.tensor([[math.log(0.5), float("-inf"), math.log(0.5)]] * n)
    assert not (sample_rows(lp, _batch(n, positions=list(range(n)))) == 1).any()


def test_masked_tokens_are_never_drawn_over_a_full_vocabulary():
    """Regression: the noise's top value rounded to 1.0 in float32 (p = 2**-24 per token), which made the
    Gumbel noise +inf and drew that token even when masked (-inf): ~0.3% of steps over 49152 tokens drew a
    token a grammar had ruled out."""
    n, vocab = 1500, 49152
    batch = _batch(n, seeds=list(range(n)))
    u = uniform_noise(batch.seed, batch.position, vocab)
    assert (u < 1).all() and (u == 1.0 - 2.0**-24).any()  # the top value occurs here, capped below 1
    lp = torch.full((n, vocab), float("-inf"))
    lp[:, :2] = math.log(0.5)
    assert (sample_rows(lp, batch) < 2).all()


@pytest.mark.parametrize("seed", [-(2**63), -1, 0, 2**63 - 1, 2**63, 2**64 - 1])
def test_every_api_seed_works_and_distinct_64_bit_seeds_differ(seed):
    batch = _batch(1, seeds=[seed])
    u = uniform_noise(batch.seed, batch.position, 1000)
    assert ((u > 0) & (u < 1)).all()
    other = _batch(1, seeds=[(seed + 2**63) % 2**64])  # differs in the top bit only
    assert not torch.equal(u, uniform_noise(other.seed, other.position, 1000))


def test_noise_is_uniform():
    batch = _batch(64, seeds=list(range(64)))
    u = uniform_noise(batch.seed, batch.position, 4096)
    assert abs(float(u.mean()) - 0.5) < 0.005
    histogram = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert torch.allclose(histogram, torch.full((10,), 0.1), atol=0.005)


def test_top_logprobs_best_first():
    top = top_logprobs(_logprobs([0.2, 0.7, 0.1])[0], 2)
    assert [t for t, _ in top] == [1, 0] and math.isclose(top[0][1], math.log(0.7), rel_tol=1e-6)
