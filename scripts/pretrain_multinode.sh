#!/usr/bin/env bash
# Several nodes: run this on every node with the same MASTER_ADDR (a host all nodes reach),
# NNODES and RDZV_ID, e.g.
#   MASTER_ADDR=node0 NNODES=4 scripts/pretrain_multinode.sh configs/paper.yaml data.path=/shared/imagenet_ffcv
# train.out_dir must be on a filesystem every node shares (checkpoints are written by rank 0 and
# read by all ranks on resume).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m fastbt.dist  # GPUs present but unusable by torch: one line, exit 2
: "${MASTER_ADDR:?set MASTER_ADDR to a host every node can reach}"
: "${NNODES:?set NNODES to the number of nodes}"
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
exec .venv/bin/python -m fastbt.launch --nnodes="$NNODES" --nproc_per_node="$NPROC" \
    --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" \
    --rdzv_id="${RDZV_ID:-fastbt}" -m fastbt.cli pretrain "$@"
