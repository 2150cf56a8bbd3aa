"""`llmdoctor batch` files: reading request rows, and the result file's resume bookkeeping (no Ray)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmdoctor.server.batch.batch_files import (
    CHAT,
    COMPLETIONS,
    BatchFileError,
    BatchRequest,
    ResultFile,
    read_requests,
    result_row,
)

CHAT_ROW = {"id": "a", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
COMPLETION_ROW = {"id": 7, "prompt": "Once upon", "temperature": 0}


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_flat_rows_pick_the_endpoint_and_keep_the_other_fields_as_the_body(tmp_path):
    requests = read_requests(_jsonl(tmp_path / "in.jsonl", [CHAT_ROW, "", COMPLETION_ROW]))  # blank line skipped
    assert requests == [
        BatchRequest("a", CHAT, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
        BatchRequest("7", COMPLETIONS, {"prompt": "Once upon", "temperature": 0}),
    ]


def test_openai_batch_file_rows_are_read_too(tmp_path):
    row = {"custom_id": "r1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}
    assert read_requests(_jsonl(tmp_path / "in.jsonl", [row])) == [BatchRequest("r1", COMPLETIONS, {"prompt": "x"})]


def test_parquet_input_drops_the_nulls_parquet_fills_in(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "p", "prompt": "a", "max_tokens": 3},
                                         {"id": "q", "prompt": "b", "max_tokens": None}]), path)
    assert [r.body for r in read_requests(path)] == [{"prompt": "a", "max_tokens": 3}, {"prompt": "b"}]


@pytest.mark.parametrize(("rows", "message"), [
    (["{not json"], "line 1 is not JSON"),
    ([[1, 2]], "line 1: expected a JSON object, got list"),
    ([{"messages": []}], 'line 1: no "id"'),
    ([{"id": True, "prompt": "x"}], "id must be a non-empty string or an integer, got True"),
    ([{"id": "", "prompt": "x"}], "id must be a non-empty string"),
    ([{"id": "a", "max_tokens": 3}], 'expected "messages" (a chat request) or "prompt"'),
    ([CHAT_ROW, {**CHAT_ROW}], "line 2 repeats id 'a' (first at row 1)"),
    ([{"custom_id": "x", "url": "/v1/embeddings", "body": {}}], "url must be one of /v1/chat/completions"),
    ([{"custom_id": "x", "url": CHAT, "body": "hi"}], "body must be a JSON object"),
    ([], "the file has no rows"),
])
def test_bad_input_is_refused_naming_the_line(tmp_path, rows, message):
    path = _jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(BatchFileError) as error:
        read_requests(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_missing_input_and_broken_parquet_are_refused(tmp_path):
    with pytest.raises(BatchFileError, match="no such file"):
        read_requests(tmp_path / "absent.jsonl")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(BatchFileError, match="cannot read it as Parquet"):
        read_requests(tmp_path / "bad.parquet")


def test_jsonl_results_append_and_a_torn_last_line_is_cut_off(tmp_path):
    results = ResultFile(tmp_path / "out.jsonl")
    assert results.rows() == []
    results.append([result_row("a", {"x": 1}), result_row("b", error={"message": "m"})])
    with (tmp_path / "out.jsonl").open("a") as out:
        out.write('{"id": "c", "resp')  # a kill mid-write
    assert [r["id"] for r in results.rows()] == ["a", "b"]
    results.append([result_row("c", {"x": 3})])
    assert [r["id"] for r in results.rows()] == ["a", "b", "c"]  # c starts on a line of its own


def test_an_output_that_is_not_batch_results_is_refused(tmp_path):
    path = _jsonl(tmp_path / "out.jsonl", [{"prompt": "synth row"}])
    with pytest.raises(BatchFileError, match="line 1 is not a batch result; pick another --output"):
        ResultFile(path).rows()


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_drop_errors_keeps_the_answers_only(tmp_path, name):
    results = ResultFile(tmp_path / name)
    results.append([result_row("a", {"x": 1}), result_row("b", error={"message": "timeout", "code": 504})])
    results.append([result_row("c", {"x": 3})])
    assert results.drop_errors() == 1
    assert results.rows() == [{"id": "a", "response": {"x": 1}}, {"id": "c", "response": {"x": 3}}]
    assert results.drop_errors() == 0


def test_parquet_results_are_a_folder_of_parts_readable_as_one_table(tmp_path):
    results = ResultFile(tmp_path / "out.parquet")
    results.append([result_row("a", {"choices": [{"text": "hi"}]})])
    results.append([result_row("b", error={"message": "bad", "param": "max_tokens"})])
    assert sorted(p.name for p in (tmp_path / "out.parquet").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    table = pq.read_table(tmp_path / "out.parquet")  # pyarrow reads the folder as one dataset
    assert table.column_names == ["id", "response", "error"] and table.num_rows == 2
    assert results.rows() == [{"id": "a", "response": {"choices": [{"text": "hi"}]}},
                              {"id": "b", "error": {"message": "bad", "param": "max_tokens"}}]
