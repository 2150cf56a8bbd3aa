"""training/data*.py: every file format, chat rows, GDPO ranking, bad-data reports and errors, the split."""

import csv
import json
from pathlib import Path

import pytest

from llmdoctor.training.config import DatasetConfig
from llmdoctor.training.data import load_preferences, split_rows
from llmdoctor.training.data_formats import DataError
from llmdoctor.training.data_rows import Message, PreferenceRow

PAIRS = [
    {"prompt": "Say hi.", "chosen": "Hello there!", "rejected": "Go away."},
    {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A rock."},
    {"prompt": "2+2?", "chosen": "4.", "rejected": "5."},
]
RANKED = [{"prompt": "Say hi.", "responses": ["Hello there!", "Hi.", "Hm.", "Go away."]}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config(path: Path, **fields) -> DatasetConfig:
    return DatasetConfig(path=path, **fields)


def load(path: Path, method: str = "dpo", tokenizer=None, group_size: int = 4, **fields):
    return load_preferences(config(path, **fields), method, tokenizer, group_size=group_size)


def load_error(path: Path, method: str = "dpo", **fields) -> DataError:
    with pytest.raises(DataError) as caught:
        load(path, method, **fields)
    return caught.value


def pairs_of(data) -> list[tuple]:
    return [(row.prompt, row.chosen, row.rejected) for row in data.rows]


EXPECTED_PAIRS = [(row["prompt"], row["chosen"], row["rejected"]) for row in PAIRS]


@pytest.fixture(scope="module")
def tokenizer(embedded_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model.folder)


# ---- formats ------------------------------------------------------------------------------------


def test_load_preferences_json_list(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PAIRS))
    assert pairs_of(load(path)) == EXPECTED_PAIRS


def test_load_preferences_json_splits_picks_train_split(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"dev": PAIRS[:1], "main": PAIRS}))
    assert pairs_of(load(path, train_split="main")) == EXPECTED_PAIRS


def test_load_preferences_json_columns(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({key: [row[key] for row in PAIRS] for key in PAIRS[0]}))
    assert pairs_of(load(path)) == EXPECTED_PAIRS


def test_load_preferences_json_unknown_split_lists_splits(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"dev": PAIRS, "test": PAIRS}))
    error = load_error(path)
    assert "dataset.train_split 'train' not in" in error.message and "its splits: dev, test" in error.message
    assert error.field == "dataset.train_split"


def test_load_preferences_json_syntax_error_names_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n{"prompt": "a",,}\n]')
    assert "not valid JSON at line 2" in load_error(path).message


def test_load_preferences_jsonl(tmp_path):
    assert pairs_of(load(write_jsonl(tmp_path / "p.jsonl", PAIRS))) == EXPECTED_PAIRS


def test_load_preferences_jsonl_bad_line_names_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n{oops\n")
    assert "line 2 is not valid JSON" in load_error(path).message


def test_load_preferences_csv(tmp_path):
    path = tmp_path / "p.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerows(PAIRS)
    assert pairs_of(load(path)) == EXPECTED_PAIRS


def test_load_preferences_csv_json_cells_parsed(tmp_path):
    path = tmp_path / "p.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "responses", "scores"])
        writer.writerow([json.dumps([{"role": "user", "content": "Hi?"}]), json.dumps(["meh", "great"]), "[0.1, 0.9]"])
    row = load(path, "gdpo", scores_field="scores").rows[0]
    assert row.prompt == (Message("user", "Hi?"),)
    assert row.responses == ("great", "meh")


def test_load_preferences_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(PAIRS), path)
    assert pairs_of(load(path)) == EXPECTED_PAIRS


def test_load_preferences_datasets_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list(PAIRS).save_to_disk(str(tmp_path / "saved"))
    assert pairs_of(load(tmp_path / "saved")) == EXPECTED_PAIRS


def test_load_preferences_datasets_dict_folder_picks_split(tmp_path):
    import datasets

    splits = {"train": datasets.Dataset.from_list(PAIRS), "test": datasets.Dataset.from_list(PAIRS[:1])}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    assert len(load(tmp_path / "saved", train_split="test").rows) == 1


