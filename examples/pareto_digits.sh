#!/usr/bin/env bash
# The digits Pareto study of docs/results.md: 12 experiments x 3 seeds, then the report.
# Usage: bash examples/pareto_digits.sh [OUTPUT_ROOT] [extra launcher flags, e.g. --workers 2]
# (where the report goes, and running it again: examples/study.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/study.sh
out="${1:-runs/pareto_digits}"
shift || true
run_study pareto_digits "$out" --task digits --model resnet18 --num_train_epochs 6 --report_to none "$@"
