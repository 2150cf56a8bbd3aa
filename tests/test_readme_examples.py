"""Every example in README.md and clients/python/README.md that talks to a server, run against a live
`llmdoctor serve` on the embedded default (with its shipped doctors).

Examples are fenced ```bash / ```python blocks: a bash block talks to a server when it names
`localhost:8000` / `127.0.0.1:8000`, a Python block when it makes or uses a client. Each runs as it
is written, in its own process, with the port swapped for the test server's; curl fails on any
non-2xx answer, a Python client raises on one. The test server stands in for the `llmdoctor serve`
line a block may start with, and adds what the "Adapters, hot" example brings itself: an
--adapter-root holding `cheerful`, `terse` and `pirate`, with `cheerful` and `pirate` loaded.

Blocks that need what a test run does not have are skipped by name in SKIPPED, with the reason, so
pytest lists them (`-rs`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live_server import start_server

ROOT = Path(__file__).resolve().parents[1]
FILES = (ROOT / "README.md", ROOT / "clients" / "python" / "README.md")
URLS = re.compile(r"(?:http://)?(?:localhost|127\.0\.0\.1):8000")
# A Python block talks to a server when it builds a client or uses the one the page built
PYTHON_CLIENT = re.compile(r"\b(?:Client|AsyncClient|OpenAI|AsyncOpenAI|ChatOpenAI)\(|\b(?:client|aclient)\.")
# what a page's later blocks take for granted: clients/python/README.md builds `client` once, in "Connecting"
PRELUDE = "from llmdoctor_client import AsyncClient, Client\nclient = Client()\n"
SKIPPED: dict[str, str] = {
    # name (file:heading:index) -> why a test run cannot run it
}
TIMEOUT = 300


@dataclass(frozen=True)
class Example:
    name: str  # file:heading:n (the n-th runnable block under that heading)
    language: str
    code: str


def examples() -> list[Example]:
    found = []
    for file in FILES:
        heading, counts = "top", {}
        lines = file.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("#"):
                heading = line.lstrip("#").strip().strip("`")
            fence = re.match(r"^```(bash|python)\s*$", line)
            if fence:
                end = lines.index("```", i + 1)
                code = "\n".join(lines[i + 1:end])
                language = fence.group(1)
                talks = URLS.search(code) if language == "bash" else PYTHON_CLIENT.search(code)
                if talks:
                    counts[heading] = counts.get(heading, 0) + 1
                    found.append(Example(f"{file.relative_to(ROOT)}:{heading}:{counts[heading]}", language, code))
                i = end
            i += 1
    return found


EXAMPLES = examples()


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory, adapter_root, doctor_adapter_dir, second_doctor_adapter_dir,
                  patient_adapter_dir):
    server = start_server(["--adapter-root", str(adapter_root), "--doctor", f"cheerful={doctor_adapter_dir}",
                           "--lora", f"pirate={patient_adapter_dir}"],
                          tmp_path_factory.mktemp("readme") / "server.log")
    yield server
    server.stop()


def test_the_readmes_have_server_examples():
    names = [e.name for e in EXAMPLES]
    assert any(n.startswith("README.md:Using it") for n in names)
    assert any(n.startswith("clients/python/README.md:Sync") for n in names)
    assert set(SKIPPED) <= set(names), "a skipped example is gone: drop it from SKIPPED"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_readme_example_runs_against_a_live_server(example, readme_server, tmp_path):
    if example.name in SKIPPED:
        pytest.skip(f"{example.name}: {SKIPPED[example.name]}")
    host = readme_server.url.removeprefix("http://")
    code = URLS.sub(lambda m: ("http://" if m.group(0).startswith("http") else "") + host, example.code)
    env = {**os.environ, "LLMDOCTOR_BASE_URL": readme_server.url, "OPENAI_API_KEY": "unused"}
    env.pop("LLMDOCTOR_API_KEY", None)
    if example.language == "bash":
        # the test server stands in for a `llmdoctor serve` line; curl fails on a non-2xx answer
        body = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith("llmdoctor serve"))
        command = ["bash", "-c", "set -euo pipefail\ncurl() { command curl --fail-with-body \"$@\"; }\n" + body]
    else:
        command = [sys.executable, "-c", PRELUDE + code]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{example.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
