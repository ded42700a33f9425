#!/bin/bash
# GRPO + EchoRL, text only: Qwen2.5-Math-7B on OpenR1-Math 45k (configs/openr1_math_grpo_echo.yaml).
#   bash configs/openr1_math_grpo_echo.sh [key=value ...]
# Environment: MODEL_PATH, TRAIN_FILES, VAL_FILES, N_GPUS_PER_NODE, NNODES, EXPERIMENT_NAME, PYTHON (and CONFIG, the
# YAML file: the LUFFY and UFT scripts run this one with theirs).
# Relative paths are relative to the repository root (the script runs from there).

set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-Math-7B}  # or a local folder
TRAIN_FILES=${TRAIN_FILES:-data/openr1_math/train.parquet}
VAL_FILES=${VAL_FILES:-data/openr1_math/eval/all.parquet}
N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-qwen2_5_math_7b_openr1_grpo_echo}

set -x
${PYTHON:-python3} -m echovl.train \
    config="${CONFIG:-configs/openr1_math_grpo_echo.yaml}" \
    data.train_files="${TRAIN_FILES}" \
    data.val_files="${VAL_FILES}" \
    worker.actor.model.model_path="${MODEL_PATH}" \
    trainer.experiment_name="${EXPERIMENT_NAME}" \
    trainer.n_gpus_per_node="${N_GPUS_PER_NODE}" \
    trainer.nnodes="${NNODES}" \
    "$@"
