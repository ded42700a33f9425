#!/usr/bin/env bash
# EchoRL CPU mini-experiment: GRPO with and without echo on a tiny Qwen2.5-VL, from the same warm start and seed.
# Writes metrics.csv, plot.png, summary.json and traces/ under OUT (default runs/tiny_cpu_echo); extra arguments go
# to the Python entry point (--seed, --steps, --coef, --quick, --threads, --seeds, --variant; see --help
# and docs/cpu_experiment.md).
#   bash configs/tiny_cpu_echo.sh
#   OUT=/tmp/echo bash configs/tiny_cpu_echo.sh --seed 1
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# idle OpenMP threads sleep instead of spinning: on a busy machine spinning threads wait on each other (a 2-thread
# run took up to 10x longer per step); results do not change
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "${PYTHON:-python}" -m echovl.experiments.tiny_cpu --out "${OUT:-runs/tiny_cpu_echo}" "$@"
