#!/usr/bin/env bash
# The GPU run as one command, on the lent GPU machine (Python 3.12 with torch and transformers, no network):
# install the carried wheels (`make gpu-bundle` made them here) into /tmp, run `python -m benchmarks.gpu`
# under a hard time limit, and copy the report to $OUT (the folder the device tool brings back).
#
# From a session with the device tool:
#   run(command="bash benchmarks/gpu.sh", carry=[".gpu-wheels"], timeout_s=600)
# then, here: copy the returned files into benchmarks/results/gpu/ and run
#   .venv/bin/python benchmarks/run.py --only gpu
# Extra arguments go to benchmarks/gpu.py (e.g. `bash benchmarks/gpu.sh --only cache train`).
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=${GPU_WHEELS:-.gpu-wheels}
SITE=${GPU_SITE:-/tmp/futurelens-site}
LIMIT=${GPU_LIMIT_S:-500}           # hard stop for the Python run; its own deadline (--budget-s) is earlier
RESULTS=${GPU_RESULTS:-benchmarks/results/gpu}
OUT_DIR=${OUT:-$RESULTS}
PY=${GPU_PYTHON:-python3}
mkdir -p "$RESULTS" "$OUT_DIR"
LOG="$OUT_DIR/log.txt"

{
  echo "[gpu.sh] $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname); python: $(command -v "$PY") ($("$PY" --version 2>&1))"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
} | tee "$LOG"

if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "[gpu.sh] no wheels in $WHEELS: run \`make gpu-bundle\` on the machine you call from, and carry \"$WHEELS\"" | tee -a "$LOG"
  exit 3
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl 2>&1 | tee -a "$LOG"
if [ "${PIPESTATUS[0]}" != 0 ]; then echo "[gpu.sh] installing the wheels failed" | tee -a "$LOG"; exit 4; fi

export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  HF_DATASETS_DISABLE_PROGRESS_BARS=1
export WANDB_MODE=disabled FUTURELENS_GPU_WHEELS="$(cd "$WHEELS" && pwd)" FUTURELENS_HOME=/tmp/futurelens-home
"$PY" -c "import torch, transformers, nnsight, datasets; print('[gpu.sh] torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__, '| nnsight', nnsight.__version__, '| datasets', datasets.__version__)" 2>&1 | tee -a "$LOG"

timeout -s INT -k 20 "$LIMIT" "$PY" -m benchmarks.gpu --out "$RESULTS" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "[gpu.sh] benchmarks.gpu exited with $rc" | tee -a "$LOG"

if [ "$OUT_DIR" != "$RESULTS" ]; then
  for f in report.json README.md; do
    [ -f "$RESULTS/$f" ] && cp "$RESULTS/$f" "$OUT_DIR/$f"
  done
fi
exit "$rc"
