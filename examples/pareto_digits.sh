#!/usr/bin/env bash
# The digits Pareto study of docs/results.md: 12 experiments x 3 seeds, then the report.
# Usage: bash examples/pareto_digits.sh [OUTPUT_ROOT] [extra launcher flags, e.g. --workers 2]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/pareto_digits}"
shift || true
python eval_parallel.py --task digits --model resnet18 --num_train_epochs 6 --report_to none \
    --output_root_dir "$out" --experiments examples/pareto_digits.yaml --sweep seed=0,1,2 "$@"
python -m eval.eval_parse "$out" --plot docs/pareto_digits.png > docs/pareto_digits.md
cat docs/pareto_digits.md
