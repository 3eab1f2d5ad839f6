"""BatchWorker against real Redis: results, bad jobs, engine errors, rq visibility, rq requeue."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.worker import Worker

from vecq.engines import Embedder
from vecq.producer.keys import queued_texts_key
from vecq.producer.serializer import SERIALIZER_PATH, MsgpackSerializer
from vecq.worker import serving

from .conftest import BULK, INTERACTIVE, MODEL, enqueue, result_of, run, vectors_of
from .servers import free_port, until

VECQ = [sys.executable, "-c", "from vecq.worker.cli import main; main()"]


class MakesMarker:
    """Unpickling this creates a file: the proof that something unpickled the payload."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _registries(conn: redis.Redis, name: str) -> tuple[int, int, int]:
    kw = {"connection": conn, "serializer": MsgpackSerializer}
    return (
        StartedJobRegistry(name, **kw).get_job_count(cleanup=False),
        FinishedJobRegistry(name, **kw).get_job_count(cleanup=False),
        FailedJobRegistry(name, **kw).get_job_count(cleanup=False),
    )


def test_jobs_get_their_vectors_in_order(redis_conn, make_worker, null_embedder) -> None:
    batches = [
        [f"text {i} of job {j} " + "word " * (i * 7 % 40) for i in range(j % 9 + 1)] for j in range(120)
    ]
    jobs = enqueue(redis_conn, batches[:80]) + enqueue(redis_conn, batches[80:], queue=BULK, lane="bulk")
    worker = make_worker()
    run(worker)
    for job, texts in zip(jobs, batches, strict=True):
        got = vectors_of(redis_conn, job.id)
        assert got.dtype == np.float32 and got.shape == (len(texts), null_embedder.dim)
        np.testing.assert_array_equal(got, null_embedder.embed(texts))
        fetched = Job.fetch(job.id, connection=redis_conn, serializer=MsgpackSerializer)
        assert fetched.get_status() == JobStatus.FINISHED
        np.testing.assert_array_equal(fetched.return_value(), got)
    assert _registries(redis_conn, INTERACTIVE) == (0, 80, 0)
    assert _registries(redis_conn, BULK) == (0, 40, 0)
    assert worker.finished_jobs == 120 and worker.texts_done == sum(len(b) for b in batches)
    assert redis_conn.llen(f"rq:queue:{INTERACTIVE}:intermediate") == 0


def _push_raw(conn: redis.Redis, job_id: str, fields: dict, queue: str = INTERACTIVE) -> None:
    if fields:
        conn.hset(f"rq:job:{job_id}", mapping={"status": "queued", "origin": queue, **fields})
    conn.rpush(f"rq:queue:{queue}", job_id)


def test_thousand_jobs_with_ten_poisoned(redis_conn, make_worker, null_embedder, tmp_path: Path) -> None:
    texts = [[f"good text number {i}"] for i in range(990)]
    good = enqueue(redis_conn, texts[:500])
    marker = tmp_path / "unpickled"
    bad: dict[str, str] = {}  # job id -> fragment its reason must contain
    bad[enqueue(redis_conn, [[1, 2]])[0].id] = "BadRequest: texts[0]: expected str, got int"
    q = Queue(INTERACTIVE, connection=redis_conn, serializer=MsgpackSerializer)
    bad[q.enqueue_call("os.getcwd", args=([],)).id] = "is not vecq's (vecq.worker.tasks.embed)"
    _push_raw(redis_conn, "garbage-data", {"data": b"\xc1\xc1\xff garbage"})
    bad["garbage-data"] = "job data: not vecq msgpack"
    _push_raw(redis_conn, "no-data-field", {"description": "half a job"})
    bad["no-data-field"] = "without a 'data' field"
    _push_raw(redis_conn, "a-pickle", {"data": zlib.compress(pickle.dumps(MakesMarker(str(marker))))})
    bad["a-pickle"] = "UnsafePayload: job data: a pickle payload; vecq never unpickles"
    bad[enqueue(redis_conn, [["x"]], color="red")[0].id] = "options: unknown option(s) color"
    bad[enqueue(redis_conn, [["x"]], model="other-model")[0].id] = "model: 'other-model' is not served here"
    bad[enqueue(redis_conn, [["x"]], lane="urgent")[0].id] = "lane"
    bad[enqueue(redis_conn, [["word " * 600]], truncate=False)[0].id] = "TextTooLong: texts[0]: longer than"
    meta_job = enqueue(redis_conn, [["fine text, broken meta"]])[0]
    redis_conn.hset(meta_job.key, "meta", b"\xc1\xc1")
    bad[meta_job.id] = "job meta: not vecq msgpack"
    redis_conn.rpush(f"rq:queue:{INTERACTIVE}", b"\xff\xfe not even a job id")  # no hash at all: dropped
    good += enqueue(redis_conn, texts[500:])
    assert len(bad) == 10

    run(make_worker())

    expected = null_embedder.embed([t[0] for t in texts])
    for i, job in enumerate(good):
        np.testing.assert_array_equal(vectors_of(redis_conn, job.id), expected[i : i + 1])
    reasons = {}
    for job_id, fragment in bad.items():
        res = result_of(redis_conn, job_id)
        assert res is not None and res.type == Result.Type.FAILED, job_id
        assert fragment in res.exc_string and "\n" not in res.exc_string, res.exc_string
        assert redis_conn.hget(f"rq:job:{job_id}", "status") == b"failed"
        reasons[job_id] = res.exc_string
    assert len(set(reasons.values())) == 10
    failed = FailedJobRegistry(INTERACTIVE, connection=redis_conn, serializer=MsgpackSerializer)
    assert sorted(failed.get_job_ids()) == sorted(bad)
    assert _registries(redis_conn, INTERACTIVE) == (0, 990, 10)
    assert redis_conn.llen(f"rq:queue:{INTERACTIVE}") == 0
    assert redis_conn.llen(f"rq:queue:{INTERACTIVE}:intermediate") == 0
    assert not marker.exists()


