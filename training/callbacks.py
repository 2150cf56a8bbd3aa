"""Trainer callbacks for preference training: metrics as JSONL, and a compact progress bar.

TRL's DPOTrainer logs (every `logging_steps`) `loss`, `rewards/accuracies` (the share of pairs whose
implicit reward prefers the chosen response: "chosen preference"), `rewards/margins` (mean
chosen - rejected reward) and more; eval logs carry the same keys prefixed `eval_`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback

# (logged key, short label) shown on the progress bar, in this order.
SHOWN = (("loss", "loss"), ("rewards/accuracies", "chosen pref"), ("rewards/margins", "margin"),
         ("mean_token_accuracy", "token acc"))


class MetricsJsonlCallback(TrainerCallback):
    """Append every log (train and eval) to `path` as one JSON object per line, with step and epoch.

    Appends, so a resumed run continues the same file.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **_finite(logs)}
        record.pop("total_flos", None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class PreferenceProgressCallback(ProgressCallback):
    """HF's tqdm bar (steps, rate, ETA) with loss / chosen preference / margin as its postfix.

    Replaces the stock ProgressCallback, which writes every log dict (20+ keys) as a line; here
    only eval results and the end-of-training summary get a line of their own.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" in logs:
            self.training_bar.set_postfix_str(format_metrics(logs), refresh=True)
        elif any(key.startswith("eval_") for key in logs):
            self.training_bar.write(f"eval @ step {state.global_step}: {format_metrics(logs, prefix='eval_')}")
        elif "train_loss" in logs:
            self.training_bar.write(
                f"done: {state.global_step} steps, mean loss {logs['train_loss']:.4f}, "
                f"{logs.get('train_runtime', 0):.0f} s"
            )


def format_metrics(logs: dict, prefix: str = "") -> str:
    """`loss 0.6123  chosen pref 0.750  margin 0.214` from whichever keys are present."""
    parts = [f"{label} {logs[prefix + key]:.4g}" for key, label in SHOWN if prefix + key in logs]
    return "  ".join(parts)


def _finite(logs: dict) -> dict:
    """JSON has no NaN/inf: write them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in logs.items()}
