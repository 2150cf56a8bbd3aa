"""Regenerate `_generated.py` from the server's OpenAPI document (a developer tool, not used at run time).

    python -m llmdoctor_client._codegen           # rewrite _generated.py
    python -m llmdoctor_client._codegen --check   # exit 1 if it is out of date (tests/clients/test_codegen.py)

Needs the server package (`llmdoctor`) and `datamodel-code-generator` (both in the repo's `test`
extra); the installed client needs neither. The app is built without starting an engine:
`FastAPI.openapi()` reads the routes' declarations only. The document holds every schema the client
parses: the JSON responses, the SSE stream chunks (`text/event-stream` on the generation routes)
and the error body (`ErrorResponse`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GENERATED = Path(__file__).with_name("_generated.py")
REFRESH_COMMAND = "python -m llmdoctor_client._codegen"
FILE_HEADER = (
    '"""Generated from the llmdoctor server\'s OpenAPI document; do not edit.\n\n'
    f'Refresh: {REFRESH_COMMAND}\n"""'
)
# Fixed options: the output must be byte-identical for the same schema (the freshness test).
CODEGEN_OPTIONS = [
    "--input-file-type", "openapi",
    "--output-model-type", "pydantic_v2.BaseModel",
    "--target-python-version", "3.11",
    "--formatters", "builtin",
    "--disable-timestamp",
    "--use-annotated",
    "--use-standard-collections",
    "--use-union-operator",
    "--enum-field-as-literal", "all",
    "--use-schema-description",
    "--use-double-quotes",
    "--collapse-root-models",
    "--custom-file-header", FILE_HEADER,
]


def server_openapi() -> dict:
    """The server's OpenAPI document, built in-process (no engine)."""
    from llmdoctor.server.api.app import create_app
    from llmdoctor.server.config import ServerSettings

    return create_app(ServerSettings()).openapi()


def generate(document: dict) -> str:
    """Python source of the pydantic models for `document`, via datamodel-code-generator."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "openapi.json"
        source.write_text(json.dumps(document, indent=1))
        command = [sys.executable, "-m", "datamodel_code_generator", "--input", str(source), *CODEGEN_OPTIONS]
        done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"datamodel-codegen failed:\n{done.stderr}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if _generated.py is stale")
    args = parser.parse_args(argv)
    fresh = generate(server_openapi())
    if args.check:
        if GENERATED.read_text() != fresh:
            print(f"{GENERATED} is out of date with the server; refresh it with: {REFRESH_COMMAND}")
            return 1
        return 0
    GENERATED.write_text(fresh)
    print(f"wrote {GENERATED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
