"""Preference rows: the common type for pairwise (DPO) and ranked (GDPO) data, and record -> row.

Every row is a prompt plus K >= 2 responses ranked best first; a pairwise row is K = 2 (chosen,
rejected). Prompts and responses stay as given: a plain string, or a tuple of chat messages (the
trainer applies the chat template). Ranked rows longer than the group keep the top
`group_size - 1` responses and the worst one, so the best-vs-worst pair the DPO term uses survives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from llmdoctor.training.config import DatasetConfig, Method
from llmdoctor.training.data_formats import DataError, Record


@dataclass(frozen=True)
class Message:
    role: str
    content: str


Text = str | tuple[Message, ...]


@dataclass(frozen=True)
class PreferenceRow:
    """One prompt and its responses, best first. `index` is the row's 0-based position in the file."""

    index: int
    prompt: Text
    responses: tuple[Text, ...]
    # per response: cut at a length limit rather than ended by the model (data synth's meta.truncated);
    # such a response gets no end-of-turn token in training, or the model learns to stop mid-sentence
    truncated: tuple[bool, ...] | None = None

    @property
    def chosen(self) -> Text:
        return self.responses[0]

    @property
    def rejected(self) -> Text:
        return self.responses[-1]

    def to_record(self) -> dict[str, Any]:
        """TRL-style dict: prompt, chosen, rejected, responses; messages as lists of {role, content}."""
        plain = [_plain(text) for text in self.responses]
        cut = list(self.truncated or [False] * len(plain))
        return {"prompt": _plain(self.prompt), "chosen": plain[0], "rejected": plain[-1], "responses": plain,
                "truncated": cut}


class RowInvalid(ValueError):
    """One row cannot be read (a wrong type, K < 2, ...); the loader counts it and goes on."""


@dataclass(frozen=True)
class RowSchema:
    """Which configured fields a file's rows use: pairwise (chosen/rejected) or ranked (responses)."""

    kind: Literal["pairwise", "ranked"]
    prompt: str
    chosen: str = ""
    rejected: str = ""
    responses: str = ""
    scores: str | None = None


def plan_schema(records: list[Record], dataset: DatasetConfig, method: Method) -> RowSchema:
    """Pick the row layout from the fields the file has. Raises one DataError for missing fields."""
    present = _field_names(records)
    pairwise = RowSchema("pairwise", dataset.prompt_field, dataset.chosen_field, dataset.rejected_field)
    ranked = RowSchema("ranked", dataset.prompt_field, responses=dataset.responses_field, scores=dataset.scores_field)
    if method == "gdpo" and dataset.responses_field in present:
        schema = ranked
    elif method == "gdpo" and not {dataset.chosen_field, dataset.rejected_field} <= present:
        schema = ranked  # neither layout: report against the ranked one, GDPO's own
    else:
        schema = pairwise
    missing = [name for name in _required(schema) if name not in present]
    if missing:
        raise DataError(
            _missing_message(missing, present, schema, dataset, method), field=_config_key(missing[0], dataset)
        )
    return schema


def parse_row(record: Record, index: int, schema: RowSchema, group_size: int | None = None) -> PreferenceRow:
    """Record -> row, best first, cut to `group_size` (top group_size-1 plus the worst). Raises RowInvalid."""
    prompt = parse_text(_get(record, schema.prompt), schema.prompt)
    if schema.kind == "pairwise":
        responses = [_get(record, schema.chosen), _get(record, schema.rejected)]
        texts = (parse_text(responses[0], schema.chosen), parse_text(responses[1], schema.rejected))
        return PreferenceRow(index, prompt, texts, truncated_flags(record, 2))
    responses = _get(record, schema.responses)
    if not isinstance(responses, (list, tuple)):
        raise RowInvalid(f"{schema.responses}: expected a list of responses, got {type(responses).__name__}")
    cut = truncated_flags(record, len(responses))
    order = list(range(len(responses)))
    if schema.scores is not None:
        order = rank_by_scores(order, _get(record, schema.scores), schema.scores)
    if len(responses) < 2:
        raise RowInvalid(f"{schema.responses}: {len(responses)} response(s); a group needs K >= 2 (a best and a worse)")
    texts = tuple(parse_text(responses[i], f"{schema.responses}[{i}]") for i in order)
    flags = tuple(cut[i] for i in order) if cut else None
    return PreferenceRow(index, prompt, truncate_group(texts, group_size),
                         truncate_group(flags, group_size) if flags else None)


