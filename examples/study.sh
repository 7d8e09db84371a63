# Sourced by examples/pareto_*.sh, which set STUDY_FLAGS (the study's run flags) and call
# run_study NAME CALLER_DIR [OUTPUT_ROOT] [run and launcher flags...]: runs the experiments of
# examples/NAME.yaml x the seeds in $SEEDS (default 0,1,2) into OUTPUT_ROOT (default runs/NAME in
# the repository; a relative one is taken from CALLER_DIR, where the script was started), then
# the report. The report goes to docs/NAME.md/.png (what docs/results.md shows) for the default
# OUTPUT_ROOT, else to OUTPUT_ROOT/NAME.md/.png; it is built even when some runs failed (it lists
# them; the exit status is still the launcher's), and not for --dry_run or a refused launch.
# Running it again: add --skip_completed (keep the completed runs) or --overwrite (run them again).
# A study flag the caller gives too (--num_train_epochs 2, say) takes the caller's value.
# The names of a study flag that has several (eval_run's aliases).
declare -A STUDY_FLAG_NAMES=([--model]="--model --model_type" [--model_type]="--model --model_type")

run_study() {
  local name="$1" caller_dir="$2" out="runs/$1" report status=0 i
  local study_flags=()
  shift 2
  if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then  # a first argument that is not a flag: OUTPUT_ROOT
    out="$1"
    shift
    case "$out" in /*) ;; *) out="$caller_dir/$out" ;; esac
  fi
  # STUDY_FLAGS are flag-value pairs; the launcher refuses a flag given twice (under any of its names).
  for ((i = 0; i < ${#STUDY_FLAGS[@]}; i += 2)); do
    local given=0 spelling
    for spelling in ${STUDY_FLAG_NAMES[${STUDY_FLAGS[i]}]:-${STUDY_FLAGS[i]}}; do
      case " $* " in *" $spelling "* | *" $spelling="*) given=1 ;; esac
    done
    if [ "$given" -eq 0 ]; then study_flags+=("${STUDY_FLAGS[i]}" "${STUDY_FLAGS[i + 1]}"); fi
  done
  if [ "$(realpath -m "$out")" = "$(realpath -m "runs/$name")" ]; then report="docs/$name"; else report="$out/$name"; fi
  python eval_parallel.py --output_root_dir "$out" --experiments "examples/$name.yaml" --sweep "seed=${SEEDS:-0,1,2}" \
    "${study_flags[@]}" "$@" || status=$?
  case " $* " in *" --dry_run "*) return "$status" ;; esac
  # 1: some runs failed (the report lists them); 2: the launch was refused; 130: interrupted.
  if [ "$status" -ne 0 ] && [ "$status" -ne 1 ]; then return "$status"; fi
  # The table goes to a temporary file first: a failed report leaves the previous one in place.
  study_tmp="$(mktemp "$report.md.XXXXXX")"
  trap 'rm -f "$study_tmp"' EXIT
  python -m eval.eval_parse "$out" --plot "$report.png" > "$study_tmp"
  chmod a+r "$study_tmp"  # mktemp makes it owner-only
  mv "$study_tmp" "$report.md"
  cat "$report.md"
  return "$status"
}
