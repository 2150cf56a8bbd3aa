"""An evaluation's results and how they are written: `eval.csv` (one row per setting, a beta column
per doctor), `samples.jsonl` (every generation), `frontier.png` (score vs KL per token, the
reward/KL frontier, a panel per scorer) and a plain-text table for the terminal.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from llmdoctor.training.eval_settings import Setting, format_beta


@dataclass(frozen=True)
class SettingResult:
    """One setting's metrics. Scores and KL are means over its generations (KL over its tokens)."""

    setting: Setting
    n: int  # generations (prompts x samples)
    mean_tokens: float  # generated tokens per response
    kl_per_token: float  # KL(p_decode || p_patient) per generated token, nats
    scores: dict[str, float]  # scorer -> mean score
    distinct_1: float
    distinct_2: float
    tokens_per_s: float  # generated tokens / wall seconds of this setting's generation
    seconds: float

    def row(self, doctors: list[str], adapters: list[str]) -> dict[str, object]:
        """The CSV row: the setting's name, kind, alpha, how its doctors enter the rule, a beta per doctor,
        its adapter, the metrics."""
        s = self.setting
        betas = s.betas
        row: dict[str, object] = {"setting": s.name, "kind": s.kind, "alpha": s.alpha, "mode": s.mode}
        row.update({f"beta_{d}": betas.get(d, 0.0) for d in doctors})
        if adapters:
            row["adapter"] = s.adapter or ""
        row.update({"n": self.n, "mean_tokens": round(self.mean_tokens, 3),
                    "kl_per_token": round(self.kl_per_token, 6)})
        row.update({f"score_{name}": round(value, 6) for name, value in self.scores.items()})
        row.update({"distinct_1": round(self.distinct_1, 4), "distinct_2": round(self.distinct_2, 4),
                    "tokens_per_s": round(self.tokens_per_s, 2), "seconds": round(self.seconds, 2)})
        return row


def write_csv(path: Path, results: list[SettingResult], doctors: list[str], adapters: list[str]) -> Path:
    rows = [r.row(doctors, adapters) for r in results]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_samples(path: Path, samples: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for sample in samples:
            out.write(json.dumps(sample, ensure_ascii=False) + "\n")
    return path


def format_table(results: list[SettingResult]) -> str:
    """Fixed-width table: setting, n, tokens, KL/token, each score, distinct-1/2, tokens/s."""
    scorers = list(results[0].scores) if results else []
    header = ["setting", "n", "tokens", "KL/tok", *scorers, "dist-1", "dist-2", "tok/s"]
    lines = [[r.setting.name, str(r.n), f"{r.mean_tokens:.1f}", f"{r.kl_per_token:.4f}",
              *(f"{r.scores[s]:.3f}" for s in scorers),
              f"{r.distinct_1:.3f}", f"{r.distinct_2:.3f}", f"{r.tokens_per_s:.1f}"] for r in results]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join(fmt(row) for row in [header, *lines])


# ---------------------------------------------------------------- the frontier plot


def sweep(results: list[SettingResult], doctor: str) -> list[SettingResult]:
    """The patient and `doctor` alone at each beta, ordered by beta (the patient is beta 0)."""
    alone = [r for r in results if r.setting.kind == "patient"
             or (r.setting.kind == "doctor" and list(r.setting.betas) == [doctor])]
    return sorted(alone, key=lambda r: r.setting.betas.get(doctor, 0.0))


def plot_frontier(path: Path, results: list[SettingResult], doctors: list[str]) -> Path:
    """Score vs KL per token, a panel per scorer: a line per doctor's beta sweep from the patient
    point, grid points and patient adapters marked and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scorers = list(results[0].scores)
    fig, axes = plt.subplots(1, len(scorers), figsize=(6 * len(scorers), 4.5), squeeze=False)
    for ax, scorer in zip(axes[0], scorers):
        for doctor in doctors:
            points = sweep(results, doctor)
            modes = {r.setting.mode for r in points if r.setting.doctors}
            label = f"{doctor} ({', '.join(sorted(modes))})" if modes else doctor  # ratio or product: what beta means
            ax.plot([r.kl_per_token for r in points], [r.scores[scorer] for r in points], marker="o", label=label)
            for r in points[1:] if points and points[0].setting.kind == "patient" else points:
                ax.annotate(f"β={format_beta(r.setting.betas.get(doctor, 0.0))}",
                            (r.kl_per_token, r.scores[scorer]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        controls = sorted((r for r in results if r.setting.kind in ("patient", "control")),
                          key=lambda r: r.setting.alpha)
        if len(controls) > 1:
            ax.plot([r.kl_per_token for r in controls], [r.scores[scorer] for r in controls], linestyle="--",
                    color="gray", marker=".", label="patient sharpened (alpha = 1 + beta, no doctor)")
        _mark(ax, scorer, [r for r in results if r.setting.kind == "patient"], "s", "black", "patient")
        _mark(ax, scorer, [r for r in results if r.setting.kind == "grid"], "x", "gray", "grid")
        _mark(ax, scorer, [r for r in results if r.setting.kind == "adapter"], "*", "red", "patient adapter")
        ax.set_xlabel("KL(p_decode || p_patient) per token (nats)")
        ax.set_ylabel(f"mean {scorer} score")
        ax.set_title(f"{scorer}: reward/KL frontier")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _mark(ax, scorer: str, results: list[SettingResult], marker: str, color: str, label: str) -> None:
    if not results:
        return
    ax.scatter([r.kl_per_token for r in results], [r.scores[scorer] for r in results],
               marker=marker, color=color, s=60, label=label, zorder=3)
    for r in results:
        ax.annotate(r.setting.name, (r.kl_per_token, r.scores[scorer]), fontsize=7,
                    xytext=(3, -9), textcoords="offset points")
