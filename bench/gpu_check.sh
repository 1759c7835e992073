#!/usr/bin/env bash
# The GPU check (issue 13): tests on CUDA, throughput and MFU, `make pretrain`'s GPU defaults with a
# SIGTERM and a resume, and a sweep; every figure and log goes to $OUT (default bench/results/gpu-check).
#
#   bash bench/gpu_check.sh                  # on a GPU machine: about 8 minutes on an H200
#   bash bench/gpu_check.sh --dry-run        # tiny sizes on a CPU: checks the script, measures nothing
#   bash bench/gpu_check.sh --dry-run --bare # ... as if only torch, numpy and pyarrow were installed
#
# Needs only torch, numpy and pyarrow. Options: python bench/gpu_check.py --help. See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT="${OUT:-bench/results/gpu-check}"
mkdir -p "$OUT"
export OUT PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" bench/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
