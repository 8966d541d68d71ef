#!/usr/bin/env bash
# First accelerator check in one call on a GPU machine (issue 15; about 6-9 minutes on one
# H100/H200): correctness first (the six paper `:rehearsal` runs), then timing (a short bf16 run
# of a real-sized Qwen3 shape with random weights and the real Qwen3 tokenizer). See
# bench/gpu_check.py for what is measured.
#   bash bench/gpu_check.sh                       GPU: six rehearsals + Qwen3-1.7B (mbpp_drgrpo)
#   bash bench/gpu_check.sh --shape 4B --experiment gsm8k_drgrpo     the LoRA path at 4B
#   bash bench/gpu_check.sh --tiny --rehearsals gsm8k_drgrpo          CPU check of the script
# Needs artifacts/qwen3-tokenizer (`make qwen3-tokenizer` where npm is available; copy the
# folder along to a machine without it). Writes $OUT/gpu_check.json (rewritten after every
# part), $OUT/gpu_check.log and $OUT/gpu.txt; without $OUT, runs/gpu_check/. The machine needs
# jax (CUDA), optax, flax, orbax-checkpoint, tensorboardX, transformers, tokenizers and
# safetensors; wheels for anything else can be put in .whl/ and are installed into /tmp/site.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT_DIR=${OUT:-$ROOT/runs/gpu_check}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  PY=$ROOT/.venv/bin/python  # CPU check on a developer machine
fi
if [ ! -f "$ROOT/artifacts/qwen3-tokenizer/tokenizer.json" ]; then
  echo "gpu_check: artifacts/qwen3-tokenizer missing: run 'make qwen3-tokenizer' first" >&2
  exit 2
fi
shopt -s nullglob
wheels=("$ROOT"/.whl/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${wheels[@]}"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
fi
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())' | tee -a "$OUT_DIR/gpu.txt"
timeout 570 "$PY" -m bench.gpu_check --out "$OUT_DIR/gpu_check.json" \
  --workdir "${TMPDIR:-/tmp}/gpu_check_runs" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
