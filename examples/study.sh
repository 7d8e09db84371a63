# Sourced by examples/pareto_*.sh. run_study NAME OUTPUT_ROOT [run and launcher flags...]:
# runs the experiments of examples/NAME.yaml x 3 seeds into OUTPUT_ROOT, then the report. The
# report goes to docs/NAME.md/.png (what docs/results.md shows) for the default OUTPUT_ROOT
# (runs/NAME), else to OUTPUT_ROOT/NAME.md/.png. Running it again: add --skip_completed (keep the
# completed runs) or --overwrite (run them again).
run_study() {
  local name="$1" out="$2" report
  shift 2
  if [ "$out" = "runs/$name" ]; then report="docs/$name"; else report="$out/$name"; fi
  python eval_parallel.py --output_root_dir "$out" --experiments "examples/$name.yaml" --sweep seed=0,1,2 "$@"
  # The table goes to a temporary file first: a failed report leaves the previous one in place.
  study_tmp="$(mktemp "$report.md.XXXXXX")"
  trap 'rm -f "$study_tmp"' EXIT
  python -m eval.eval_parse "$out" --plot "$report.png" > "$study_tmp"
  chmod a+r "$study_tmp"  # mktemp makes it owner-only
  mv "$study_tmp" "$report.md"
  cat "$report.md"
}
