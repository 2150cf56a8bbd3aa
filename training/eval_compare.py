"""Each doctor against each patient adapter at equal KL: "does the doctor beat DPO at DPO's KL?"

For a patient adapter A (`dpo:<name>`) with KL per token k_A, and a doctor d whose beta sweep
(the patient at KL 0, then d alone at each beta) gives points (KL, score) sorted by KL, the doctor's
score at k_A is the linear interpolation between the two sweep points around k_A. Where k_A lies
outside the sweep's KL range it is NaN, "beyond the sweep": no extrapolation. Distinct-2 is
interpolated the same way (a point estimate, no interval).

Intervals are a percentile bootstrap over prompts (Efron & Tibshirani 1993, ch. 13): resample the
prompts with replacement (seeded), recompute every setting's mean score and KL per token over the
resampled prompts' generations, redo the interpolation, and take the 2.5 / 97.5 % percentiles of
the doctor's score, the adapter's score and their difference (doctor - adapter, paired: both from
the same resample). Resamples where k_A falls beyond the sweep are left out of the doctor's
intervals.

Written as `compare.csv` (one row per adapter x doctor x scorer) next to `eval.csv`, and printed.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmdoctor.training.eval_report import SettingResult, sweep

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class PromptTotals:
    """One setting's sums per prompt over its samples; each array (P,), prompts in one shared order."""

    kl_sum: np.ndarray  # summed per-token KL over the prompt's responses, nats
    tokens: np.ndarray  # generated tokens
    count: np.ndarray  # responses
    scores: dict[str, np.ndarray]  # scorer -> summed score

    @staticmethod
    def collect(prompts: Sequence[str], rows: Iterable[tuple[str, float, int, dict[str, float]]]) -> PromptTotals:
        """From (prompt, KL summed over the response, tokens, {scorer: score}) per generation."""
        where = {p: i for i, p in enumerate(prompts)}
        kl, tokens, count, scores = np.zeros(len(prompts)), np.zeros(len(prompts)), np.zeros(len(prompts)), {}
        for prompt, kl_sum, n_tokens, row_scores in rows:
            i = where[prompt]
            kl[i], tokens[i], count[i] = kl[i] + kl_sum, tokens[i] + n_tokens, count[i] + 1
            for name, value in row_scores.items():
                scores.setdefault(name, np.zeros(len(prompts)))[i] += value
        return PromptTotals(kl, tokens, count, scores)

    def kl_per_token(self, idx: np.ndarray) -> float:
        """KL per token over the prompts `idx` (repeats count), as `eval.csv` computes it."""
        return float(self.kl_sum[idx].sum() / max(self.tokens[idx].sum(), 1.0))

    def score(self, scorer: str, idx: np.ndarray) -> float:
        return float(self.scores[scorer][idx].sum() / self.count[idx].sum())


# ---------------------------------------------------------------- pure math


def interpolate_at(kls: Sequence[float], values: Sequence[float], kl: float) -> float:
    """`values` linearly interpolated at `kl` along the points sorted by KL; NaN outside their range."""
    order = np.argsort(np.asarray(kls, dtype=float), kind="stable")
    xs, ys = np.asarray(kls, dtype=float)[order], np.asarray(values, dtype=float)[order]
    if not len(xs) or not xs[0] <= kl <= xs[-1]:
        return math.nan
    return float(np.interp(kl, xs, ys))


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float], n_prompts: int, resamples: int = RESAMPLES, seed: int = SEED,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile interval of `statistic(prompt indices)` over `resamples` draws of `n_prompts`
    prompts with replacement. NaN resamples are left out; (nan, nan) when all are NaN."""
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(rng.integers(0, n_prompts, n_prompts)) for _ in range(resamples)])
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


# ---------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass(frozen=True)
class Comparison:
    """Doctor `doctor` at adapter setting `adapter`'s KL, on `scorer`. NaN doctor values: beyond the sweep."""

    adapter: str  # the adapter's setting name, `dpo:<name>`
    doctor: str
    scorer: str
    kl: float  # the adapter's KL per token
    sweep_max_kl: float
    doctor_score: Estimate
    adapter_score: Estimate
    difference: Estimate  # doctor - adapter
    doctor_distinct_2: float  # interpolated
    adapter_distinct_2: float
    patient_distinct_2: float

    @property
    def beyond_sweep(self) -> bool:
        return math.isnan(self.doctor_score.value)

    def line(self) -> str:
        head = f"{self.doctor} doctor at {self.adapter}'s KL {self.kl:.3f}: "
        theirs = f"{self.adapter} {self.adapter_score}"
        if self.beyond_sweep:
            return f"{head}{self.scorer}: beyond the sweep (its KL reaches {self.sweep_max_kl:.3f}); {theirs}"
        return (f"{head}{self.scorer} {self.doctor_score} vs {theirs}: {self.difference}; "
                f"distinct-2 {self.doctor_distinct_2:.3f} vs {self.adapter_distinct_2:.3f} "
                f"(patient {self.patient_distinct_2:.3f})")

    def row(self) -> dict[str, object]:
        row: dict[str, object] = {"adapter": self.adapter, "doctor": self.doctor, "scorer": self.scorer,
                                  "kl_per_token": round(self.kl, 6), "sweep_max_kl": round(self.sweep_max_kl, 6)}
        for name, e in (("doctor_score", self.doctor_score), ("adapter_score", self.adapter_score),
                        ("difference", self.difference)):
            row.update({name: _round(e.value), f"{name}_low": _round(e.low), f"{name}_high": _round(e.high)})
        row.update({"doctor_distinct_2": _round(self.doctor_distinct_2),
                    "adapter_distinct_2": round(self.adapter_distinct_2, 4),
                    "patient_distinct_2": round(self.patient_distinct_2, 4)})
        return row


