#!/usr/bin/env bash
# Every benchmark on one CUDA GPU (H100/H200, torch 2.11), offline, in an expected 4.5-5 minutes
# (an H200 in the seventh session: 277 s without the launch step, which took 21 s at --repeats 20
# and runs 10 here).
#
#   bash benchmarks/gpu_check.sh                   # results under ${OUT:-benchmarks/out}
#   SKIP="memory profile" bash benchmarks/gpu_check.sh   # leave out steps by name
#   WITH="compile" bash benchmarks/gpu_check.sh    # add the optional steps named (compile: ~80 s more)
#
# Steps (each under its own timeout; a failed or timed-out step is reported and the others
# still run; the exit status is non-zero if any failed):
#   imports    the project imports (pip install -e . --no-deps only if not)
#   cuda       torch sees a GPU (else the script stops here)
#   gpu_tests  pytest -m gpu tests/quant tests/trainer: CUDA fake quantization bit-identical to
#              the CPU, the fused kernel to the eager path (every code of 15 formats); an fp16
#              search (GradScaler) drops non-finite samples
#   quantizer  fake-quant throughput vs copy and torch's kernels (64M elements)
#   step       float / fixed INT8 / search step of ResNet-18 (b128, 224px), BERT-base (b32, s128);
#              the quantized ones also with per-layer weight quantization (<name>_per_layer), side by side
#   profile    the same steps' host work, host waits, launches and device work (torch.profiler)
#   overhead   the search's own host work per step, part by part, and the grouped weights' hooks
#   launch     host time per quantizer call, its kernel launch, and a quantized layer's step against a float one
#   memory     peak memory of fixed-format and search (2, 4, 8 options)
# optional (WITH):
#   compile    the quantizer with a torch.compile'd core (bit-exactness checked): a reference
#              point, not a goal
# and finally the summary table against the goals (benchmarks/summarize.py).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR="${OUT:-benchmarks/out}"
PY="${PYTHON:-python3}"
LOG="$OUT_DIR/gpu_check.log"
STEPS="imports cuda gpu_tests quantizer step profile overhead launch memory compile"
OPTIONAL="compile"
for name in ${SKIP:-} ${WITH:-}; do
  if [[ " $STEPS " != *" $name "* ]]; then
    echo "gpu_check: unknown step '$name' in SKIP or WITH; steps: $STEPS (optional, run only if WITH names them: $OPTIONAL)" >&2
    exit 2
  fi
done
mkdir -p "$OUT_DIR"
: > "$LOG"
# This script's results from an earlier run would reach the summary as if new (a skipped or
# failed step writes none): remove them first.
rm -f "$OUT_DIR"/{quantizer_gpu,quantizer_compile_gpu,step_gpu,profile_gpu,overhead_gpu,launch_gpu,memory_gpu}.json \
  "$OUT_DIR/summary.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

declare -a STATUS=()
FAILED=0

# run_step NAME SECONDS COMMAND...: run with a timeout, append output to the log, record status.
# Steps named in SKIP (space-separated, e.g. SKIP="memory profile") are recorded as skipped, and
# so are the optional ones (OPTIONAL) that WITH does not name.
run_step() {
  local name="$1" limit="$2"
  shift 2
  if [[ " $OPTIONAL " == *" $name "* && " ${WITH:-} " != *" $name "* ]]; then
    STATUS+=("$name skipped (optional: WITH=\"$name\" runs it)")
    echo "== $name skipped (optional; WITH=\"$name\" runs it)" | tee -a "$LOG"
    return 0
  fi
  if [[ " ${SKIP:-} " == *" $name "* ]]; then
    STATUS+=("$name skipped")
    echo "== $name skipped (SKIP)" | tee -a "$LOG"
    return 0
  fi
  local start=$SECONDS rc=0
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
  local took=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    STATUS+=("$name ok ${took}s")
  elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
    STATUS+=("$name TIMEOUT ${took}s")
    FAILED=1
  else
    STATUS+=("$name FAILED(rc=$rc) ${took}s")
    FAILED=1
  fi
}

PROJECT_IMPORTS="import benchmarks.step_setup, eval.models, quant.quant_utils, trainer.reinforce_trainer"
CUDA_CHECK='
import sys, torch, transformers
print(f"python {sys.version.split()[0]} torch {torch.__version__} transformers {transformers.__version__}")
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: this script needs a GPU")
print("gpu", torch.cuda.get_device_name(0))
'

# The repo root is on sys.path for `python -m`, so no install is needed; install (no deps)
# only if the project does not import as it is.
if ! "$PY" -c "$PROJECT_IMPORTS" >>"$LOG" 2>&1; then
  echo "project imports failed; trying pip install -e . --no-deps" | tee -a "$LOG"
  "$PY" -m pip install -q -e . --no-deps >>"$LOG" 2>&1 || true
fi
run_step imports 120 "$PY" -c "$PROJECT_IMPORTS"
run_step cuda 60 "$PY" -c "$CUDA_CHECK"
if [[ $FAILED -ne 0 ]]; then
  printf '%s\n' "${STATUS[@]}" | tee -a "$LOG"
  echo "no usable GPU or project imports failed: benchmarks skipped (see $LOG)" | tee -a "$LOG"
  exit 1
fi
run_step gpu_tests 150 "$PY" -m pytest tests/quant tests/trainer -m gpu -q -p no:cacheprovider
run_step quantizer 120 "$PY" -m benchmarks.bench_quantizer --device cuda --repeats 20 \
  --out "$OUT_DIR/quantizer_gpu.json"
run_step step 300 "$PY" -m benchmarks.bench_search_step --device cuda --preset gpu --repeats 20 \
  --fixed_formats int8 --per_layer_weights --out "$OUT_DIR/step_gpu.json"
run_step profile 150 "$PY" -m benchmarks.profile_step --device cuda --preset gpu --repeats 10 --steps 3 \
  --per_layer_weights --out "$OUT_DIR/profile_gpu.json"
run_step overhead 120 "$PY" -m benchmarks.bench_search_overhead --device cuda --preset gpu \
  --repeats 10 --out "$OUT_DIR/overhead_gpu.json"
run_step launch 60 "$PY" -m benchmarks.bench_launch --device cuda --repeats 10 --out "$OUT_DIR/launch_gpu.json"
run_step memory 180 "$PY" -m benchmarks.bench_memory --device cuda --preset gpu \
  --out "$OUT_DIR/memory_gpu.json"

# Last, and only with WITH="compile": the compiled core is a reference point, not a goal, and
# compiling takes the longest.
run_step compile 150 "$PY" -m benchmarks.bench_quantizer --device cuda --compile --repeats 10 \
  --out "$OUT_DIR/quantizer_compile_gpu.json"
echo "== steps" | tee -a "$LOG"
printf '%s\n' "${STATUS[@]}" | tee -a "$LOG"
echo "== summary" | tee -a "$LOG"
"$PY" -m benchmarks.summarize "$OUT_DIR" 2>&1 | tee "$OUT_DIR/summary.txt" | tee -a "$LOG" || FAILED=1
exit "$FAILED"
