#!/usr/bin/env bash
# One command for the first GPU machine: scripts/gpu_check.sh [OUT_DIR]
#
# In < 10 minutes on a CUDA machine: the gpu-marked tests, bench_loss (per-rank FLOP table +
# fused vs official on the GPU), bench_augment --device cuda --compile (bf16 out), bench_optim
# (LARS eager vs compiled, the paper's model), bench_pipelines
# --device cuda on generated data, and `fastbt profile` of configs/paper.yaml on that data for a
# few steps on 1 GPU and, if there are several, on all of them via torchrun. Every step has its
# own time limit and its output goes to OUT_DIR/<step>.log; OUT_DIR/summary.md collects every
# figure (each step's tables and its status). On a machine without CUDA it says so in one line
# and exits 0; where GPUs are listed but torch cannot use them, it exits 2 naming the driver.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

$PY -m fastbt.dist || exit 2  # GPUs present but unusable: one line, exit 2
if ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "gpu_check: no CUDA device on this machine: nothing to measure (run this on a GPU machine)"
    exit 0
fi

OUT=${1:-runs/gpu_check_$(date +%Y%m%d_%H%M%S)}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.md
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
DATA=$OUT/data
{
    echo "# fastbt gpu_check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- GPUs: $NGPU x $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)"
    echo "- torch: $($PY -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
    echo
} > "$SUMMARY"

# step NAME SECONDS CMD...: run with a time limit, log it, put its tables and status in the summary
step() {
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "gpu_check: $name ..." >&2
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local status="ok"
    [ $rc -eq 124 ] && status="TIMED OUT after ${limit} s"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="FAILED (exit $rc)"
    {
        echo "## $name: $status, $((SECONDS - t0)) s"
        echo
        echo '```'
        echo "$*"
        echo '```'
        echo
        # tables, headers and one-line results; the whole output is in $name.log
        grep -E '^(\||#|device |compiled / eager|[0-9]+ (passed|failed)|=+ .*(passed|failed|skipped|error))' \
            "$OUT/$name.log" | grep -v '^# warm-up' | tail -n 60
        echo
    } >> "$SUMMARY"
}

step gpu_tests 240 $PY -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests
step bench_loss 90 $PY scripts/bench_loss.py --device cuda --n 2048 --dims 8192 16384 --reps 5 --threads 0
step bench_augment 120 $PY scripts/bench_augment.py --device cuda --compile --dtype bf16 --batch 256 --reps 7
step bench_optim 120 $PY scripts/bench_optim.py --device cuda --arch resnet50 --projector 8192 8192 8192
step bench_pipelines 180 $PY scripts/bench_pipelines.py --device cuda --batch 256 --images 1024 \
    --seconds 5 --workers "$(nproc)" --data "$DATA"

PROFILE=(configs/paper.yaml data.backend=ffcv "data.path=$DATA/ffcv" "train.out_dir=$OUT/profile_run"
         runtime.compile=true)
step profile_1gpu 240 .venv/bin/fastbt profile "${PROFILE[@]}" train.batch_size=256 --steps 10 \
    --out "$OUT/profile_1gpu"
if [ "$NGPU" -gt 1 ]; then
    step "profile_${NGPU}gpu" 300 .venv/bin/torchrun --standalone --nproc_per_node="$NGPU" -m fastbt.cli \
        profile "${PROFILE[@]}" "train.batch_size=$((256 * NGPU))" --steps 10 --out "$OUT/profile_${NGPU}gpu"
fi

cat "$SUMMARY"
echo "gpu_check: summary in $SUMMARY"
