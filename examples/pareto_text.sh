#!/usr/bin/env bash
# The text Pareto study of docs/results.md: 12 experiments x 3 seeds, then the report.
# Usage: bash examples/pareto_text.sh [OUTPUT_ROOT] [extra launcher flags, e.g. --workers 2]
# (where the report goes, and running it again: examples/study.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/study.sh
out="${1:-runs/pareto_text}"
shift || true
run_study pareto_text "$out" --task synth-sentiment --model bert-tiny --num_train_epochs 12 --learning_rate 5e-4 \
    --warmup_steps 100 --report_to none "$@"
