#!/usr/bin/env bash
# The digits Pareto study of docs/results.md: 12 experiments x 3 seeds, then the report.
# Usage: bash examples/pareto_digits.sh [OUTPUT_ROOT] [extra launcher flags, e.g. --workers 2]
# SEEDS=0,1 bash examples/pareto_digits.sh ... runs other seeds. Where the report goes, and
# running it again: examples/study.sh.
set -euo pipefail
caller_dir="$PWD"
cd "$(dirname "$0")/.."
source examples/study.sh
STUDY_FLAGS=(--task digits --model resnet18 --num_train_epochs 6 --report_to none)
run_study pareto_digits "$caller_dir" "$@"
