#!/bin/bash
# GRPO + EchoRL, text only: Qwen3-8B-Base on OpenR1-Math 45k. The run of openr1_math_grpo_echo.sh
# (configs/openr1_math_grpo_echo.yaml) with another model and LUFFY's 8192-token response budget (the prompts are
# LUFFY's Openr1-Math-46k-8192), which Qwen3's 32k-token context holds (Qwen2.5-Math-7B's 4k does not); vLLM's
# batched-token budget grows to one whole sequence (prompt 1024 + response 8192), as EasyR1 requires.
#   bash configs/openr1_math_qwen3_grpo_echo.sh [key=value ...]
#   MODEL_PATH=Qwen/Qwen3-4B-Base bash configs/openr1_math_qwen3_grpo_echo.sh
# Environment: MODEL_PATH, TRAIN_FILES, VAL_FILES, N_GPUS_PER_NODE, NNODES, EXPERIMENT_NAME, PYTHON.

set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-8B-Base} \
    EXPERIMENT_NAME=${EXPERIMENT_NAME:-qwen3_8b_base_openr1_grpo_echo} \
    bash configs/openr1_math_grpo_echo.sh \
    data.max_response_length=8192 \
    worker.rollout.max_num_batched_tokens=9216 \
    "$@"