def truncated_flags(record: Record, count: int) -> tuple[bool, ...] | None:
    """data synth's meta.truncated, when it is there and fits the row (else None: nothing was cut)."""
    meta = record.get("meta") if isinstance(record, dict) else None
    flags = meta.get("truncated") if isinstance(meta, dict) else None
    if isinstance(flags, list) and len(flags) == count and all(isinstance(f, bool) for f in flags):
        return tuple(flags)
    return None


def rank_by_scores(responses: list[Any], scores: Any, field: str) -> list[Any]:
    """Responses sorted by score, highest first; equal scores keep their input order (stable sort)."""
    if not isinstance(scores, (list, tuple)) or len(scores) != len(responses):
        got = f"{len(scores)} scores" if isinstance(scores, (list, tuple)) else f"a {type(scores).__name__}"
        raise RowInvalid(f"{field}: expected one score per response ({len(responses)}), got {got}")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
        raise RowInvalid(f"{field}: scores must be finite numbers, got {scores!r}")
    order = sorted(range(len(responses)), key=lambda i: -scores[i])
    return [responses[i] for i in order]


def truncate_group(responses: tuple[Text, ...], group_size: int | None) -> tuple[Text, ...]:
    """Keep the best `group_size - 1` responses and the worst one; shorter groups stay whole."""
    if group_size is None or len(responses) <= group_size:
        return responses
    return responses[: group_size - 1] + responses[-1:]


def parse_text(value: Any, field: str) -> Text:
    """A string, one {role, content} message, or a list of them. None (a null cell) reads as empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, (list, tuple)) and all(_is_message(item) for item in value):
        return tuple(Message(str(item["role"]), str(item["content"] or "")) for item in value)
    raise RowInvalid(f"{field}: expected a string or a list of {{role, content}} messages, got {_preview(value)}")


def text_content(text: Text) -> str:
    """The words of a text (message contents joined by newlines), for lengths and emptiness."""
    return text if isinstance(text, str) else "\n".join(message.content for message in text)


def _get(record: Record, field: str) -> Any:
    if field not in record:
        raise RowInvalid(f"missing field {field!r} (this row has: {', '.join(map(str, record)) or 'no fields'})")
    return record[field]


def _is_message(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and "role" in item
        and "content" in item
        and (item["content"] is None or isinstance(item["content"], str))
    )


def _plain(text: Text) -> str | list[dict[str, str]]:
    return text if isinstance(text, str) else [{"role": m.role, "content": m.content} for m in text]


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_names(records: Iterable[Record]) -> set[str]:
    names: set[str] = set()
    for record in records:
        names.update(map(str, record))
    return names


def _required(schema: RowSchema) -> list[str]:
    if schema.kind == "pairwise":
        return [schema.prompt, schema.chosen, schema.rejected]
    return [schema.prompt, schema.responses] + ([schema.scores] if schema.scores else [])


def _config_key(name: str, dataset: DatasetConfig) -> str:
    for key in ("prompt_field", "chosen_field", "rejected_field", "responses_field", "scores_field"):
        if getattr(dataset, key) == name:
            return f"dataset.{key}"
    return "dataset.path"


def _expected_row(schema: RowSchema) -> str:
    if schema.kind == "pairwise":
        row: dict[str, Any] = {schema.prompt: "...", schema.chosen: "...", schema.rejected: "..."}
    else:
        row = {schema.prompt: "...", schema.responses: ["best", "...", "worst"]}
        if schema.scores:
            row = {schema.prompt: "...", schema.responses: ["...", "..."], schema.scores: [1.0, 0.0]}
    return json.dumps(row)


def _missing_message(
    missing: list[str], present: set[str], schema: RowSchema, dataset: DatasetConfig, method: Method
) -> str:
    names = ", ".join(repr(name) for name in missing)
    keys = ", ".join(f"{_config_key(name, dataset)}: <column>" for name in missing)
    lines = [
        f"dataset.path {dataset.path}: the rows have no field {names}",
        f"fields present: {', '.join(sorted(present)) or '(none)'}",
        f"expected rows like: {_expected_row(schema)}",
    ]
    if method == "gdpo" and schema.kind == "ranked" and not schema.scores:
        lines.append(
            f'(GDPO also reads pairwise rows: {{"{dataset.prompt_field}": "...", '
            f'"{dataset.chosen_field}": "...", "{dataset.rejected_field}": "..."}})'
        )
    if method == "dpo" and dataset.responses_field in present:
        lines.append(f"the rows carry ranked {dataset.responses_field!r}: use alignment.method: gdpo for them")
    lines.append(f"if the file names these columns differently, map them in the config ({keys})")
    return "\n".join(lines)
