#!/usr/bin/env bash
# One device call that ranks two versions of the code on the same machine: the step benchmark
# (float, fixed INT8, search with the training reward) of the base tree and of this tree, twice in
# turn, the base's launch benchmark, then this tree's gpu_check.sh. Everything lands in one archive,
# $OUT/results.tgz (a lent machine returns at most 8 files per call).
#
#   git archive <base commit> -o gpu_base.tar      # untracked: it travels with the working tree
#   OUT=$OUT bash benchmarks/gpu_compare.sh          # on the GPU machine, from the repo root
#
# EXTRA (space-separated) adds, before gpu_check.sh:
#   host       the step benchmark's host preset (the gpu models' layers at tiny widths: the step
#              is the host's work), base and new in turn, twice (~40 s; the base must have the preset)
#   recompute  this tree's step benchmark with FLIQS_RECOMPUTE_INPUTS=off and =all (~80 s)
# Wheels the GPU machine lacks (datasets, evaluate, ...) are installed from .whl/ if it is there.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${OUT:?set OUT to the folder for results.tgz}"
BASE_TAR="${BASE_TAR:-gpu_base.tar}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
for name in ${EXTRA:-}; do
  case "$name" in host|recompute) ;; *) echo "gpu_compare: unknown EXTRA '$name'; known: host recompute" >&2; exit 2 ;; esac
done
R=/tmp/res; mkdir -p $R/check
finish() { tar -czf "$OUT/results.tgz" -C $R .; }
trap finish EXIT
nvidia-smi > $R/nvidia_smi.txt 2>&1; lscpu > $R/lscpu.txt 2>&1
mkdir -p /tmp/base && tar -xf "$BASE_TAR" -C /tmp/base
# base_and_new NAME SECONDS FLAGS: the step benchmark of the base tree, then of this one, twice in turn.
base_and_new() {
  local name="$1" limit="$2" flags="$3" round
  for round in 1 2; do
    (cd /tmp/base && PYTHONPATH=/tmp/base:${PYTHONPATH:-} timeout "$limit" python3 -m benchmarks.bench_search_step \
      $flags --out $R/${name}_base_$round.json) > $R/${name}_base_$round.log 2>&1
    timeout "$limit" python3 -m benchmarks.bench_search_step $flags --out $R/${name}_new_$round.json \
      > $R/${name}_new_$round.log 2>&1
  done
}
STEP="--device cuda --preset gpu --repeats 15 --reward_sources train --fixed_formats int8"
base_and_new step 120 "$STEP"
(cd /tmp/base && PYTHONPATH=/tmp/base:${PYTHONPATH:-} timeout 60 python3 -m benchmarks.bench_launch --device cuda \
  --repeats 10 --out $R/launch_base.json) > $R/launch_base.log 2>&1
if [[ " ${EXTRA:-} " == *" host "* ]]; then
  base_and_new host 60 "--device cuda --preset host --repeats 15 --reward_sources train --fixed_formats int8"
fi
if [[ " ${EXTRA:-} " == *" recompute "* ]]; then
  for mode in off all; do
    FLIQS_RECOMPUTE_INPUTS=$mode timeout 120 python3 -m benchmarks.bench_search_step $STEP \
      --out $R/step_new_recompute_$mode.json > $R/step_new_recompute_$mode.log 2>&1
  done
fi
OUT=$R/check SKIP="profile" timeout 330 bash benchmarks/gpu_check.sh > $R/gpu_check_stdout.log 2>&1
echo done
