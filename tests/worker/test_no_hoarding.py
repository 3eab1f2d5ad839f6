"""A slow worker does not hoard: its prefetch budget follows its measured engine rate (~2 s of
work), so a second worker that joins a queue the first is already draining gets its share."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest
import redis

from vecq.engines import Embedder, ShapeSet
from vecq.producer.keys import job_key, result_key, started_key

from .conftest import BULK, enqueue, run, vectors_of
from .servers import until
from .slow_worker import SlowEngine

pytestmark = pytest.mark.timeout(120)

TEXTS_PER_JOB = 20
DELAY_S = 0.1  # per engine call of at most 16 texts: ~160 texts/s, a budget of ~320 texts


def _slow_embedder() -> Embedder:
    base = Embedder.load(backend="null", shapes=ShapeSet.grid([1, 4, 16], max_seq_len=256))
    return Embedder(spec=base.spec, tokenizer=base.tokenizer, engine=SlowEngine(base.engine, DELAY_S))


def _held(conn: redis.Redis) -> Counter[str]:
    """Texts each worker holds now (started, not yet ended), by worker name."""
    held: Counter[str] = Counter()
    for member in conn.zrange(started_key(BULK), 0, -1):
        name = conn.hget(job_key(member.decode().split(":")[0]), "worker_name")
        held[name.decode() if name else "?"] += TEXTS_PER_JOB
    return held


def test_a_second_worker_joining_a_queue_the_first_is_draining_gets_its_share(
    redis_conn: redis.Redis, make_worker, null_embedder: Embedder
) -> None:
    """1,600 queued texts, a worker at ~160 texts/s with the default prefetch cap (4,096: it could
    take them all) starts first; a second joins once the first holds work.  Each writes at least
    a quarter of the texts, and neither ever holds more than ~2 s of its work plus a job."""
    batches = [[f"share {j} {i}" for i in range(TEXTS_PER_JOB)] for j in range(80)]
    jobs = enqueue(redis_conn, batches, queue=BULK)
    first = make_worker(_slow_embedder(), worker_name="first")
    second = make_worker(_slow_embedder(), worker_name="second")
    peak: Counter[str] = Counter()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.update({k: v - peak[k] for k, v in _held(redis_conn).items() if v > peak[k]})
            time.sleep(0.02)

    threads = [threading.Thread(target=run, args=(first,), daemon=True)]
    threads[0].start()
    until(lambda: _held(redis_conn)["first"] > 0, 30, "the first worker to hold jobs")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads.append(threading.Thread(target=run, args=(second,), daemon=True))
    threads[1].start()
    for t in threads:
        t.join(90)
    done.set()
    sampler.join(5)
    assert not any(t.is_alive() for t in threads), "a worker did not finish"

    written: Counter[str] = Counter()
    for job, texts in zip(jobs, batches, strict=True):
        np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed(texts))
        (entry,) = redis_conn.xrange(result_key(job.id))
        written[entry[1][b"worker_name"].decode()] += len(texts)
    assert set(written) == {"first", "second"} and sum(written.values()) == 1600
    assert min(written.values()) >= 400, f"texts written per worker: {dict(written)}"
    assert max(peak.values()) <= 2 * 160 * 1.5 + TEXTS_PER_JOB, f"peak held: {dict(peak)}"
    print(f"written {dict(written)}, peak held {dict(peak)}")
