#!/usr/bin/env bash
# The paper's vision-language number: Geometry3K test accuracy (601 problems, one diagram each) for one or more
# Qwen2.5-VL models, each compared with the first (paired bootstrap interval).
#   bash configs/eval_geo3k.sh MODEL [MODEL ...] [-- python -m echovl.eval options]
#   bash configs/eval_geo3k.sh grpo=checkpoints/echovl/qwen2_5_vl_7b_geo3k_grpo/global_step_100 \
#                              echo=checkpoints/echovl/qwen2_5_vl_7b_geo3k_grpo_echo/global_step_100
# A MODEL is a model folder, an EasyR1 checkpoint (global_step_N, merged) or a hub name, optionally NAME=PATH.
# Environment: BENCHMARKS (default data/geometry3k/test.parquet, from python data_prep/geometry3k.py), OUT (default
# runs/eval_geo3k), CONFIG (the training config whose prompt and image settings are used, default
# configs/geo3k_grpo_echo.yaml), PYTHON. Sampling: temperature 0.6, top-p 1.0, up to 8192 new tokens, one sample per
# problem (add -- --k 8 for avg@8).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCHMARKS=${BENCHMARKS:-data/geometry3k/test.parquet} OUT=${OUT:-runs/eval_geo3k} \
    CONFIG=${CONFIG:-configs/geo3k_grpo_echo.yaml} SCRIPT=configs/eval_geo3k.sh \
    DEFAULT_BENCHMARKS=data/geometry3k/test.parquet PREPARE="python data_prep/geometry3k.py" \
    exec bash configs/eval_models.sh "$@"
