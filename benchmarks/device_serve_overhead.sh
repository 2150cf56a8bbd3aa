#!/usr/bin/env bash
# Ray Serve's added latency per request vs in-process serving, on a machine without Ray or FastAPI
# (the lent GPU machine): installs the carried wheels from .whl/ (benchmarks/make_device_wheels.sh)
# into a folder of their own, makes the repo importable as `llmdoctor`, and runs
# benchmarks/bench_serve_overhead.py. Run from the repo root:
#
#     bash benchmarks/device_serve_overhead.sh            # GPU: ~1.07 B random Llama in bf16
#     bash benchmarks/device_serve_overhead.sh --tiny     # CPU: a toy model in float32
#
# Other flags go to bench_serve_overhead.py. PYTHON picks the interpreter (default python3).
# With $OUT set, the table and log (result.md) and both servers' logs are written there too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=/tmp/llmdoctor-site
PKG=/tmp/llmdoctor-pkg
RESULTS=${OUT:-/tmp/serve-overhead}
mkdir -p "$RESULTS"

{
echo "# $(date -u +%FT%TZ) $(hostname)"
nvidia-smi -L 2>/dev/null || true
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__)"
echo "the machine's own: $("$PY" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(grpcio|protobuf|anyio|typing.extensions|pydantic|ray)==' | tr '\n' ' ')"

# 1) the carried wheels, in a folder of their own, ahead of the machine's site-packages
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl

# 2) the repo as the `llmdoctor` namespace package (pyproject's package-dir), nothing built
rm -rf "$PKG" && mkdir -p "$PKG/llmdoctor"
ln -s "$PWD/server" "$PKG/llmdoctor/server"
ln -s "$PWD/training" "$PKG/llmdoctor/training"
export PYTHONPATH="$SITE:$PKG${PYTHONPATH:+:$PYTHONPATH}"  # Ray's workers inherit it

# 3) the embedded model's tokenizer, for the random model
mkdir -p "$PKG/tokenizer" && tar -xzf .whl/tokenizer.tar.gz -C "$PKG/tokenizer"

# 4) the comparison (bounded, so a hung server still leaves its logs behind); on a failure, Ray's
#    own logs come back too
status=0
PYTHONUNBUFFERED=1 timeout 480 "$PY" benchmarks/bench_serve_overhead.py --tokenizer "$PKG/tokenizer" \
  --log-dir "$RESULTS" "$@" || status=$?
if [[ $status != 0 && -d /tmp/ray/session_latest/logs ]]; then
  tar -czf "$RESULTS/ray-logs.tar.gz" -C /tmp/ray/session_latest logs && echo "Ray's logs: $RESULTS/ray-logs.tar.gz"
fi
exit $status
} 2>&1 | tee "$RESULTS/result.md"