def test_load_preferences_unsupported_format_lists_supported(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("prompt: hi\n")
    error = load_error(path)
    assert "unsupported format '.txt'" in error.message
    for name in ("json", "jsonl", "csv", "parquet", "datasets"):
        assert f"{name}: " in error.message
    assert error.field == "dataset.format"


def test_load_preferences_explicit_format_overrides_suffix(tmp_path):
    path = write_jsonl(tmp_path / "p.txt", PAIRS)
    assert pairs_of(load(path, format="jsonl")) == EXPECTED_PAIRS


def test_load_preferences_missing_file_raises(tmp_path):
    error = load_error(tmp_path / "nope.jsonl")
    assert "no such file or folder" in error.message and error.field == "dataset.path"


def test_load_preferences_folder_not_saved_dataset_raises(tmp_path):
    (tmp_path / "folder").mkdir()
    assert "not a folder written by datasets' save_to_disk" in load_error(tmp_path / "folder").message


def test_load_preferences_datasets_format_on_file_raises(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    assert "reads a save_to_disk folder" in load_error(path, format="datasets").message


# ---- rows and fields ----------------------------------------------------------------------------


def test_load_preferences_chat_messages_kept_as_messages(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": {"role": "assistant", "content": "No."},
    }
    kept = load(write_jsonl(tmp_path / "p.jsonl", [row])).rows[0]
    assert kept.prompt == (Message("system", "Be kind."), Message("user", "Hi?"))
    assert kept.chosen == (Message("assistant", "Hello!"),) and kept.rejected == (Message("assistant", "No."),)
    assert kept.to_record()["chosen"] == [{"role": "assistant", "content": "Hello!"}]


def test_load_preferences_missing_field_names_it_and_shows_present_and_expected(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "Hi?", "good": "Hello!", "bad": "No."}])
    message = load_error(path).message
    assert "the rows have no field 'prompt', 'chosen', 'rejected'" in message
    assert "fields present: bad, good, question" in message
    assert 'expected rows like: {"prompt": "...", "chosen": "...", "rejected": "..."}' in message


def test_load_preferences_missing_field_suggests_config_key(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?", "good": "Hello!", "rejected": "No."}])
    error = load_error(path)
    assert "dataset.chosen_field: <column>" in error.message and error.field == "dataset.chosen_field"


def test_load_preferences_renamed_fields_mapped(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "Hi?", "good": "Hello!", "bad": "No."}])
    data = load(path, prompt_field="q", chosen_field="good", rejected_field="bad")
    assert pairs_of(data) == [("Hi?", "Hello!", "No.")]


def test_load_preferences_dpo_on_ranked_file_suggests_gdpo(tmp_path):
    message = load_error(write_jsonl(tmp_path / "p.jsonl", RANKED)).message
    assert "use alignment.method: gdpo" in message


