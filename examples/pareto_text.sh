#!/usr/bin/env bash
# The text Pareto study of docs/results.md: 12 experiments x 3 seeds, then the report.
# Usage: bash examples/pareto_text.sh [OUTPUT_ROOT] [extra launcher flags, e.g. --workers 2]
# The report goes to docs/pareto_text.md/.png (what docs/results.md shows) for the default
# OUTPUT_ROOT, else to OUTPUT_ROOT/pareto_text.md/.png. Running it again: add --skip_completed
# (keep the completed runs) or --overwrite (run them again).
set -euo pipefail
cd "$(dirname "$0")/.."
default_out=runs/pareto_text
out="${1:-$default_out}"
shift || true
if [ "$out" = "$default_out" ]; then report=docs/pareto_text; else report="$out/pareto_text"; fi
python eval_parallel.py --task synth-sentiment --model bert-tiny --num_train_epochs 12 --learning_rate 5e-4 --warmup_steps 100 --report_to none \
    --output_root_dir "$out" --experiments examples/pareto_text.yaml --sweep seed=0,1,2 "$@"
# The table goes to a temporary file first: a failed report leaves the previous one in place.
tmp="$(mktemp "$report.md.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
python -m eval.eval_parse "$out" --plot "$report.png" > "$tmp"
chmod a+r "$tmp"  # mktemp makes it owner-only
mv "$tmp" "$report.md"
cat "$report.md"
