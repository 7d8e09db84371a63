#!/usr/bin/env bash
# The weight-only text Pareto study of docs/results.md: 12 experiments x 3 seeds, then the report.
# Every model keeps INT8 activations; the searches pick weight formats only.
# Usage: bash examples/pareto_text_weight_only.sh [OUTPUT_ROOT] [extra launcher flags, e.g. --workers 2]
# SEEDS=0,1 bash examples/pareto_text_weight_only.sh ... runs other seeds. Where the report goes,
# and running it again: examples/study.sh.
set -euo pipefail
caller_dir="$PWD"
cd "$(dirname "$0")/.."
source examples/study.sh
STUDY_FLAGS=(--task synth-sentiment --model bert-tiny --num_train_epochs 12 --learning_rate 5e-4 --warmup_steps 100
             --report_to none)
run_study pareto_text_weight_only "$caller_dir" "$@"
