#!/usr/bin/env bash
# Several GPUs, one `vecq worker` per GPU, one Redis (issue 7): `vecq bench scale --device gpus`
# puts the same bulk corpus through 1, 2, 4... GPUs (a supervisor with `--gpus 0..N-1`, as
# operators run it), checks every job finished exactly once, and reads Redis's CPU and bytes.
#
# One device call, no staging: the torch backend needs no onnxruntime-gpu, so the few wheels the
# GPU image lacks travel in .whl (git-ignored; see the device README for the download line):
#   run kind=nvidia-h200-x4 carry=[".whl"] command='bash benchmarks/gpu_scale_gpus.sh'
# Env: SCALE_GPUS (default 1,2,4), SCALE_TEXTS (default 200000).
set -euo pipefail
out=${OUT:-/tmp/vecq-out}
site=/tmp/vecq-site
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" . >/dev/null
export PYTHONPATH=$site
vecq() { python3 -m vecq.worker "$@"; }
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
  echo "cores: $(nproc)"
  git log -1 --format='code: %h %s' 2>/dev/null || true
} | tee "$out/gpu.txt"

# A random BERT-base (12 x 768, bert-base-uncased's WordPiece tokenizer, CLS pooling), torch fp16 on CUDA.
python3 -c "from vecq.engines.random_model import write_random_bert; write_random_bert('/tmp/bert-base', vocab='english')"
vecq build /tmp/bert-base --out /tmp/bundle --backend torch --device cuda --precision fp16 \
  --batch-sizes 16,32,64,128 2>&1 | tail -2 | tee -a "$out/gpu.txt"

# GPU utilisation of every card while the rounds run.
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -lms 500 \
  >"$out/smi.csv" 2>/dev/null &
smi=$!
trap 'kill $smi 2>/dev/null || true' EXIT
vecq bench scale --workers "${SCALE_GPUS:-1,2,4}" --device gpus --backend torch --bundle /tmp/bundle \
  --texts "${SCALE_TEXTS:-200000}" --load-timeout 240 --json "$out/scale.json" 2>&1 | tee "$out/scale.txt"