def _round(value: float) -> float | str:
    return "" if math.isnan(value) else round(value, 6)


def compare_at_adapter_kl(
    results: list[SettingResult], totals: dict[str, PromptTotals], doctors: list[str],
    resamples: int = RESAMPLES, seed: int = SEED,
) -> list[Comparison]:
    """Every patient adapter x doctor (with a sweep) x scorer; `totals` by setting name."""
    adapters = [r for r in results if r.setting.kind == "adapter"]
    patient = next((r for r in results if r.setting.kind == "patient"), None)
    if patient is None or not adapters:
        return []
    out = []
    for adapter in adapters:
        for doctor in doctors:
            points = sweep(results, doctor)
            if len(points) < 2:
                continue
            for scorer in adapter.scores:
                out.append(_compare_one(adapter, doctor, points, patient, scorer, totals, resamples, seed))
    return out


def _compare_one(
    adapter: SettingResult, doctor: str, points: list[SettingResult], patient: SettingResult, scorer: str,
    totals: dict[str, PromptTotals], resamples: int, seed: int,
) -> Comparison:
    """One line: `doctor`'s sweep `points` at `adapter`'s KL on `scorer`. Every statistic uses the
    same seed, hence the same resamples, so the difference is paired."""
    legs, theirs_totals = [totals[r.setting.name] for r in points], totals[adapter.setting.name]
    n_prompts = len(theirs_totals.count)

    def at_kl(idx: np.ndarray) -> float:
        return interpolate_at([t.kl_per_token(idx) for t in legs], [t.score(scorer, idx) for t in legs],
                              theirs_totals.kl_per_token(idx))

    def theirs(idx: np.ndarray) -> float:
        return theirs_totals.score(scorer, idx)

    def difference(idx: np.ndarray) -> float:
        return at_kl(idx) - theirs(idx)

    kls = [r.kl_per_token for r in points]
    return Comparison(
        adapter=adapter.setting.name, doctor=doctor, scorer=scorer, kl=adapter.kl_per_token, sweep_max_kl=max(kls),
        doctor_score=_estimate(at_kl, n_prompts, resamples, seed),
        adapter_score=_estimate(theirs, n_prompts, resamples, seed),
        difference=_estimate(difference, n_prompts, resamples, seed),
        doctor_distinct_2=interpolate_at(kls, [r.distinct_2 for r in points], adapter.kl_per_token),
        adapter_distinct_2=adapter.distinct_2, patient_distinct_2=patient.distinct_2,
    )


def _estimate(statistic: Callable[[np.ndarray], float], n_prompts: int, resamples: int, seed: int) -> Estimate:
    """The statistic on every prompt, with its interval; all NaN when it is NaN on every prompt (beyond
    the sweep), so no interval is reported for a point that was not estimated."""
    value = statistic(np.arange(n_prompts))
    if math.isnan(value):
        return Estimate(math.nan, math.nan, math.nan)
    return Estimate(value, *bootstrap_interval(statistic, n_prompts, resamples, seed))


def format_comparisons(comparisons: list[Comparison]) -> str:
    """The printed section: a heading, then one line per comparison; empty when there are none."""
    if not comparisons:
        return ""
    head = (f"each doctor at each patient adapter's KL (linear along its beta sweep; "
            f"[{LEVEL:.0%} bootstrap interval over prompts]; difference doctor - adapter):")
    return "\n".join([head, *(c.line() for c in comparisons)])


def write_comparisons(path: Path, comparisons: list[Comparison]) -> Path | None:
    """`compare.csv`, one row per comparison; nothing written (None) when there are none."""
    if not comparisons:
        return None
    rows = [c.row() for c in comparisons]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
