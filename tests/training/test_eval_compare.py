"""`eval_compare`: interpolation along a sweep, the bootstrap over prompts, and doctor vs adapter at
the adapter's KL, on hand-made numbers."""

import math

import numpy as np
import pytest

from llmdoctor.training.eval_compare import PromptTotals, bootstrap_interval, compare_at_adapter_kl, interpolate_at
from llmdoctor.training.eval_report import SettingResult
from llmdoctor.training.eval_settings import Setting


def test_interpolate_at_sweep_gives_the_linear_value_between_its_neighbours():
    # unsorted on purpose: points (0, 0.2), (0.4, 0.6), (1.0, 0.9)
    assert interpolate_at([1.0, 0.0, 0.4], [0.9, 0.2, 0.6], 0.7) == pytest.approx(0.75)
    assert interpolate_at([1.0, 0.0, 0.4], [0.9, 0.2, 0.6], 0.1) == pytest.approx(0.3)
    assert interpolate_at([0.0, 0.4], [0.2, 0.6], 0.4) == pytest.approx(0.6)  # the end point itself


def test_interpolate_at_kl_beyond_the_sweep_is_nan():
    assert math.isnan(interpolate_at([0.0, 0.4], [0.2, 0.6], 0.41))
    assert math.isnan(interpolate_at([0.0, 0.4], [0.2, 0.6], -0.1))


def test_bootstrap_interval_contains_the_true_mean_and_shrinks_with_more_prompts():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 500):
        values = rng.normal(0.5, 0.2, n)  # true mean 0.5
        low, high = bootstrap_interval(lambda idx: values[idx].mean(), n, resamples=1000, seed=0)
        assert low < 0.5 < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # ~ 1 / sqrt(n): 5x narrower


def test_bootstrap_interval_same_seed_same_interval():
    values = np.arange(10.0)
    first = bootstrap_interval(lambda idx: values[idx].mean(), 10, resamples=200, seed=7)
    assert bootstrap_interval(lambda idx: values[idx].mean(), 10, resamples=200, seed=7) == first


def result(setting: Setting, kl: float, score: float, distinct_2: float) -> SettingResult:
    return SettingResult(setting, 2, 10.0, kl, {"sentiment": score}, 0.5, distinct_2, 1.0, 1.0)


def totals(kls: list[float], scores: list[float]) -> PromptTotals:
    """Two prompts, one response of 10 tokens each: per-token KL and score per prompt."""
    return PromptTotals(np.array(kls) * 10, np.array([10.0, 10.0]), np.array([1.0, 1.0]),
                        {"sentiment": np.array(scores)})


def hand_made(adapter_kls: list[float]) -> tuple[list[SettingResult], dict[str, PromptTotals]]:
    """Sweep of doctor `pos`: patient (0, 0.2), pos@1 (0.4, 0.6), pos@2 (1.0, 0.9); the adapter at 0.9."""
    patient, d1, d2 = Setting("patient", "patient"), Setting("pos@1", "doctor", doctors=(("pos", 1.0),)), \
        Setting("pos@2", "doctor", doctors=(("pos", 2.0),))
    adapter = Setting("dpo:a", "adapter", adapter="a")
    adapter_kl = sum(adapter_kls) / 2
    results = [result(patient, 0.0, 0.2, 0.8), result(d1, 0.4, 0.6, 0.7), result(d2, 1.0, 0.9, 0.4),
               result(adapter, adapter_kl, 0.9, 0.5)]
    per_prompt = {"patient": totals([0.0, 0.0], [0.2, 0.2]), "pos@1": totals([0.4, 0.4], [0.6, 0.6]),
                  "pos@2": totals([1.0, 1.0], [0.9, 0.9]), "dpo:a": totals(adapter_kls, [0.9, 0.9])}
    return results, per_prompt


def test_compare_at_adapter_kl_interpolates_the_doctor_and_subtracts_the_adapter():
    [c] = compare_at_adapter_kl(*hand_made([0.7, 0.7]), ["pos"], resamples=50)
    assert (c.adapter, c.doctor, c.scorer, c.kl) == ("dpo:a", "pos", "sentiment", pytest.approx(0.7))
    assert c.doctor_score.value == pytest.approx(0.75) and c.adapter_score.value == pytest.approx(0.9)
    assert c.difference.value == pytest.approx(-0.15) and c.difference.low == pytest.approx(-0.15)
    assert c.doctor_distinct_2 == pytest.approx(0.55) and c.patient_distinct_2 == 0.8
    assert c.line().startswith("pos doctor at dpo:a's KL 0.700: sentiment 0.75 [0.75, 0.75] vs dpo:a 0.90")


def test_compare_at_adapter_kl_beyond_the_sweep_says_so():
    [c] = compare_at_adapter_kl(*hand_made([1.5, 1.5]), ["pos"], resamples=50)
    assert c.beyond_sweep and math.isnan(c.difference.value)
    assert c.row()["doctor_score"] == c.row()["difference_low"] == ""
    assert "beyond the sweep (its KL reaches 1.000)" in c.line()
