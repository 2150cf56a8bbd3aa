"""Stage 2's data: the token-rewards file of `llmdoctor train rewards`, checked and batched.

    data = load_reward_data(config.data, tokenizer, seed=42)    # -> DoctorData
    batch = RowCollator(pad_id)(rows)                            # 2 sequences per row

A row is usable when its ids and rewards line up; rows longer than `data.max_length` are counted
and skipped (never silently). The file must come from a patient that tokenizes like the doctor
base (the `tokenizer` fingerprint stage 1 recorded), else the rewards would sit on the wrong
tokens: that is refused with both names.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from llmdoctor.training.data import split_rows
from llmdoctor.training.data_formats import DataError
from llmdoctor.training.doctor_config import DoctorDataConfig
from llmdoctor.training.rewards_job import read_reward_rows, tokenizer_fingerprint
from llmdoctor.training.tfpo_losses import first_divergence

REQUIRED = ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_rewards", "rejected_rewards")
COLUMNS = (*REQUIRED, "divergence")


@dataclass
class DoctorData:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    dimension: str
    skipped: Counter = field(default_factory=Counter)  # reason -> rows

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items()) or "none"
        return (f"token rewards: {len(self.train) + len(self.validation)} rows kept (skipped: {skipped}); "
                f"train / validation: {len(self.train)} / {len(self.validation)}; dimension {self.dimension}")


def load_reward_data(section: DoctorDataConfig, tokenizer, seed: int = 42) -> DoctorData:
    """Read, check and split `section.path`. Raises DataError (field data.path) when it is unusable."""
    path = section.path
    if not path.is_file():
        raise DataError(f"data.path {path}: no such file (write one with `llmdoctor train rewards`)", "data.path")
    try:
        rows = read_reward_rows(path)
    except Exception as exc:  # a broken Parquet file raises pyarrow's own errors
        raise DataError(f"data.path {path}: cannot read it as a token-rewards file: {exc}", "data.path") from None
    if not rows:
        raise DataError(f"data.path {path}: no rows", "data.path")
    _check_fields(rows[0], path)
    _check_tokenizer(rows, tokenizer, path)
    kept, skipped = [], Counter()
    for row in rows:
        reason = _problem(row, section.max_length)
        if reason:
            skipped[reason] += 1
            continue
        kept.append({**{key: row[key] for key in REQUIRED}, "divergence": _divergence(row)})
    if not kept:
        raise DataError(f"data.path {path}: no usable rows (skipped: {dict(skipped)})", "data.path")
    train, validation = split_rows(kept, section.validation_fraction, seed)  # the preference loader's split
    dimension = Counter(row.get("dimension") or "custom" for row in rows).most_common(1)[0][0]
    return DoctorData(train, validation, dimension, skipped)


def _check_fields(row: dict, path) -> None:
    missing = [name for name in REQUIRED if name not in row]
    if missing:
        raise DataError(
            f"data.path {path}: rows lack {', '.join(missing)} (they have {', '.join(sorted(row))}); "
            "expected a token-rewards file written by `llmdoctor train rewards`",
            "data.path",
        )


def _check_tokenizer(rows: list[dict], tokenizer, path) -> None:
    recorded = rows[0].get("tokenizer")
    if recorded and recorded != tokenizer_fingerprint(tokenizer):
        raise DataError(
            f"data.path {path}: its rewards were computed with patient {rows[0].get('model')!r}, whose tokenizer "
            "differs from the doctor base's (model.path); a doctor must share the patient's tokenizer",
            "model.path",
        )


def _problem(row: dict, max_length: int) -> str | None:
    for side in ("chosen", "rejected"):
        if len(row[f"{side}_ids"]) != len(row[f"{side}_rewards"]) or not row[f"{side}_ids"]:
            return "ids_rewards_mismatch"
    if len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) > max_length:
        return "too_long"
    return None


def _divergence(row: dict) -> int:
    """Where chosen and rejected first differ (-1: one is a prefix of the other, no value pair)."""
    index = first_divergence(row["chosen_ids"], row["rejected_ids"])
    return -1 if index is None else index


class RowCollator:
    """Rows -> one right-padded batch of 2B sequences: row b's chosen at 2b, its rejected at 2b + 1.

    input_ids / attention_mask (2B, L); prompt_lengths, response_lengths (2B,); rewards (2B, T) with
    T the longest response (0 past each length); divergence (B,).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, prompts, responses, rewards = [], [], [], []
        for row in rows:
            for side in ("chosen", "rejected"):
                sequences.append(list(row["prompt_ids"]) + list(row[f"{side}_ids"]))
                prompts.append(len(row["prompt_ids"]))
                responses.append(len(row[f"{side}_ids"]))
                rewards.append(list(row[f"{side}_rewards"]))
        width, longest = max(map(len, sequences)), max(responses)
        return {
            "input_ids": torch.tensor([s + [self.pad_token_id] * (width - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
            "prompt_lengths": torch.tensor(prompts),
            "response_lengths": torch.tensor(responses),
            "rewards": torch.tensor([r + [0.0] * (longest - len(r)) for r in rewards], dtype=torch.float32),
            "divergence": torch.tensor([row["divergence"] for row in rows]),
        }
