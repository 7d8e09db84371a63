#!/usr/bin/env bash
# The text Pareto study of docs/results.md: 12 experiments x 3 seeds, then the report.
# Usage: bash examples/pareto_text.sh [OUTPUT_ROOT] [extra launcher flags, e.g. --workers 2]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/pareto_text}"
shift || true
python eval_parallel.py --task synth-sentiment --model bert-tiny --num_train_epochs 12 --learning_rate 5e-4 --warmup_steps 100 --report_to none \
    --output_root_dir "$out" --experiments examples/pareto_text.yaml --sweep seed=0,1,2 "$@"
python -m eval.eval_parse "$out" --plot docs/pareto_text.png > docs/pareto_text.md
cat docs/pareto_text.md
