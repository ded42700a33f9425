#!/usr/bin/env bash
# The paper's text table: AIME24, AIME25, AMC, MATH-500, Minerva, OlympiadBench (ID) and ARC-c, GPQA-diamond,
# MMLU-Pro (OOD) for one or more models, each compared with the first (paired bootstrap intervals).
#   bash configs/eval_openr1_math.sh MODEL [MODEL ...] [-- python -m echovl.eval options]
#   bash configs/eval_openr1_math.sh grpo=checkpoints/echovl/grpo/global_step_500 \
#                                    echo=checkpoints/echovl/echo/global_step_500 -- --limit 20
# A MODEL is a model folder, an EasyR1 checkpoint (global_step_N, merged) or a hub name, optionally NAME=PATH.
# Environment: BENCHMARKS (default data/openr1_math/benchmarks: LUFFY's whole evaluation set, which
# python data_prep/openr1_math.py --eval-source path/to/LUFFY/data --out data/openr1_math/benchmarks writes; not
# data_prep's default data/openr1_math/eval, LUFFY's valid.parquet for EasyR1's validation: five of the nine
# benchmarks), OUT (default runs/eval_openr1_math), CONFIG (the training config whose prompt settings are used,
# default configs/openr1_math_grpo_echo.yaml), PYTHON.
# Sampling is LUFFY's: temperature 0.6, top-p 1.0, up to 8192 new tokens, avg@32 on AIME24/AIME25/AMC, else 1.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCHMARKS=${BENCHMARKS:-data/openr1_math/benchmarks} OUT=${OUT:-runs/eval_openr1_math} \
    CONFIG=${CONFIG:-configs/openr1_math_grpo_echo.yaml} SCRIPT=configs/eval_openr1_math.sh \
    DEFAULT_BENCHMARKS=data/openr1_math/benchmarks \
    PREPARE="python data_prep/openr1_math.py --eval-source path/to/LUFFY/data --out data/openr1_math/benchmarks" \
    PREPARE_NOTE="(data_prep's default output, data/openr1_math/eval, is EasyR1's validation set from LUFFY's
valid.parquet: five of the nine benchmarks; BENCHMARKS=data/openr1_math/eval evaluates it, without the paper's
averages.)" \
    exec bash configs/eval_models.sh "$@"
