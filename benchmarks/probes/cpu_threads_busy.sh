#!/usr/bin/env bash
# Probe (issue 14, item 5): a CPU `vecq worker` (default model, onnx) beside a busy process, with
# --threads from its CPU affinity or forced; needs redis-server and the venv at /work/venv.
#   bash benchmarks/probes/cpu_threads_busy.sh
set -u
source "${VENV:-/work/venv}/bin/activate"
port=6391
redis-server --port $port --save '' --appendonly no --daemonize yes --logfile /tmp/r$port.log
url=redis://127.0.0.1:$port/0
cat > /tmp/bulk.py <<'PY'
import sys, time
from vecq.producer import Client
from vecq.producer.bulk import BulkSubmitter
from vecq.worker.bench.corpus import make_corpus
texts = make_corpus(int(sys.argv[2]), seed=7)
with Client(sys.argv[1]) as c:
    s = BulkSubmitter(c, run_id=sys.argv[3], model='all-minilm-l6-v2', chunk_size=64, window=2048)
    t = time.perf_counter(); n = sum(len(v) for _, v in s.run(texts)); el = time.perf_counter() - t
print(f'{n / el:,.1f} texts/s', flush=True)
PY
run() {  # label, busy-taskset, worker-taskset, worker args
  label=$1; busy=$2; wset=$3; shift 3
  $busy python -c "while True: pass" & bp=$!
  $wset vecq worker --redis $url --log-level WARNING "$@" > /tmp/w.log 2>&1 & wp=$!
  python - <<PY
import time, redis
from rq import Worker
c = redis.Redis.from_url("$url")
t = time.time()
while not Worker.all(connection=c) and time.time() - t < 300: time.sleep(0.2)
PY
  python /tmp/bulk.py $url 100 warm$RANDOM >/dev/null
  echo "$label: $(python /tmp/bulk.py $url 1500 run$RANDOM)"
  kill $wp $bp; wait $wp $bp 2>/dev/null
}
run "pinned to 1 of 2 cores beside a busy core, default threads" "taskset -c 0" "taskset -c 1"
run "pinned to 1 of 2 cores beside a busy core, --threads 2" "taskset -c 0" "taskset -c 1" --threads 2
run "unpinned beside a busy process, default threads (2)" "" ""
run "unpinned beside a busy process, --threads 1" "" "" --threads 1
run "unpinned, no busy process, default threads (2)" "true" ""
redis-cli -p $port shutdown nosave >/dev/null 2>&1
