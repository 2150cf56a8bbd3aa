"""SFT data (training/sft_data.py): both layouts, every file format, named errors for missing fields, and every
skipped row counted under its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmdoctor.training.config import DatasetConfig
from llmdoctor.training.data_formats import DataError
from llmdoctor.training.sft_data import load_sft

ROWS = [{"instruction": f"Question {i}?", "response": f"Answer {i}.", "label": ["a", "b"][i % 2]} for i in range(10)]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
def test_instruction_rows_load_from_every_format(tmp_path, suffix):
    import pandas as pd

    path = tmp_path / f"rows.{suffix}"
    frame = pd.DataFrame(ROWS)
    {"jsonl": lambda: _jsonl(path, ROWS), "json": lambda: path.write_text(json.dumps(ROWS)),
     "csv": lambda: frame.to_csv(path, index=False), "parquet": lambda: frame.to_parquet(path)}[suffix]()
    data = load_sft(DatasetConfig(path=path, label_field="label", validation_fraction=0.2), seed=0)
    assert (len(data.train), len(data.validation)) == (8, 2)
    row = sorted(data.rows, key=lambda r: r.index)[3]
    assert (row.prompt, row.response, row.label) == ("Question 3?", "Answer 3.", "b")
    assert row.to_trl(chat=True) == {"prompt": [{"role": "user", "content": "Question 3?"}],
                                     "completion": [{"role": "assistant", "content": "Answer 3."}]}
    assert row.to_trl(chat=False) == {"prompt": "Question 3?", "completion": "Answer 3."}


def test_chat_rows_learn_the_last_assistant_turn(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."}]
    data = load_sft(DatasetConfig(path=_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])))
    (row,) = data.rows
    assert row.to_trl(chat=True) == {"prompt": messages[:2], "completion": messages[2:]}


def test_missing_fields_are_named_with_the_fields_the_file_has(tmp_path):
    path = _jsonl(tmp_path / "rows.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as caught:
        load_sft(DatasetConfig(path=path))
    assert caught.value.field == "dataset.instruction_field"
    assert "'instruction', 'response'" in caught.value.message and "answer, question" in caught.value.message
    mapped = load_sft(DatasetConfig(path=path, instruction_field="question", response_field="answer"))
    assert mapped.rows[0].response == "a"


def test_a_missing_label_field_is_named(tmp_path):
    with pytest.raises(DataError) as caught:
        load_sft(DatasetConfig(path=_jsonl(tmp_path / "rows.jsonl", ROWS), label_field="topic"))
    assert caught.value.field == "dataset.label_field" and "'topic'" in caught.value.message


def test_chat_rows_without_a_final_assistant_turn_are_invalid(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [good, {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}]
    report = load_sft(DatasetConfig(path=_jsonl(tmp_path / "chat.jsonl", rows))).report
    assert report.kept == 1 and report.count("invalid") == 2
    assert "last message must be the assistant's" in report.skipped["invalid"].first_detail or \
        "at least two" in report.skipped["invalid"].first_detail


def test_instruction_file_skips_reasons(tmp_path, embedded_model):
    from transformers import AutoTokenizer

    rows = ROWS[:3] + [{"instruction": "", "response": "x"}, ROWS[0], {"instruction": "q", "response": [1]},
                       {"instruction": "long " * 400, "response": "x"}]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model.folder)
    report = load_sft(DatasetConfig(path=_jsonl(tmp_path / "rows.jsonl", rows), max_length=64), tokenizer).report
    assert {reason: report.count(reason) for reason in ("empty", "duplicate", "invalid", "too_long")} == {
        "empty": 1, "duplicate": 1, "invalid": 1, "too_long": 1}
    assert report.kept == 3 and "rows skipped: 4" in report.summary()


def test_no_valid_row_left_is_an_error_with_the_report(tmp_path):
    with pytest.raises(DataError) as caught:
        load_sft(DatasetConfig(path=_jsonl(tmp_path / "rows.jsonl", [{"instruction": "", "response": ""}])))
    assert "no valid rows left" in caught.value.message and "empty: 1" in caught.value.message
