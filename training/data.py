"""Load a preference dataset for DPO or GDPO: read, map fields, check rows, report, split.

    data = load_preferences(config.dataset, config.alignment.method, tokenizer,
                            group_size=config.alignment.group_delay_size, seed=config.alignment.seed)
    print(data.report.summary())

Formats live in `data_formats.py`, the row type and field mapping in `data_rows.py`, the checks and
the report in `data_checks.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from llmdoctor.training.config import DatasetConfig, Method
from llmdoctor.training.data_checks import DataReport, has_identical_responses, is_empty, row_key, row_tokens
from llmdoctor.training.data_formats import DataError, Record, read_records
from llmdoctor.training.data_rows import PreferenceRow, RowInvalid, RowSchema, parse_row, plan_schema, text_content


@dataclass
class PreferenceData:
    """The kept rows, split, and the report of what was read and skipped."""

    train: list[PreferenceRow]
    validation: list[PreferenceRow]
    report: DataReport

    @property
    def rows(self) -> list[PreferenceRow]:
        return self.train + self.validation


def load_preferences(
    dataset: DatasetConfig, method: Method, tokenizer: Any = None, *, group_size: int | None = None, seed: int = 42
) -> PreferenceData:
    """Read `dataset.path` into checked rows, best response first.

    `group_size` (GDPO's group_delay_size) cuts longer ranked groups to the best group_size-1 plus the
    worst; `tokenizer` enables the max_length check and token lengths; `seed` fixes the split.
    Raises DataError for an unreadable file, missing fields, or when no valid row is left.
    """
    # 1) read the file and pick the row layout (pairwise or ranked) from its fields
    records = read_records(dataset.path, dataset.format, dataset.train_split)
    report = DataReport(
        source=str(dataset.path),
        method=method,
        rows_read=len(records),
        group_size=group_size if method == "gdpo" else None,
    )
    if not records:
        raise DataError(
            f"dataset.path {dataset.path}: no rows in the file (split {dataset.train_split!r})", report=report
        )
    schema = plan_schema(records, dataset, method)
    # 2) parse and check every row, counting each skipped one under its reason
    rows, tokens = _checked_rows(records, schema, dataset, tokenizer, report, group_size if method == "gdpo" else None)
    if not rows:
        raise DataError(f"dataset.path {dataset.path}: no valid rows left\n{report.summary()}", report=report)
    # 3) split and measure
    train, validation = split_rows(rows, dataset.validation_fraction, seed)
    report.kept, report.train_size, report.validation_size = len(rows), len(train), len(validation)
    _measure(rows, tokens, report)
    return PreferenceData(train, validation, report)


def split_rows(rows: list[PreferenceRow], fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded random `fraction` of rows (at least one when fraction > 0 and there
    are two rows or more) goes to validation; both keep file order."""
    if fraction <= 0 or len(rows) < 2:
        return list(rows), []
    size = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    picked = set(random.Random(seed).sample(range(len(rows)), size))
    train = [row for i, row in enumerate(rows) if i not in picked]
    return train, [row for i, row in enumerate(rows) if i in picked]


def _checked_rows(
    records: list[Record],
    schema: RowSchema,
    dataset: DatasetConfig,
    tokenizer: Any,
    report: DataReport,
    group_size: int | None,
) -> tuple[list[PreferenceRow], list[tuple]]:
    """Kept rows and, with a tokenizer, their (prompt tokens, response tokens) counts."""
    kept, tokens, seen = [], [], set()
    for index, record in enumerate(records):
        try:
            row = parse_row(record, index, schema, group_size)
        except RowInvalid as exc:
            report.skip("invalid", index, str(exc))
            continue
        reason = _content_problem(row, seen)
        counts = row_tokens(tokenizer, row) if tokenizer is not None and not reason else None
        if counts and counts[0] + max(counts[1]) > dataset.max_length:
            reason = "too_long"
        if reason:
            report.skip(reason, index)
            continue
        seen.add(row_key(row))
        kept.append(row)
        tokens.append(counts)
        report.k_counts[_read_k(record, schema, row)] += 1
        report.truncated += _read_k(record, schema, row) > len(row.responses)
    return kept, tokens


def _content_problem(row: PreferenceRow, seen: set) -> str | None:
    if is_empty(row):
        return "empty"
    if has_identical_responses(row):
        return "identical"
    if row_key(row) in seen:
        return "duplicate"
    return None


def _read_k(record: Record, schema: RowSchema, row: PreferenceRow) -> int:
    """K as in the file (before the group cut)."""
    return len(record[schema.responses]) if schema.kind == "ranked" else len(row.responses)


def _measure(rows: list[PreferenceRow], tokens: list[tuple], report: DataReport) -> None:
    """Mean prompt and response lengths of the kept rows, in characters (and tokens when counted)."""
    report.prompt_chars = fmean(len(text_content(row.prompt)) for row in rows)
    report.response_chars = fmean(len(text_content(r)) for row in rows for r in row.responses)
    if tokens and tokens[0] is not None:
        report.prompt_tokens = fmean(prompt for prompt, _ in tokens)
        report.response_tokens = fmean(n for _, responses in tokens for n in responses)
