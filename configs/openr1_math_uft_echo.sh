#!/bin/bash
# UFT + EchoRL, text only: Qwen2.5-Math-7B on OpenR1-Math 45k (configs/openr1_math_uft_echo.yaml; docs/luffy_uft.md).
#   bash configs/openr1_math_uft_echo.sh [key=value ...]
# Environment: MODEL_PATH, TRAIN_FILES, VAL_FILES, N_GPUS_PER_NODE, NNODES, EXPERIMENT_NAME, PYTHON.
# The training file needs the expert solutions (column `solution`, written by data_prep/openr1_math.py).

set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=configs/openr1_math_uft_echo.yaml \
    MODEL_PATH=${MODEL_PATH:-Elliott/Qwen2.5-Math-7B-16k-think} \
    EXPERIMENT_NAME=${EXPERIMENT_NAME:-qwen2_5_math_7b_openr1_uft_echo} \
    bash configs/openr1_math_grpo_echo.sh "$@"
