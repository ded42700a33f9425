#!/bin/bash
# GRPO + EchoRL: Qwen2.5-VL-7B-Instruct on Geometry3K with the paper's settings (configs/geo3k_grpo_echo.yaml).
#   bash configs/geo3k_grpo_echo.sh [key=value ...]    # extra arguments override the config, EasyR1-style
# Environment: MODEL_PATH, TRAIN_FILES, VAL_FILES, N_GPUS_PER_NODE, NNODES, EXPERIMENT_NAME, PYTHON.
# Relative paths are relative to the repository root (the script runs from there).

set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-VL-7B-Instruct}  # or a local folder
TRAIN_FILES=${TRAIN_FILES:-data/geometry3k/train.parquet}
VAL_FILES=${VAL_FILES:-data/geometry3k/test.parquet}
N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-qwen2_5_vl_7b_geo3k_grpo_echo}

set -x
${PYTHON:-python3} -m echovl.train \
    config=configs/geo3k_grpo_echo.yaml \
    data.train_files="${TRAIN_FILES}" \
    data.val_files="${VAL_FILES}" \
    worker.actor.model.model_path="${MODEL_PATH}" \
    trainer.experiment_name="${EXPERIMENT_NAME}" \
    trainer.n_gpus_per_node="${N_GPUS_PER_NODE}" \
    trainer.nnodes="${NNODES}" \
    "$@"
