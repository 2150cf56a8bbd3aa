"""Read a preference file into plain records (one dict per row), whatever its format.

Formats: JSON (a list of objects, `{split: [objects]}`, or columns `{field: [values]}`), JSONL, CSV
(a cell holding a JSON list or object is parsed, so chat messages and score lists survive), Parquet,
and a folder written by `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk`.
Nothing here knows about preferences.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llmdoctor.training.config import ConfigError

SUPPORTED_FORMATS = {
    "json": ".json (a list of objects, {split: [objects]} or {column: [values]})",
    "jsonl": ".jsonl (one object per line)",
    "csv": ".csv (a header row; JSON lists in cells are parsed)",
    "parquet": ".parquet",
    "datasets": "a folder written by datasets' save_to_disk (Dataset or DatasetDict)",
}
_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}

Record = dict[str, Any]


class DataError(ConfigError):
    """The preference data cannot be used. `report` (a DataReport) is set when rows were read."""

    def __init__(self, message: str, field: str | None = "dataset.path", report: Any = None):
        super().__init__(message, field)
        self.report = report


def supported_formats_text() -> str:
    return "; ".join(f"{name}: {what}" for name, what in SUPPORTED_FORMATS.items())


def detect_format(path: Path) -> str:
    """The format of `path` from its suffix (or a folder = datasets). Raises DataError if unknown."""
    if path.is_dir():
        return "datasets"
    if path.suffix.lower() in _SUFFIXES:
        return _SUFFIXES[path.suffix.lower()]
    raise DataError(
        f"dataset.path {path}: unsupported format {path.suffix or '(no suffix)'!r}; supported: "
        f"{supported_formats_text()}. Set dataset.format to read a file with another suffix",
        field="dataset.format",
    )


def read_records(path: Path, data_format: str = "auto", split: str = "train") -> list[Record]:
    """All rows of the file as dicts, in file order. `split` picks a split of split-keyed data."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"dataset.path {path}: no such file or folder")
    data_format = detect_format(path) if data_format == "auto" else data_format
    reader = _READERS.get(data_format)
    if reader is None:
        raise DataError(
            f"dataset.format {data_format!r} unknown; supported: {supported_formats_text()}", "dataset.format"
        )
    if data_format != "datasets" and path.is_dir():
        raise DataError(f"dataset.path {path} is a folder, but dataset.format is {data_format!r} (a file format)")
    if data_format == "datasets" and not path.is_dir():
        raise DataError(f"dataset.path {path} is a file, but dataset.format 'datasets' reads a save_to_disk folder")
    try:
        return reader(path, split)
    except UnicodeDecodeError:
        raise DataError(f"dataset.path {path}: not UTF-8 text (is dataset.format {data_format!r} right?)") from None


def _read_json(path: Path, split: str) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DataError(f"dataset.path {path}: not valid JSON at {where}: {exc.msg}") from None
    if isinstance(data, dict) and data and all(isinstance(rows, list) for rows in data.values()):
        data = _columns_to_rows(data, path) if _is_columnar(data) else _pick_split(data, split, path)
    if not isinstance(data, list):
        raise DataError(
            f"dataset.path {path}: expected a JSON list of row objects or {{split: [rows]}}, "
            f"got a {type(data).__name__}"
        )
    return _objects_only(data, path)


def _is_columnar(data: dict[str, list]) -> bool:
    """`{"prompt": [...], "chosen": [...]}` (datasets' to_dict) rather than `{split: [row objects]}`."""
    first = next((rows[0] for rows in data.values() if rows), None)
    return first is not None and not isinstance(first, dict)


def _columns_to_rows(data: dict[str, list], path: Path) -> list[Record]:
    lengths = {len(column) for column in data.values()}
    if len(lengths) != 1:
        sizes = ", ".join(f"{name}: {len(column)}" for name, column in data.items())
        raise DataError(f"dataset.path {path}: JSON columns have different lengths ({sizes})")
    return [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]


def _read_jsonl(path: Path, split: str) -> list[Record]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                where = f"line {number} is not valid JSON (column {exc.colno})"
                raise DataError(f"dataset.path {path}: {where}: {exc.msg}") from None
    return _objects_only(rows, path)


def _read_csv(path: Path, split: str) -> list[Record]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [{key: _json_cell(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _json_cell(value: str | None) -> Any:
    """A CSV cell that holds a JSON list or object (chat messages, scores) becomes that value."""
    text = (value or "").strip()
    if text[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return value


def _read_parquet(path: Path, split: str) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"dataset.path {path}: not a readable Parquet file ({exc})") from None


def _read_datasets_folder(path: Path, split: str) -> list[Record]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise DataError(f"dataset.path {path}: not a folder written by datasets' save_to_disk ({exc})") from None
    if isinstance(data, datasets.DatasetDict):
        data = _pick_split(dict(data), split, path)
    return data.to_list()


def _pick_split(splits: dict[str, Any], split: str, path: Path) -> Any:
    if split not in splits:
        raise DataError(
            f"dataset.train_split {split!r} not in {path}; its splits: {', '.join(splits)}", field="dataset.train_split"
        )
    return splits[split]


def _objects_only(rows: list[Any], path: Path) -> list[Record]:
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(
                f"dataset.path {path}: row {index} is a {type(row).__name__}, expected an object with named fields"
            )
    return rows


_READERS = {
    "json": _read_json,
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "datasets": _read_datasets_folder,
}
