"""Per-job deadlines (issue 15): a job taken after its deadline fails alone as
`DeadlineExceeded` and is not computed; its batch-mates without one, or within theirs, finish."""

from __future__ import annotations

import time

import numpy as np
import redis

from vecq.producer import Client
from vecq.producer.contract import DEADLINE_KEY

from .conftest import MODEL, result_of, run, vectors_of


def test_a_job_past_its_deadline_fails_alone_and_is_not_computed(
    redis_url: str, redis_conn: redis.Redis, make_worker, null_embedder
) -> None:
    with Client(redis_url) as client:
        late = client.submit(["nobody waits for me"], model=MODEL, deadline_s=0.0)
        on_time = client.submit(["still wanted"], model=MODEL, deadline_s=60.0)
        plain = client.submit(["no deadline"], model=MODEL)
    assert late.meta[DEADLINE_KEY] <= time.time() < on_time.meta[DEADLINE_KEY]
    assert DEADLINE_KEY not in plain.meta
    time.sleep(0.05)
    worker = make_worker()
    run(worker)
    res = result_of(redis_conn, late.id)
    assert res is not None and res.exc_string.startswith("DeadlineExceeded: taken ")
    assert res.exc_string.endswith("after its deadline (nobody waits for it); not computed")
    for job, text in ((on_time, "still wanted"), (plain, "no deadline")):
        np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed([text]))
    assert worker.serving.jobs.tally.texts == 2  # the late one never reached the engine
    failures = worker.metrics.registry.get_sample_value("vecq_job_failures_total", {"reason": "deadline"})
    assert failures == 1.0
