#!/usr/bin/env bash
# The CPU test suite with the Hugging Face packages of the lent GPU machine, which are older than
# this environment's: transformers 5.17.0 and huggingface_hub 1.33.0 (its accelerate, 1.15.0,
# is the same; /work/.library/device/KINDS.md lists its packages). Not part of CI: it needs the
# package registry. torch stays this environment's (the GPU machine's 2.11 is a CUDA build), so
# this checks the Trainer and hub APIs the project uses, not torch's.
#
#   bash .ci/gpu_stack_compat.sh [pytest arguments]     # e.g. tests/trainer -x
#
# Packages go to $GPU_STACK_DIR (default /tmp/fliqs_gpu_stack), ahead of the active environment
# on PYTHONPATH; the active environment must already hold the project's other requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=${GPU_STACK_DIR:-/tmp/fliqs_gpu_stack}
if [ ! -f "$STACK/.complete" ]; then
  rm -rf "$STACK/pinned" "$STACK/deps"  # only what this script put there
  # --no-deps: their other requirements are the environment's. transformers 5.17 imports httpx
  # (later releases do not): httpx and httpcore come pinned, without their dependencies (anyio,
  # h11, idna, certifi), which the environment must have.
  python -m pip install -q --no-deps --target "$STACK/pinned" transformers==5.17.0 huggingface_hub==1.33.0
  python -m pip install -q --no-deps --target "$STACK/deps" httpx==0.28.1 httpcore==1.0.9
  touch "$STACK/.complete"
fi

export PYTHONPATH="$STACK/pinned:$STACK/deps:."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -c 'import transformers, huggingface_hub, accelerate, torch
print(f"transformers {transformers.__version__}, huggingface_hub {huggingface_hub.__version__}, "
      f"accelerate {accelerate.__version__}, torch {torch.__version__}")'
if [ "$#" -eq 0 ]; then
  set -- tests -q
fi
python -m pytest "$@"
