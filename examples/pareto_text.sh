#!/usr/bin/env bash
# The text Pareto study of docs/results.md: 12 experiments x 3 seeds, then the report.
# Usage: bash examples/pareto_text.sh [OUTPUT_ROOT] [extra launcher flags, e.g. --workers 2]
# SEEDS=0,1 bash examples/pareto_text.sh ... runs other seeds. Where the report goes, and
# running it again: examples/study.sh. TEXT_STUDY=NAME runs examples/NAME.yaml with the same
# flags instead (examples/pareto_text_weight_only.sh does).
set -euo pipefail
caller_dir="$PWD"
cd "$(dirname "$0")/.."
source examples/study.sh
STUDY_FLAGS=(--task synth-sentiment --model bert-tiny --num_train_epochs 12 --learning_rate 5e-4 --warmup_steps 100
             --report_to none)
if [ -n "${TEXT_STUDY:-}" ] && [ "$TEXT_STUDY" != pareto_text ]; then
  echo "pareto_text.sh: running examples/$TEXT_STUDY.yaml with the text study's flags (TEXT_STUDY=$TEXT_STUDY)" >&2
fi
run_study "${TEXT_STUDY:-pareto_text}" "$caller_dir" "$@"
