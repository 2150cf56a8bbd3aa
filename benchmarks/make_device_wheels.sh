#!/usr/bin/env bash
# Fills .whl/ (git-ignored via .git/info/exclude) with what benchmarks/device_serve_overhead.sh
# carries to the lent GPU machine: cp312 x86-64 wheels of what `llmdoctor serve --replicas 1` needs
# and that machine lacks, plus the embedded model's tokenizer files. Run it on a dev machine with
# network access and the dev .venv (for the embedded model's folder):
#
#     bash benchmarks/make_device_wheels.sh
#
# The machine has torch, transformers, httpx, aiohttp, prometheus-client, numpy, pyyaml, click, h11
# ... (/work/.library/device/KINDS.md), but no Ray, FastAPI, uvicorn or pydantic. Versions match
# the dev .venv. Why each one beyond the obvious:
#   opentelemetry-api                 FastAPI >= 0.16x imports it
#   jsonschema, referencing, rpds-py  Ray core imports jsonschema (runtime_env schemas)
#   grpcio-reflection                 Ray Serve imports it at start; its generated code demands
#   grpcio >= 1.85.1, protobuf >= 7.35  grpcio and protobuf at least as new, so both travel too
#   anyio, annotated-doc, typing-extensions  FastAPI/pydantic minimums; the machine's versions are unknown
#   httptools                         uvicorn[standard]'s parser, as a real `ray[serve]` install has
# The ray wheel (79 MB) is stripped of ray/jars/ (Java workers), ray/dashboard/client/build/ (the
# web UI; include_dashboard=False) and ray/rllib/, with their RECORD lines, to fit the 64 MiB a
# device call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  ray==2.60.0
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 httptools==0.9.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  pydantic-settings==2.16.3 python-dotenv==1.2.4
  typing-extensions==4.16.0 anyio==4.16.0 annotated-doc==0.0.7
  opentelemetry-api==1.45.2
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  grpcio-reflection==1.85.1 grpcio==1.85.3 protobuf==7.36.2
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
DOWNLOADS=$(mktemp -d)
trap 'rm -rf "$DOWNLOADS"' EXIT

# 1) the wheels, as the device README says (no deps: each one is named above)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DOWNLOADS" "${WHEELS[@]}"
rm -rf .whl && mkdir -p .whl
find "$DOWNLOADS" -name '*.whl' ! -name 'ray-*' -exec cp {} .whl/ \;

# 2) ray without what neither Serve nor a local Ray needs
python3 - "$DOWNLOADS"/ray-2.60.0-*.whl .whl/ <<'EOF'
import csv, io, sys, zipfile
from pathlib import Path

source = Path(sys.argv[1])
target = Path(sys.argv[2]) / source.name
dropped = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/")
with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as new:
    for info in old.infolist():
        if info.filename.startswith(dropped):
            continue
        data = old.read(info)
        if info.filename.endswith(".dist-info/RECORD"):  # pip checks every listed file exists
            rows = [row for row in csv.reader(io.StringIO(data.decode())) if row and not row[0].startswith(dropped)]
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(rows)
            data = text.getvalue().encode()
        new.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)  # keeps the exec bits
print(f"{target}: {target.stat().st_size / 2**20:.1f} MiB")
EOF

# 3) the embedded model's tokenizer (the benchmark's random model speaks it)
MODEL_DIR=$(.venv/bin/python -c "from llmdoctor.server.model_store import resolve_model; print(resolve_model(None).folder)")
FILES=()
for f in tokenizer.json tokenizer_config.json special_tokens_map.json chat_template.jinja; do
  [[ -f "$MODEL_DIR/$f" ]] && FILES+=("$f")
done
tar -czf .whl/tokenizer.tar.gz -C "$MODEL_DIR" "${FILES[@]}"
du -sh .whl
