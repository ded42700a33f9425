#!/bin/bash
# The A/B baseline of geo3k_grpo_echo.sh: the same run with EchoRL off (plain EasyR1 GRPO; only the free
# echo/degenerate_groups and echo/all_wrong_groups diagnostics are logged).
#   bash configs/geo3k_grpo.sh [key=value ...]
# Environment: MODEL_PATH, TRAIN_FILES, VAL_FILES, N_GPUS_PER_NODE, NNODES, EXPERIMENT_NAME, PYTHON.

set -euo pipefail
cd "$(dirname "$0")/.."

EXPERIMENT_NAME=${EXPERIMENT_NAME:-qwen2_5_vl_7b_geo3k_grpo} \
    bash configs/geo3k_grpo_echo.sh echo.enable=false "$@"
