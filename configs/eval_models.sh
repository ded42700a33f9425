#!/usr/bin/env bash
# Shared by configs/eval_openr1_math.sh and configs/eval_geo3k.sh (which set BENCHMARKS, OUT and CONFIG, and
# DEFAULT_BENCHMARKS, PREPARE and PREPARE_NOTE: their default benchmark path, the data_prep command that writes it
# and a note printed with that command when the path is missing):
#   bash configs/eval_models.sh MODEL [MODEL ...] [-- python -m echovl.eval options]
# With several models, each is generated in its own process (vLLM frees GPU memory only when its process ends);
# a last run with all of them reads their samples back from OUT's cache and writes the table (OUT/table.md,
# results.json, results.csv), each model compared with the first.
set -euo pipefail
cd "$(dirname "$0")/.."

models=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do models+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the "--"
if [ ${#models[@]} -eq 0 ]; then
    echo "usage: bash ${SCRIPT:-configs/eval_models.sh} MODEL [MODEL ...] [-- python -m echovl.eval options]" >&2
    exit 2
fi
if [ ! -e "${BENCHMARKS:?}" ] && [ ! -e "${BENCHMARKS#*=}" ]; then  # a path, or NAME=PATH
    echo "error: the benchmarks ${BENCHMARKS} do not exist (run from $(pwd))." >&2
    if [ -n "${PREPARE:-}" ] && [ "${BENCHMARKS}" = "${DEFAULT_BENCHMARKS:-}" ]; then
        echo "Write them with:" >&2
        echo "    ${PREPARE}" >&2
        [ -n "${PREPARE_NOTE:-}" ] && echo "${PREPARE_NOTE}" >&2
    else
        echo "Set BENCHMARKS to a benchmark parquet file or folder${PREPARE:+ (the default is written by: ${PREPARE})}." >&2
    fi
    exit 1
fi
common=(--benchmarks "${BENCHMARKS}" --out "${OUT:?}" --config "${CONFIG:?}")
PY=${PYTHON:-python3}
set -x
if [ ${#models[@]} -gt 1 ]; then
    for model in "${models[@]}"; do
        "$PY" -m echovl.eval --model "$model" "${common[@]}" "$@" >/dev/null
    done
fi
model_args=()
for model in "${models[@]}"; do model_args+=(--model "$model"); done
"$PY" -m echovl.eval "${model_args[@]}" "${common[@]}" "$@"
