#!/bin/bash
# DAPO + EchoRL: Qwen2.5-VL-7B-Instruct on Geometry3K. DAPO = online filtering of all-correct / all-wrong groups
# (on accuracy, as in the DAPO paper), clip-higher, no KL. EchoRL keeps the clips of the all-correct groups the
# filter drops (echo.keep_filtered_clips; docs/easyr1.md, "DAPO and EchoRL").
#   bash configs/geo3k_dapo_echo.sh [key=value ...]
# Environment: MODEL_PATH, TRAIN_FILES, VAL_FILES, N_GPUS_PER_NODE, NNODES, EXPERIMENT_NAME, PYTHON.

set -euo pipefail
cd "$(dirname "$0")/.."

EXPERIMENT_NAME=${EXPERIMENT_NAME:-qwen2_5_vl_7b_geo3k_dapo_echo} \
    bash configs/geo3k_grpo_echo.sh \
    data.mini_rollout_batch_size=128 \
    worker.actor.clip_ratio_low=0.2 \
    worker.actor.clip_ratio_high=0.28 \
    algorithm.disable_kl=true \
    algorithm.online_filtering=true \
    algorithm.filter_key=accuracy \
    "$@"
