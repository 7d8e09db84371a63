#!/usr/bin/env bash
# The digits Pareto study of docs/results.md: 12 experiments x 3 seeds, then the report.
# Usage: bash examples/pareto_digits.sh [OUTPUT_ROOT] [extra launcher flags, e.g. --workers 2]
# The report goes to docs/pareto_digits.md/.png (what docs/results.md shows) for the default
# OUTPUT_ROOT, else to OUTPUT_ROOT/pareto_digits.md/.png. Running it again: add --skip_completed
# (keep the completed runs) or --overwrite (run them again).
set -euo pipefail
cd "$(dirname "$0")/.."
default_out=runs/pareto_digits
out="${1:-$default_out}"
shift || true
if [ "$out" = "$default_out" ]; then report=docs/pareto_digits; else report="$out/pareto_digits"; fi
python eval_parallel.py --task digits --model resnet18 --num_train_epochs 6 --report_to none \
    --output_root_dir "$out" --experiments examples/pareto_digits.yaml --sweep seed=0,1,2 "$@"
# The table goes to a temporary file first: a failed report leaves the previous one in place.
tmp="$(mktemp "$report.md.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
python -m eval.eval_parse "$out" --plot "$report.png" > "$tmp"
chmod a+r "$tmp"  # mktemp makes it owner-only
mv "$tmp" "$report.md"
cat "$report.md"