class PoisonEngine:
    """The null engine, except that a batch holding the poison token fails (like a CUDA error would)."""

    def __init__(self, inner, poison_id: int) -> None:
        self.inner, self.poison_id = inner, poison_id
        self.shapes, self.dim = inner.shapes, inner.dim
        self.calls = 0

    def warmup(self) -> None: ...

    def close(self) -> None: ...

    def run(self, batch):
        self.calls += 1
        if (batch.input_ids[: batch.rows] == self.poison_id).any():
            raise RuntimeError("device-side assert triggered\n(multi-line engine message)")
        return self.inner.run(batch)


def test_poison_text_fails_only_its_job_after_its_retries(redis_conn, make_worker, null_embedder) -> None:
    poison_id = int(null_embedder.tokenizer.encode(["xylophone"]).ids[0][1])
    engine = PoisonEngine(null_embedder.engine, poison_id)
    embedder = Embedder(spec=null_embedder.spec, tokenizer=null_embedder.tokenizer, engine=engine)
    batches = [[f"ordinary text {i}", f"another {i}"] for i in range(30)]
    batches[17] = ["ordinary", "a xylophone here"]
    jobs = enqueue(redis_conn, batches, retries=2)
    run(make_worker(embedder=embedder, max_wait_ms=50))
    for i, job in enumerate(jobs):
        if i == 17:
            continue
        np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed(batches[i]))
    res = result_of(redis_conn, jobs[17].id)
    assert res.type == Result.Type.FAILED
    assert (
        res.exc_string
        == "EngineError: RuntimeError: device-side assert triggered (multi-line engine message)"
    )
    poisoned = Job.fetch(jobs[17].id, connection=redis_conn, serializer=MsgpackSerializer)
    assert poisoned.get_status() == JobStatus.FAILED and poisoned.retries_left == 0
    assert _registries(redis_conn, INTERACTIVE) == (0, 29, 1)


def test_rq_sees_queues_workers_and_counts(redis_conn, make_worker) -> None:
    enqueue(redis_conn, [["a"], ["b"], ["c"]])
    enqueue(redis_conn, [["d"]], queue=BULK, lane="bulk")
    enqueue(redis_conn, [[3]])
    worker = make_worker(burst=False)
    assert Queue(INTERACTIVE, connection=redis_conn).count == 4

    t = threading.Thread(target=worker.work, daemon=True)
    t.start()
    try:
        for _ in range(200):
            if worker.finished_jobs == 4:
                break
            t.join(0.05)
        workers = Worker.all(connection=redis_conn, serializer=MsgpackSerializer)
        assert [w.name for w in workers] == [worker.name]
        assert workers[0].queue_names() == [INTERACTIVE, BULK]
        assert workers[0].successful_job_count == 4 and workers[0].failed_job_count == 1
        assert {q.name for q in Queue.all(connection=redis_conn)} == {INTERACTIVE, BULK}
        assert Queue(INTERACTIVE, connection=redis_conn).count == 0
        assert _registries(redis_conn, INTERACTIVE) == (0, 3, 1)
        assert _registries(redis_conn, BULK) == (0, 1, 0)
        assert redis_conn.exists(f"vecq:health:{worker.name}") == 1
    finally:
        worker.stop()
        t.join(10)
    assert not t.is_alive()
    assert Worker.all(connection=redis_conn, serializer=MsgpackSerializer) == []
    assert redis_conn.exists(f"vecq:health:{worker.name}") == 0


