"""`llmdoctor batch` files: the request rows it reads and the result rows it writes.

Input (JSONL, or Parquet by suffix), one request per row, keyed by a unique `id`:
- flat:   {"id": "q1", "messages": [...], "max_tokens": 64, ...}  -> /v1/chat/completions
          {"id": "q2", "prompt": "Once upon", ...}                -> /v1/completions
- OpenAI's batch-file shape: {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
          "body": {...}} (what `openai` batch files and vLLM's `run-batch` read).
A row's other fields are the endpoint's request fields (guidance included); the API checks them,
per row, when the row runs.

Output: one row per id, {"id", "response": <the endpoint's JSON>} or {"id", "error": {"message",
"type", "param", "code"}} (the API's error body). JSONL is appended and flushed per result batch;
a `.parquet` output is a folder of part files (Ray Data's convention; pyarrow, pandas and Ray read
it as one table), one part per result batch, each written under a temporary name and renamed. So a
killed job leaves only whole rows behind (a torn last JSONL line is cut off on the next start) and
a rerun with the same --output skips the ids already there: nothing lost, nothing twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmdoctor.server.jsonl_journal import whole_lines

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
ENDPOINTS = (CHAT, COMPLETIONS)


class BatchFileError(ValueError):
    """A file the job cannot start from; the message names the file, the line and what was expected."""


@dataclass(frozen=True)
class BatchRequest:
    id: str
    endpoint: str  # CHAT or COMPLETIONS
    body: dict[str, Any]


# ---------------------------------------------------------------- input


def read_requests(path: Path) -> list[BatchRequest]:
    """Every request of the input file, checked for what the job needs before it starts: an object
    per row, a unique string (or integer) id, an endpoint. Request fields are checked per row later."""
    if not path.is_file():
        raise BatchFileError(f"--input {path}: no such file")
    records = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    requests: list[BatchRequest] = []
    seen: dict[str, int] = {}
    for where, record in records:
        request = _request_of(record, f"--input {path}: {where}")
        if request.id in seen:
            raise BatchFileError(f"--input {path}: {where} repeats id {request.id!r} (first at row {seen[request.id]}); "
                                 "ids must be unique, results are keyed by them")
        seen[request.id] = len(requests) + 1
        requests.append(request)
    if not requests:
        raise BatchFileError(f"--input {path}: the file has no rows")
    return requests


def _read_jsonl(path: Path) -> Iterable[tuple[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise BatchFileError(f"--input {path}: line {number} is not JSON ({exc.msg})") from None
    return rows


def _read_parquet(path: Path) -> Iterable[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's own error types
        raise BatchFileError(f"--input {path}: cannot read it as Parquet: {exc}") from None
    # Parquet fills a field a row lacks with null: drop those so the API sees the field as unset.
    return [(f"row {n}", {k: v for k, v in row.items() if v is not None})
            for n, row in enumerate(table.to_pylist(), 1)]


def _request_of(record: Any, where: str) -> BatchRequest:
    if not isinstance(record, dict):
        raise BatchFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "custom_id" in record:  # OpenAI's batch-file shape
        body, url = record.get("body"), record.get("url")
        if url not in ENDPOINTS:
            raise BatchFileError(f"{where}: url must be one of {', '.join(ENDPOINTS)}, got {url!r}")
        if not isinstance(body, dict):
            raise BatchFileError(f"{where}: body must be a JSON object (the request)")
        return BatchRequest(_id_of(record["custom_id"], where, "custom_id"), url, body)
    if "id" not in record:
        raise BatchFileError(f'{where}: no "id" (each row needs a unique id; results are keyed by it)')
    body = {k: v for k, v in record.items() if k != "id"}
    if "messages" in body:
        endpoint = CHAT
    elif "prompt" in body:
        endpoint = COMPLETIONS
    else:
        raise BatchFileError(f'{where}: expected "messages" (a chat request) or "prompt" (a completion request)')
    return BatchRequest(_id_of(record["id"], where, "id"), endpoint, body)


def _id_of(value: Any, where: str, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise BatchFileError(f"{where}: {field} must be a non-empty string or an integer, got {value!r}")
    return str(value)


# ---------------------------------------------------------------- output


def result_row(request_id: str, response: dict | None = None, error: dict | None = None) -> dict[str, Any]:
    return {"id": request_id, "response": response} if error is None else {"id": request_id, "error": error}


class ResultFile:
    """The output: which ids it holds, and appending whole result rows to it (module doc)."""

    def __init__(self, path: Path):
        self.path = path
        self.parquet = path.suffix == ".parquet"

    def rows(self) -> list[dict[str, Any]]:
        """Every whole row already written (cuts a torn JSONL tail off first)."""
        if self.parquet:
            return self._parquet_rows()
        if self.path.exists() and not self.path.is_file():
            raise BatchFileError(f"--output {self.path}: not a file (a .jsonl output is one file)")
        rows = []
        for number, line in enumerate(whole_lines(self.path).splitlines(), 1):  # a torn row is redone
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or "id" not in row:
                raise BatchFileError(f"--output {self.path}: line {number} is not a batch result; "
                                     "pick another --output")
            rows.append(row)
        return rows

    def drop_errors(self) -> int:
        """Remove the error rows (--retry-errors), so their ids run again; returns how many."""
        rows = self.rows()
        kept = [row for row in rows if "error" not in row]
        if len(kept) == len(rows):
            return 0
        if self.parquet:
            for part in self._parts():
                part.unlink()
            self.append(kept)
        else:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        return len(rows) - len(kept)

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.parquet:
            self._write_part(rows)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            out.flush()
            os.fsync(out.fileno())

    # Parquet: rows keep response/error as JSON text, so every part has the same two-column schema
    # whatever the endpoint returned.
    def _parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet")) if self.path.is_dir() else []

    def _parquet_rows(self) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        if self.path.exists() and not self.path.is_dir():
            raise BatchFileError(f"--output {self.path}: not a folder (a .parquet output is a folder of parts)")
        rows = []
        for part in self._parts():
            for row in pq.read_table(part).to_pylist():
                out = {"id": row["id"]}
                out.update({"error": json.loads(row["error"])} if row.get("error") else
                           {"response": json.loads(row["response"])})
                rows.append(out)
        return rows

    def _write_part(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path.mkdir(parents=True, exist_ok=True)
        parts = self._parts()
        number = int(parts[-1].stem.removeprefix("part-")) + 1 if parts else 0
        text = pa.string()  # stated: a part of only errors must not get a null-typed "response" column
        table = pa.table({
            "id": pa.array([row["id"] for row in rows], text),
            "response": pa.array([json.dumps(row["response"]) if "response" in row else None for row in rows], text),
            "error": pa.array([json.dumps(row["error"]) if "error" in row else None for row in rows], text),
        })
        final = self.path / f"part-{number:05d}.parquet"
        tmp = self.path / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
