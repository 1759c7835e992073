#!/usr/bin/env bash
# Runs every benchmark side by side with its peer on this machine; tables on stdout, JSON in bench/results/.
# Needs ../shared/data (the dev crawl). `make bench` sets BENCH_PEER_PYTHON to the datatrove environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p bench/results
for b in bench_readers bench_filters bench_filters_labelled bench_dedup bench_tokenize bench_ray bench_train bench_sft bench_eval bench_parallel; do
  if [ -f "bench/$b.py" ]; then
    echo "=== $b"
    "$PY" "bench/$b.py" "$@"
  fi
done
if [ -f bench/bench_align.py ]; then
  echo "=== bench_align (PPO time split, KV cache vs none)"
  "$PY" bench/bench_align.py ppo --preset small --out bench/results/align_ppo.json
fi
