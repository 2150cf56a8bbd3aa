"""Append-only JSONL files that a kill may cut mid-line (synth rows, token rewards, batch results)."""

from __future__ import annotations

from pathlib import Path


def whole_lines(path: Path) -> str:
    """The file's whole lines ("" when it does not exist). A last line cut short by a killed writer
    is removed from the file too, so the next row appended starts on a line of its own."""
    if not path.is_file():
        return ""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    return data.decode("utf-8")