def test_load_preferences_gdpo_missing_responses_shows_ranked_row(tmp_path):
    message = load_error(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?"}]), "gdpo").message
    assert "no field 'responses'" in message
    assert 'expected rows like: {"prompt": "...", "responses": ["best", "...", "worst"]}' in message


def test_load_preferences_wrong_type_counted_invalid(tmp_path):
    rows = PAIRS + [{"prompt": "Hi?", "chosen": 42, "rejected": "No."}]
    report = load(write_jsonl(tmp_path / "p.jsonl", rows)).report
    assert report.skipped["invalid"].examples == [3]
    assert (
        "chosen: expected a string or a list of {role, content} messages, got 42"
        in report.skipped["invalid"].first_detail
    )


def test_load_preferences_row_missing_field_counted_invalid(tmp_path):
    rows = PAIRS + [{"prompt": "Hi?", "chosen": "Hello!"}]
    invalid = load(write_jsonl(tmp_path / "p.jsonl", rows)).report.skipped["invalid"]
    assert invalid.examples == [3] and "missing field 'rejected'" in invalid.first_detail


# ---- bad rows: counted and reported, never dropped silently -------------------------------------


def test_load_preferences_empty_rows_counted(tmp_path):
    rows = PAIRS + [{"prompt": " ", "chosen": "a", "rejected": "b"}, {"prompt": "x", "chosen": "", "rejected": "b"}]
    data = load(write_jsonl(tmp_path / "p.jsonl", rows))
    assert (data.report.count("empty"), data.report.skipped["empty"].examples) == (2, [3, 4])
    assert len(data.rows) == 3


def test_load_preferences_duplicates_counted(tmp_path):
    data = load(write_jsonl(tmp_path / "p.jsonl", PAIRS + PAIRS[:2]))
    assert (data.report.count("duplicate"), data.report.skipped["duplicate"].examples) == (2, [3, 4])
    assert pairs_of(data) == EXPECTED_PAIRS


def test_load_preferences_chosen_equals_rejected_counted(tmp_path):
    rows = PAIRS + [{"prompt": "x", "chosen": "same", "rejected": "same"}]
    assert load(write_jsonl(tmp_path / "p.jsonl", rows)).report.skipped["identical"].examples == [3]


def test_load_preferences_overlong_rows_counted_with_tokenizer(tmp_path, tokenizer):
    rows = PAIRS + [{"prompt": "word " * 40, "chosen": "fine", "rejected": "word " * 40}]
    data = load(write_jsonl(tmp_path / "p.jsonl", rows), tokenizer=tokenizer, max_length=32)
    assert data.report.skipped["too_long"].examples == [3]
    assert len(data.rows) == 3


def test_load_preferences_overlong_not_checked_without_tokenizer(tmp_path):
    rows = [{"prompt": "word " * 40, "chosen": "fine", "rejected": "word " * 40}]
    assert load(write_jsonl(tmp_path / "p.jsonl", rows), max_length=32).report.count("too_long") == 0


def test_load_preferences_examples_capped_at_five(tmp_path):
    rows = PAIRS[:1] + [{"prompt": "", "chosen": "a", "rejected": "b"}] * 7
    skipped = load(write_jsonl(tmp_path / "p.jsonl", rows)).report.skipped["empty"]
    assert (skipped.count, skipped.examples) == (7, [1, 2, 3, 4, 5])


def test_load_preferences_no_valid_rows_raises_with_report(tmp_path):
    rows = [{"prompt": "", "chosen": "a", "rejected": "b"}, {"prompt": "x", "chosen": "s", "rejected": "s"}]
    error = load_error(write_jsonl(tmp_path / "p.jsonl", rows))
    assert "no valid rows left" in error.message and "empty: 1" in error.message and "identical: 1" in error.message
    assert error.report.rows_read == 2 and error.report.kept == 0


def test_load_preferences_empty_file_raises(tmp_path):
    (tmp_path / "p.jsonl").write_text("")
    assert "no rows in the file" in load_error(tmp_path / "p.jsonl").message


# ---- GDPO: ranked groups ------------------------------------------------------------------------


def test_load_preferences_gdpo_ranked_best_first(tmp_path):
    row = load(write_jsonl(tmp_path / "p.jsonl", RANKED), "gdpo").rows[0]
    assert row.responses == ("Hello there!", "Hi.", "Hm.", "Go away.")
    assert (row.chosen, row.rejected) == ("Hello there!", "Go away.")


def test_load_preferences_gdpo_scores_rank_descending(tmp_path):
    rows = [{"prompt": "Hi?", "responses": ["ok", "bad", "great"], "scores": [0.5, -1, 2]}]
    row = load(write_jsonl(tmp_path / "p.jsonl", rows), "gdpo", scores_field="scores").rows[0]
    assert row.responses == ("great", "ok", "bad")


def test_truncated_flags_from_data_synth_follow_their_responses(tmp_path):
    rows = [{"prompt": "Hi?", "responses": ["ok", "bad", "great"], "scores": [0.5, -1, 2],
             "meta": {"truncated": [True, False, False]}},
            {"prompt": "Yo?", "chosen": "a", "rejected": "b", "meta": {"truncated": [False, True]}},
            {"prompt": "No?", "chosen": "a", "rejected": "b", "meta": {"truncated": "junk"}}]
    ranked = load(write_jsonl(tmp_path / "r.jsonl", rows[:1]), "gdpo", scores_field="scores").rows[0]
    assert ranked.responses == ("great", "ok", "bad") and ranked.truncated == (False, True, False)
    pairwise = load(write_jsonl(tmp_path / "p.jsonl", rows[1:]), "dpo").rows
    assert pairwise[0].truncated == (False, True) and pairwise[0].to_record()["truncated"] == [False, True]
    assert pairwise[1].truncated is None and pairwise[1].to_record()["truncated"] == [False, False]


def test_load_preferences_gdpo_score_ties_keep_input_order(tmp_path):
    rows = [{"prompt": "Hi?", "responses": ["a", "b", "c", "d"], "scores": [1, 2, 1, 2]}]
    row = load(write_jsonl(tmp_path / "p.jsonl", rows), "gdpo", scores_field="scores").rows[0]
    assert row.responses == ("b", "d", "a", "c")


def test_load_preferences_gdpo_scores_mismatch_invalid(tmp_path):
    rows = RANKED + [{"prompt": "x", "responses": ["a", "b"], "scores": [1]}]
    rows[0] = dict(rows[0], scores=[4, 3, 2, 1])
    report = load(write_jsonl(tmp_path / "p.jsonl", rows), "gdpo", scores_field="scores").report
    assert (
        report.skipped["invalid"].examples == [1] and "one score per response" in report.skipped["invalid"].first_detail
    )


def test_load_preferences_gdpo_fewer_than_two_responses_invalid(tmp_path):
    rows = RANKED + [{"prompt": "x", "responses": ["only one"]}, {"prompt": "y", "responses": []}]
    report = load(write_jsonl(tmp_path / "p.jsonl", rows), "gdpo").report
    assert report.skipped["invalid"].examples == [1, 2]
    assert "a group needs K >= 2" in report.skipped["invalid"].first_detail


def test_load_preferences_gdpo_long_group_keeps_top_and_worst(tmp_path):
    rows = [{"prompt": "Hi?", "responses": ["r1", "r2", "r3", "r4", "r5", "r6"]}]
    data = load(write_jsonl(tmp_path / "p.jsonl", rows), "gdpo", group_size=3)
    assert data.rows[0].responses == ("r1", "r2", "r6")
    assert data.report.truncated == 1 and data.report.k_counts == {6: 1}


def test_load_preferences_gdpo_short_group_kept_whole(tmp_path):
    rows = [{"prompt": "Hi?", "responses": ["r1", "r2", "r3"]}]
    assert load(write_jsonl(tmp_path / "p.jsonl", rows), "gdpo", group_size=4).rows[0].responses == ("r1", "r2", "r3")


def test_load_preferences_gdpo_pairwise_file_is_k2(tmp_path):
    data = load(write_jsonl(tmp_path / "p.jsonl", PAIRS), "gdpo")
    assert data.rows[0].responses == ("Hello there!", "Go away.") and data.report.k_counts == {2: 3}


# ---- split and summary --------------------------------------------------------------------------


def make_rows(count: int) -> list[PreferenceRow]:
    return [PreferenceRow(i, f"p{i}", (f"good {i}", f"bad {i}")) for i in range(count)]


def test_split_rows_same_seed_same_split():
    assert split_rows(make_rows(50), 0.2, seed=7) == split_rows(make_rows(50), 0.2, seed=7)


def test_split_rows_other_seed_other_split():
    assert split_rows(make_rows(50), 0.2, seed=7)[1] != split_rows(make_rows(50), 0.2, seed=8)[1]


def test_split_rows_sizes_and_file_order():
    train, validation = split_rows(make_rows(50), 0.2, seed=7)
    assert (len(train), len(validation)) == (40, 10)
    assert [row.index for row in validation] == sorted(row.index for row in validation)
    assert {row.index for row in train} | {row.index for row in validation} == set(range(50))


def test_split_rows_small_fraction_keeps_one_for_validation():
    assert [len(part) for part in split_rows(make_rows(3), 0.01, seed=0)] == [2, 1]


def test_load_preferences_validation_fraction_splits(tmp_path):
    report = load(write_jsonl(tmp_path / "p.jsonl", make_records(10)), validation_fraction=0.3).report
    assert (report.train_size, report.validation_size, report.kept) == (7, 3, 10)


def make_records(count: int) -> list[dict]:
    return [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(count)]


def test_data_report_summary_lists_reads_skips_and_k(tmp_path):
    rows = RANKED + [{"prompt": "", "responses": ["a", "b"]}, {"prompt": "x", "responses": ["a"]}]
    summary = load(write_jsonl(tmp_path / "p.jsonl", rows), "gdpo").report.summary()
    for text in (
        "rows read: 3",
        "rows kept: 1",
        "rows skipped: 2",
        "invalid: 1",
        "(rows 2;",
        "empty: 1",
        "responses per prompt: K=4: 1",
        "train / validation: 1 / 0",
        "mean prompt length: 7.0 chars",
    ):
        assert text in summary


def test_data_report_summary_token_lengths_with_tokenizer(tmp_path, tokenizer):
    summary = load(write_jsonl(tmp_path / "p.jsonl", PAIRS), tokenizer=tokenizer).report.summary()
    assert "tokens" in summary.split("mean prompt length:")[1]
