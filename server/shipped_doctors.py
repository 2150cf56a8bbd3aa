"""The doctors shipped with the embedded default, and which doctors a server loads at start.

`server/doctors/<name>/` holds a doctor made by `llmdoctor recipe` (its llmdoctor.json records the
command, the data, the seed and its eval row), stored in bfloat16: the LoRA, its config and
llmdoctor.json, nothing the server does not read. They sit on the embedded SmolLM2-135M-Instruct,
so a server on another patient (or another doctor base) does not load them.
"""

from __future__ import annotations

from pathlib import Path

from llmdoctor.server.adapter_folders import METADATA_FILE
from llmdoctor.server.config import NamedPath, ServerSettings
from llmdoctor.server.model_store import EMBEDDED

SHIPPED_DIR = Path(__file__).parent / "doctors"


def shipped_doctors() -> list[NamedPath]:
    """Every doctor folder in the package, by name."""
    if not SHIPPED_DIR.is_dir():
        return []
    folders = sorted(p for p in SHIPPED_DIR.iterdir() if (p / METADATA_FILE).is_file())
    return [NamedPath(name=p.name, path=p) for p in folders]


def on_embedded_default(settings: ServerSettings) -> bool:
    return settings.model in (None, "", EMBEDDED) and settings.doctor_base in (None, "", EMBEDDED)


def startup_doctors(settings: ServerSettings) -> list[tuple[str, NamedPath]]:
    """(flag, NAME=PATH) of each doctor to load at start: --doctor's, then the shipped ones.

    The shipped ones come with --default-doctors (the default) on the embedded default; a --doctor
    of the same name replaces the shipped one.
    """
    given = [("--doctor", entry) for entry in settings.doctor]
    if not (settings.default_doctors and on_embedded_default(settings)):
        return given
    taken = {entry.name for entry in settings.doctor}
    return given + [("--default-doctors", entry) for entry in shipped_doctors() if entry.name not in taken]
