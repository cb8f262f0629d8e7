#!/usr/bin/env bash
# One node, all its GPUs: scripts/pretrain_1node.sh configs/paper.yaml data.path=/data/imagenet_ffcv [key=value ...]
# Rerun the same command to resume from the newest checkpoint in train.out_dir.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m fastbt.dist  # GPUs present but unusable by torch: one line, exit 2
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$NPROC" -ge 1 ] || NPROC=1
exec .venv/bin/python -m fastbt.launch --standalone --nproc_per_node="$NPROC" -m fastbt.cli pretrain "$@"
