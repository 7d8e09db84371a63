#!/usr/bin/env bash
# The weight-only text study of docs/results.md: examples/pareto_text_weight_only.yaml (every
# model keeps INT8 activations; the searches pick weight formats only), 12 experiments x 3 seeds,
# with the text study's flags (examples/pareto_text.sh), then the report. Usage as that script:
# bash examples/pareto_text_weight_only.sh [OUTPUT_ROOT] [extra launcher flags, e.g. --workers 2]
TEXT_STUDY=pareto_text_weight_only exec bash "$(dirname "$0")/pareto_text.sh" "$@"
