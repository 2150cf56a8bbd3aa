"""Row checks and the DataReport: every skipped row is counted by reason, never dropped silently.

A row is skipped for the first reason that applies, in this order: invalid (cannot be read: wrong
type, K < 2, scores that do not match), empty (empty prompt or response), identical (two responses of
the group are the same text: chosen == rejected for pairs), duplicate (the same prompt and responses
as an earlier row), too_long (prompt + longest response over dataset.max_length tokens; checked only
when a tokenizer is given).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llmdoctor.training.data_rows import PreferenceRow, Text, text_content

SKIP_REASONS = {
    "invalid": "unreadable row (wrong type, K < 2, scores not one per response)",
    "empty": "empty prompt or response",
    "identical": "identical responses (chosen == rejected)",
    "duplicate": "exact duplicate of an earlier row",
    "too_long": "prompt + response longer than dataset.max_length tokens",
}
MAX_EXAMPLES = 5


@dataclass
class Skipped:
    count: int = 0
    examples: list[int] = field(default_factory=list)  # up to MAX_EXAMPLES 0-based row indices
    first_detail: str | None = None


@dataclass
class DataReport:
    """What the loader read, kept and skipped. Lengths are means over kept rows (None = not measured)."""

    source: str
    method: str
    rows_read: int = 0
    kept: int = 0
    skipped: dict[str, Skipped] = field(default_factory=dict)
    k_counts: Counter = field(default_factory=Counter)  # K as read (before the group cut) -> kept rows
    truncated: int = 0  # ranked rows cut to group_delay_size
    group_size: int | None = None
    train_size: int = 0
    validation_size: int = 0
    prompt_chars: float | None = None
    response_chars: float | None = None
    prompt_tokens: float | None = None
    response_tokens: float | None = None

    def skip(self, reason: str, index: int, detail: str | None = None) -> None:
        assert reason in SKIP_REASONS, reason
        entry = self.skipped.setdefault(reason, Skipped())
        entry.count += 1
        if len(entry.examples) < MAX_EXAMPLES:
            entry.examples.append(index)
        if entry.first_detail is None:
            entry.first_detail = detail

    def count(self, reason: str) -> int:
        return self.skipped[reason].count if reason in self.skipped else 0

    @property
    def skipped_total(self) -> int:
        return sum(entry.count for entry in self.skipped.values())

    def summary(self) -> str:
        """Multi-line text for `--dry-run` and for the error raised when no row is left."""
        lines = [
            f"dataset {self.source} ({self.method})",
            f"  rows read: {self.rows_read}",
            f"  rows kept: {self.kept}",
            f"  rows skipped: {self.skipped_total}",
        ]
        for reason, entry in sorted(self.skipped.items(), key=lambda item: list(SKIP_REASONS).index(item[0])):
            detail = f"; first: {entry.first_detail}" if entry.first_detail else ""
            lines.append(f"    {reason}: {entry.count} - {SKIP_REASONS[reason]} (rows {_indices(entry)}{detail})")
        if self.method == "gdpo" and self.k_counts:
            ks = ", ".join(f"K={k}: {n}" for k, n in sorted(self.k_counts.items()))
            lines.append(f"  responses per prompt: {ks}")
            if self.truncated:
                lines.append(
                    f"  cut to group_delay_size {self.group_size} (best {self.group_size - 1} + worst): "
                    f"{self.truncated} rows"
                )
        lines.append(f"  train / validation: {self.train_size} / {self.validation_size}")
        lines.append(f"  mean prompt length: {_length(self.prompt_chars, self.prompt_tokens)}")
        lines.append(f"  mean response length: {_length(self.response_chars, self.response_tokens)}")
        return "\n".join(lines)


def is_empty(row: PreferenceRow) -> bool:
    return any(not text_content(text).strip() for text in (row.prompt, *row.responses))


def has_identical_responses(row: PreferenceRow) -> bool:
    return len(set(row.responses)) < len(row.responses)


def row_key(row: PreferenceRow) -> tuple:
    """Equal for exact duplicates (same prompt, same responses in the same order)."""
    return row.prompt, row.responses


def token_count(tokenizer: Any, text: Text, is_prompt: bool) -> int:
    """Tokens of a text as the trainer will see it: a message prompt through the chat template (with the
    generation prompt), everything else as plain text without special tokens."""
    if is_prompt and not isinstance(text, str) and getattr(tokenizer, "chat_template", None):
        messages = [{"role": m.role, "content": m.content} for m in text]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return len(tokenizer(text_content(text), add_special_tokens=False)["input_ids"])


def row_tokens(tokenizer: Any, row: PreferenceRow) -> tuple[int, list[int]]:
    """(prompt tokens, tokens of each response)."""
    return token_count(tokenizer, row.prompt, True), [token_count(tokenizer, r, False) for r in row.responses]


def _indices(entry: Skipped) -> str:
    more = ", ..." if entry.count > len(entry.examples) else ""
    return ", ".join(map(str, entry.examples)) + more


def _length(chars: float | None, tokens: float | None) -> str:
    if chars is None:
        return "n/a"
    return f"{chars:.1f} chars" + (f", {tokens:.1f} tokens" if tokens is not None else "")
