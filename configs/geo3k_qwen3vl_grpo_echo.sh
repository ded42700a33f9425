#!/bin/bash
# GRPO + EchoRL: Qwen3-VL-4B-Instruct on Geometry3K with the paper's settings. The run of geo3k_grpo_echo.sh
# (configs/geo3k_grpo_echo.yaml) with another model, as EasyR1's own examples/qwen3_vl_4b_geo3k_grpo.sh is its
# Qwen2.5-VL example with another model. Needs transformers >= 4.57 and a vLLM that serves Qwen3-VL (>= 0.11).
#   bash configs/geo3k_qwen3vl_grpo_echo.sh [key=value ...]
#   MODEL_PATH=Qwen/Qwen3-VL-8B-Instruct bash configs/geo3k_qwen3vl_grpo_echo.sh
#   bash configs/geo3k_qwen3vl_grpo_echo.sh echo.enable=false trainer.experiment_name=qwen3_vl_4b_geo3k_grpo  # A/B
# Environment: MODEL_PATH, TRAIN_FILES, VAL_FILES, N_GPUS_PER_NODE, NNODES, EXPERIMENT_NAME, PYTHON.

set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-VL-4B-Instruct} \
    EXPERIMENT_NAME=${EXPERIMENT_NAME:-qwen3_vl_4b_geo3k_grpo_echo} \
    bash configs/geo3k_grpo_echo.sh "$@"