def test_a_worker_stopped_while_waiting_for_jobs_leaves_at_once(redis_conn, make_worker, monkeypatch) -> None:
    """`stop()` wakes the idle wait (CLIENT UNBLOCK) and the pub/sub thread ends with the worker:
    each used to add up to a second to every embedded `vecq embed` run."""
    monkeypatch.setattr(serving, "IDLE_WAIT_S", 120.0)  # read when a worker is made
    for _ in range(3):
        worker = make_worker(burst=False, lanes=("bulk",))  # one queue: a blocking wait, not a poll
        t = threading.Thread(target=worker.work, daemon=True)
        t.start()
        until(lambda w=worker: w.serving.intake._waiter is not None, 30, "the worker waiting for jobs")
        worker.stop()
        t.join(30)  # far less than the 120 s wait: only a wake ends it this soon
        assert not t.is_alive()
        assert not worker.pubsub_thread.is_alive()


class FlakyEngine(PoisonEngine):
    """Fails its first call only."""

    def run(self, batch):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("CUDA out of memory")
        return self.inner.run(batch)


def test_rq_requeue_brings_a_failed_vecq_job_back(redis_conn, redis_url, make_worker, null_embedder) -> None:
    engine = FlakyEngine(null_embedder.engine, -1)
    embedder = Embedder(spec=null_embedder.spec, tokenizer=null_embedder.tokenizer, engine=engine)
    job = enqueue(redis_conn, [["requeue me"]], retries=None)[0]
    run(make_worker(embedder=embedder))
    assert result_of(redis_conn, job.id).exc_string == "EngineError: RuntimeError: CUDA out of memory"
    cmd = [
        sys.executable,
        "-m",
        "rq.cli",
        "requeue",
        "--all",
        "-u",
        redis_url,
        "--queue",
        INTERACTIVE,
        "--serializer",
        SERIALIZER_PATH,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert Queue(INTERACTIVE, connection=redis_conn).job_ids == [job.id]
    run(make_worker(embedder=embedder))
    np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed(["requeue me"]))
    assert _registries(redis_conn, INTERACTIVE) == (0, 1, 0)


def test_worker_takes_texts_off_the_queued_texts_counter(redis_conn, make_worker) -> None:
    enqueue(redis_conn, [["a", "b", "c"]] * 10)
    redis_conn.set(queued_texts_key(MODEL), 30)
    run(make_worker())
    assert int(redis_conn.get(queued_texts_key(MODEL))) == 0


#: What `vecq worker --help` must not load: engine runtimes, model code, the serving worker.
HEAVY = ("torch", "onnxruntime", "onnx", "transformers", "sentence_transformers", "tensorrt", "triton")
HEAVY += ("vecq.worker.worker", "vecq.worker.serving", "vecq.engines.backends.torch")
_HELP_PROBE = f"""import sys
from vecq.worker.cli import main
try:
    main(["worker", "--help"])
except SystemExit as exc:
    code = exc.code
loaded = sorted(m for m in sys.modules if m in {HEAVY!r} or m.split(".")[0] in {HEAVY!r})
print("LOADED", loaded, "CODE", code)
"""


