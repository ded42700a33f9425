#!/bin/bash
# The A/B baseline of openr1_math_grpo_echo.sh: the same GRPO run with EchoRL off (plain EasyR1 GRPO; only the
# free echo/degenerate_groups and echo/all_wrong_groups diagnostics are logged).
#   bash configs/openr1_math_grpo.sh [key=value ...]
# Environment: MODEL_PATH, TRAIN_FILES, VAL_FILES, N_GPUS_PER_NODE, NNODES, EXPERIMENT_NAME, PYTHON.

set -euo pipefail
cd "$(dirname "$0")/.."

EXPERIMENT_NAME=${EXPERIMENT_NAME:-qwen2_5_math_7b_openr1_grpo} \
    bash configs/openr1_math_grpo_echo.sh echo.enable=false "$@"
