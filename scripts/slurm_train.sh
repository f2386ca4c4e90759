#!/usr/bin/env bash
# Train one lora-ft config on several machines under Slurm: one torchrun per node, one process per GPU.
#
#   sbatch --nodes=2 --gpus-per-node=8 scripts/slurm_train.sh configs/legal_domain.yaml [--set key=value ...]
#
# Every node must see the repository, its .venv, the data and the output_dir at the same paths (a shared file
# system). Resubmitting the same command after a preemption or a time limit resumes from the newest complete
# checkpoint; keep the same number of nodes and GPUs (FSDP requires it; DDP asks for --force-resume otherwise).
#SBATCH --job-name=lora-ft
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=TERM@120          # SIGTERM two minutes before the time limit: lora-ft saves and stops cleanly
#SBATCH --output=lora-ft-%j.log
set -euo pipefail

CONFIG=${1:?usage: sbatch scripts/slurm_train.sh CONFIG [--set key=value ...]}
shift
REPO=${LORA_FT_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-8}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}   # "h100:8" -> 8
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)   # sed reads all: no SIGPIPE under pipefail
PORT=${LORA_FT_PORT:-29500}

echo "lora-ft: $SLURM_NNODES node(s) x $GPUS_PER_NODE GPU(s), rendezvous at $HEAD_NODE:$PORT"
# srun starts one torchrun per node; torchrun starts one worker per GPU and forwards SIGTERM to them.
srun --kill-on-bad-exit=1 "$REPO/.venv/bin/python" -m torch.distributed.run \
  --nnodes="$SLURM_NNODES" --nproc-per-node="$GPUS_PER_NODE" \
  --rdzv-id="$SLURM_JOB_ID" --rdzv-backend=c10d --rdzv-endpoint="$HEAD_NODE:$PORT" \
  -m lora_ft train "$CONFIG" "$@"
