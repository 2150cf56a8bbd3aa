"""The SDK installs into a fresh venv on its own (httpx + pydantic) and imports without torch."""

import subprocess
import sys
from pathlib import Path

import pytest

CLIENT_PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "python"


@pytest.mark.slow
def test_sdk_installs_and_imports_in_a_fresh_venv_without_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(CLIENT_PACKAGE)],
                   check=True, timeout=300)
    probe = (
        "import importlib.util, sys, llmdoctor_client as c\n"
        "assert c.Client and c.AsyncClient and c.Guidance(doctors={'a': 1.0}).doctors[0].beta == 1.0\n"
        "assert importlib.util.find_spec('torch') is None, 'torch is installed'\n"
        "assert 'torch' not in sys.modules\n"
        "print(c.__file__)\n"
    )
    done = subprocess.run([python, "-c", probe], check=False, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(venv) in done.stdout  # the installed copy, not the source tree
