#!/usr/bin/env bash
# GPU benchmark in one call on a GPU machine (H100/H200; about 6-8 minutes): train-step MFU and rollout
# tokens/s vs the HBM roofline for random-weight Qwen-shaped 0.5B and 1.7B models, bf16.
#   bash bench/gpu.sh [gpu_bench.py flags]      e.g. --shapes 0.5B --groups 8
#   bash bench/gpu.sh --dry-run                 the same code on CPU, tiny shape (no GPU needed)
# Writes $OUT/gpu_bench.json (rewritten after every case) and $OUT/gpu_bench.log; without $OUT,
# runs/gpu_bench/. The machine needs jax (CUDA), optax, flax, safetensors and transformers;
# wheels for anything else can be put in .whl/ and are installed into /tmp/site first. The
# package is used from src/ (no install needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT_DIR=${OUT:-$ROOT/runs/gpu_bench}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  PY=$ROOT/.venv/bin/python  # CPU dry run on a developer machine
fi
shopt -s nullglob
wheels=("$ROOT"/.whl/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${wheels[@]}"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
fi
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())' | tee -a "$OUT_DIR/gpu.txt"
set -o pipefail
timeout 540 "$PY" -m bench.gpu_bench --out "$OUT_DIR/gpu_bench.json" "$@" 2>&1 |
  tee "$OUT_DIR/gpu_bench.log"
