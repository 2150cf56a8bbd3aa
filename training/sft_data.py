"""Load a supervised (instruction / response) dataset for SFT: read, detect the layout, check rows, report, split.

    data = load_sft(config.dataset, tokenizer, seed=config.alignment.seed)
    print(data.report.summary())

Two layouts, detected from the fields the file has (names from the config's dataset section):
- instruction / response: `{"instruction": "...", "response": "..."}`; the instruction becomes one user turn and
  the response one assistant turn when the tokenizer has a chat template (as the server's chat endpoint sends it).
- chat messages: `{"messages": [{"role": "user", ...}, ..., {"role": "assistant", ...}]}`; the last message must
  be the assistant's: it is what the model learns, the turns before it are the prompt.
Either may carry a label (`dataset.label_field`), which k-fold runs stratify by and score against.
Formats (JSON, JSONL, CSV, Parquet, a datasets folder) are data_formats.py's; skips and the report are
data_checks.py's, with the same reasons as for preference data.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Any, Literal

from llmdoctor.training.config import DatasetConfig
from llmdoctor.training.data import split_rows
from llmdoctor.training.data_checks import DataReport, token_count
from llmdoctor.training.data_formats import DataError, Record, read_records
from llmdoctor.training.data_rows import Message, RowInvalid, Text, parse_text, text_content


@dataclass(frozen=True)
class SftRow:
    """One example: the prompt (a string, or the chat turns before the answer) and the response to learn."""

    index: int  # 0-based position in the file
    prompt: Text
    response: Text  # a string, or the one final assistant message
    label: str | None = None

    def to_trl(self, chat: bool) -> dict[str, Any]:
        """TRL's prompt-completion layout, whose loss covers the completion only (SFTConfig.completion_only_loss):
        conversational with a chat template, plain strings without one."""
        if not chat:
            if not isinstance(self.prompt, str):
                raise DataError("model.base_model: the dataset holds chat messages but the tokenizer has no chat "
                                "template; set model.base_model to a tokenizer that has one, or use "
                                "instruction / response rows", field="model.base_model")
            return {"prompt": self.prompt, "completion": text_content(self.response)}
        return {"prompt": _messages(self.prompt, "user"), "completion": _messages(self.response, "assistant")}


@dataclass
class SftData:
    train: list[SftRow]
    validation: list[SftRow]
    report: DataReport

    @property
    def rows(self) -> list[SftRow]:
        return self.train + self.validation


@dataclass(frozen=True)
class SftSchema:
    kind: Literal["instruction", "messages"]
    fields: tuple[str, ...]  # the fields read, in order: (instruction, response) or (messages,)
    label: str | None


def load_sft(dataset: DatasetConfig, tokenizer: Any = None, *, seed: int = 42) -> SftData:
    """Checked rows of `dataset.path`, split into train / validation. Raises DataError for an unreadable file,
    missing fields (named, with the fields the file has), or when no valid row is left."""
    records = read_records(dataset.path, dataset.format, dataset.train_split)
    report = DataReport(source=str(dataset.path), method="sft", rows_read=len(records))
    if not records:
        raise DataError(f"dataset.path {dataset.path}: no rows in the file (split {dataset.train_split!r})",
                        report=report)
    rows = read_sft_rows(records, plan_sft_schema(records, dataset), tokenizer, dataset.max_length, report)
    if not rows:
        raise DataError(f"dataset.path {dataset.path}: no valid rows left\n{report.summary()}", report=report)
    train, validation = split_rows(rows, dataset.validation_fraction, seed)
    report.kept, report.train_size, report.validation_size = len(rows), len(train), len(validation)
    report.prompt_chars = fmean(len(text_content(row.prompt)) for row in rows)
    report.response_chars = fmean(len(text_content(row.response)) for row in rows)
    return SftData(train, validation, report)


def plan_sft_schema(records: list[Record], dataset: DatasetConfig) -> SftSchema:
    present = {str(name) for record in records for name in record}
    label = dataset.label_field
    if label is not None and label not in present:
        raise DataError(f"dataset.label_field: the rows have no field {label!r} (fields present: "
                        f"{', '.join(sorted(present))})", field="dataset.label_field")
    if dataset.messages_field in present:
        return SftSchema("messages", (dataset.messages_field,), label)
    wanted = {"dataset.instruction_field": dataset.instruction_field, "dataset.response_field": dataset.response_field}
    missing = {key: name for key, name in wanted.items() if name not in present}
    if missing:
        names = ", ".join(repr(name) for name in missing.values())
        keys = ", ".join(f"{key}: <column>" for key in missing)
        raise DataError("\n".join([
            f"dataset.path {dataset.path}: the rows have no field {names}",
            f"fields present: {', '.join(sorted(present)) or '(none)'}",
            f'expected rows like: {{"{dataset.instruction_field}": "...", "{dataset.response_field}": "..."}} or '
            f'{{"{dataset.messages_field}": [{{"role": "user", "content": "..."}}, {{"role": "assistant", '
            '"content": "..."}]}',
            f"if the file names these columns differently, map them in the config ({keys}, or "
            "dataset.messages_field)",
        ]), field=next(iter(missing)))
    return SftSchema("instruction", (dataset.instruction_field, dataset.response_field), label)


def read_sft_rows(records: list[Record], schema: SftSchema, tokenizer: Any, max_length: int,
                  report: DataReport) -> list[SftRow]:
    """Parse and check every record; each skipped one is counted under its reason (data_checks.SKIP_REASONS)."""
    kept, seen = [], set()
    for index, record in enumerate(records):
        try:
            row = parse_sft_row(record, index, schema)
        except RowInvalid as exc:
            report.skip("invalid", index, str(exc))
            continue
        reason = None
        if not text_content(row.prompt).strip() or not text_content(row.response).strip():
            reason = "empty"
        elif (row.prompt, row.response) in seen:
            reason = "duplicate"
        elif tokenizer is not None and (token_count(tokenizer, row.prompt, True)
                                        + token_count(tokenizer, row.response, False)) > max_length:
            reason = "too_long"
        if reason:
            report.skip(reason, index)
            continue
        seen.add((row.prompt, row.response))
        kept.append(row)
    return kept


def parse_sft_row(record: Record, index: int, schema: SftSchema) -> SftRow:
    label = _label(record, schema.label)
    if schema.kind == "instruction":
        instruction, response = (_field(record, name) for name in schema.fields)
        prompt = parse_text(instruction, schema.fields[0])
        answer = parse_text(response, schema.fields[1])
        if not isinstance(answer, str):
            raise RowInvalid(f"{schema.fields[1]}: expected the response as a string (chat turns go in "
                             f"a messages field)")
        return SftRow(index, prompt, answer, label)
    messages = parse_text(_field(record, schema.fields[0]), schema.fields[0])
    if isinstance(messages, str) or len(messages) < 2:
        raise RowInvalid(f"{schema.fields[0]}: expected a list of at least two {{role, content}} messages")
    if messages[-1].role != "assistant":
        raise RowInvalid(f"{schema.fields[0]}: the last message must be the assistant's (it is what the model "
                         f"learns), got role {messages[-1].role!r}")
    return SftRow(index, messages[:-1], (messages[-1],), label)


def _field(record: Record, name: str) -> Any:
    if name not in record:
        raise RowInvalid(f"missing field {name!r} (this row has: {', '.join(map(str, record)) or 'no fields'})")
    return record[name]


def _label(record: Record, name: str | None) -> str | None:
    if name is None:
        return None
    value = _field(record, name)
    if value is None or isinstance(value, (dict, list)):
        raise RowInvalid(f"{name}: expected a label (a string or number), got {value!r}")
    return str(value)


def _messages(text: Text, role: str) -> list[dict[str, str]]:
    if isinstance(text, str):
        return [{"role": role, "content": text}]
    return [{"role": m.role, "content": m.content} for m in text]


__all__ = ["Message", "SftData", "SftRow", "load_sft"]