def test_cli_worker_help_is_instant() -> None:
    """`vecq worker --help` answers without importing an engine runtime or the serving worker
    (torch alone takes seconds), and without Redis: its URL here is a closed port."""
    env = {**os.environ, "VECQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    cmd = [sys.executable, "-c", _HELP_PROBE]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert "--max-wait-ms" in out.stdout, out.stderr[-2000:]
    assert out.stdout.rstrip().endswith("LOADED [] CODE 0"), out.stdout[-500:] + out.stderr[-2000:]


class SlowEngine(PoisonEngine):
    """The null engine, taking `seconds` per call."""

    def __init__(self, inner, seconds: float) -> None:
        super().__init__(inner, poison_id=-1)
        self.seconds = seconds

    def run(self, batch):
        import time

        time.sleep(self.seconds)
        return super().run(batch)


def test_a_job_is_failed_after_its_own_timeout(redis_conn, redis_url, make_worker, null_embedder) -> None:
    """The producer's job timeout travels with the job (rq's `timeout` field) and the worker
    applies it: one meaning of VECQ_JOB_TIMEOUT for both.  A job that may take 1 s fails after
    about that long; one with the default (600 s) on the same slow engine finishes."""
    from vecq.producer import Client, ProducerSettings

    engine = SlowEngine(null_embedder.engine, seconds=2.5)
    embedder = Embedder(spec=null_embedder.spec, tokenizer=null_embedder.tokenizer, engine=engine)
    with Client(redis_url, settings=ProducerSettings(job_timeout=1, job_retries=0)) as hurried:
        short = hurried.submit(["must be quick"])
    with Client(redis_url) as patient:
        long = patient.submit(["may take its time"])
    assert redis_conn.hget(f"rq:job:{short.id}", "timeout") == b"1"
    assert redis_conn.hget(f"rq:job:{long.id}", "timeout") == b"600"
    run(make_worker(embedder, heartbeat_ttl=3), timeout=60)
    failed = Job.fetch(short.id, connection=redis_conn, serializer=MsgpackSerializer)
    assert failed.get_status() == JobStatus.FAILED
    assert "JobTimeoutException: not done within 1s" in (failed.latest_result().exc_string or "")
    np.testing.assert_array_equal(vectors_of(redis_conn, long.id), null_embedder.embed(["may take its time"]))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bulk_results_travel_raw_in_the_dtype_asked_for(
    redis_conn, redis_url, make_worker, null_embedder, dtype
):
    """A bulk run's results are the vectors' bytes (no base64, no rq return value), float32 or
    float16 (half the bytes); the submitter hands back float32, within cosine 0.9999 of float32."""
    from vecq.engines.parity import cosines
    from vecq.producer import BulkSubmitter, Client
    from vecq.producer.enqueue import new_job_id
    from vecq.producer.results import decode_entry

    numpy_dtype, width = {"float32": ("<f4", 4), "float16": ("<f2", 2)}[dtype]
    with Client(redis_url) as client:  # one raw job, its entry read as Redis holds it
        request = client.request(["one raw result"], lane="bulk", result_dtype=dtype, result_encoding="raw")
        [job] = client.enqueuer.enqueue([(request, new_job_id())])
    run(make_worker(lanes=("bulk",)))
    [(entry_id, payload)] = redis_conn.xrange(f"rq:results:{job.id}")
    assert b"return_value" not in payload
    assert payload[b"vecq_shape"] == f"1,{null_embedder.dim},{numpy_dtype}".encode()
    assert len(payload[b"vecq_vectors"]) == null_embedder.dim * width
    one = decode_entry(job.id, entry_id, payload)
    assert one.dtype == np.float32 and cosines(one, null_embedder.embed(["one raw result"]))[0] >= 0.9999

    texts = [f"bulk text {i} " + "word " * (i % 17) for i in range(600)]
    worker = make_worker(lanes=("bulk",), burst=False)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with Client(redis_url) as client:
            bulk = BulkSubmitter(client, run_id=f"raw-{dtype}", chunk_size=100, result_dtype=dtype)
            got = dict(bulk.run(texts))
    finally:
        worker.stop()
        thread.join(30)
    vectors = np.concatenate([got[k] for k in sorted(got)])
    reference = null_embedder.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    if dtype == "float32":
        np.testing.assert_array_equal(vectors, reference)
    else:
        assert cosines(vectors, reference).min() >= 0.9999


def test_a_take_behind_a_wait_starts_the_job_when_it_lands(redis_url: str) -> None:
    """An idle worker's take goes to Redis behind its wait for a job (one exchange, no wake-up
    round trip between a query landing and its take): the job comes back started, dated when
    it landed -- after it was enqueued -- not when the take was sent."""
    import time

    from rq.utils import utcparse

    from vecq.worker.intake import Intake
    from vecq.worker.jobstore import JobStore
    from vecq.worker.takepolicy import Take

    conn = redis.Redis.from_url(redis_url)
    store = JobStore(conn, worker_name="w", worker_key="rq:worker:w")
    intake = Intake(conn, store, [INTERACTIVE], model=MODEL, heartbeat_ttl=15)
    later = threading.Timer(0.4, lambda: enqueue(conn, [["arrives late"]]))
    sent = time.time()
    later.start()
    taken = intake.take(Take(64, block_s=5.0))
    later.join()
    assert [t.execution_id is not None for t in taken] == [True]
    job = Job.fetch(taken[0].job_id, connection=conn, serializer=MsgpackSerializer)
    assert job.get_status() == JobStatus.STARTED
    started = utcparse(conn.hget(job.key, "started_at").decode()).timestamp()
    assert started >= job.enqueued_at.timestamp() >= sent + 0.3
    assert intake.take(Take(64)) == []  # nothing else was taken, nothing left behind
