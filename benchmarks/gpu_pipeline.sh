#!/usr/bin/env bash
# Issue 14 on one H200, after the staged install (../shared/gpu/stage, see scripts/gpu-tests):
#   bash benchmarks/gpu_pipeline.sh host      # worker host path: null packing engine, tokenizer
#                                             # processes 0 vs the default, then the pipeline
#   bash benchmarks/gpu_pipeline.sh seed      # the write-up's workload, then every GPU test
# Writes its logs under $OUT (the device tool's output folder), else /tmp/vecq-out.
set -uo pipefail
cd "$(dirname "$0")/.."
bash .gpu/recv.sh >/tmp/recv.log 2>&1 || { tail -20 /tmp/recv.log; exit 1; }
export PYTHONPATH=/root/vecq-site PYTHONUNBUFFERED=1
out=${OUT:-/tmp/vecq-out}
mkdir -p "$out"
vecq() { python3 -m vecq.worker "$@"; }
head() {
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "cores: $(nproc); code: $(cat .gpu/CODE 2>/dev/null || echo unknown)"
}
case "${1:-host}" in
host)
  head | tee "$out/host.txt"
  for tp in 0 4; do
    echo "== worker_host null, tokenize_processes=$tp" | tee -a "$out/host.txt"
    python3 benchmarks/probes/worker_host.py --backend null --texts 50000 --tokenize-processes $tp 2>&1 \
      | grep -E "^bulk|^worker wall" | tee -a "$out/host.txt"
  done
  head | tee "$out/pipeline.txt"
  vecq bench pipeline --device cuda --texts 50000 --workers 1,2 --latency-requests 200 \
    --backends torch 2>&1 | grep -v "Writing model shards" | tee -a "$out/pipeline.txt"
  ;;
seed)
  head | tee "$out/seed.txt"
  vecq bench engines --device cuda --seed-workload 2>&1 | grep -v "Writing model shards" | tee -a "$out/seed.txt"
  bash scripts/gpu-tests
  ;;
esac
