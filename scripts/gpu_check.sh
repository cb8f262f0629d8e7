#!/usr/bin/env bash
# The first GPU run: scripts/gpu_check.sh [--dry-run] [OUT_DIR]   (docs/gpu.md)
#
# Stages, most valuable first, under one deadline ($GPU_CHECK_DEADLINE seconds, default 480):
# env, smoke (exit 1 if it fails), the step eager and compiled, augmentation, loss op, LARS, end to
# end per data backend, the gpu-marked tests. OUT_DIR (default: $OUT, else runs/gpu_check_<time>)
# gets results.jsonl (one line per stage, as it ends), summary.md (rewritten after every stage),
# gpu_check.log and the compile cache. Python: .venv/bin/python when present, else python3, with
# this checkout on PYTHONPATH; nothing is installed. --dry-run: the same stages on the CPU with a
# tiny model and small sizes (CI runs it). Without --dry-run on a machine without CUDA it says so in
# one line and exits 0; where GPUs are listed but torch cannot use them it exits 2 naming the driver.
set -uo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."
DRY=()
if [ "${1:-}" = "--dry-run" ]; then DRY=(--dry-run); shift; fi
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

if [ ${#DRY[@]} -eq 0 ]; then
    $PY -m fastbt.dist || exit 2  # GPUs present but unusable: one line, exit 2
    if ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
        echo "gpu_check: no CUDA device on this machine: nothing to measure (run this on a GPU machine, or --dry-run)"
        exit 0
    fi
fi
OUT_DIR=${1:-${OUT:-runs/gpu_check_$(date +%Y%m%d_%H%M%S)}}
[ "${1:-}" ] && [ "${OUT_DIR#/}" = "$OUT_DIR" ] && OUT_DIR=$CALLER/$OUT_DIR  # relative to where it was called
exec $PY scripts/gpu_check.py "${DRY[@]}" "$OUT_DIR"
