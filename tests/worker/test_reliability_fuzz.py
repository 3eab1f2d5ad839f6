"""Reliability (issue 5), fuzz: hypothesis writes >= 10,000 random jobs (texts, options, raw payload
bytes, missing fields) straight into Redis for one live worker.  Each example is one Redis round of
many jobs, so CI time stays bounded.  Oracle: a job finishes iff the wire contract accepts it
(`parse_request`) for the worker's model; every other job fails; none is left behind; the worker
never dies."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from vecq.producer.contract import JOB_FUNCTION, parse_request
from vecq.producer.errors import BadRequest
from vecq.producer.serializer import MsgpackSerializer

from .conftest import BULK, INTERACTIVE, MODEL, vectors_of
from .test_reliability_jobs import push_job

JOBS_WANTED = 10_000
EXAMPLES = 125
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
_text = st.text(max_size=40)
_texts = st.one_of(
    st.lists(_text, min_size=1, max_size=6),
    st.lists(st.one_of(_text, _scalar), max_size=4),
    _scalar,
)
_options = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={"model": st.sampled_from([MODEL, "other-model", "Bad Model!"]), "truncate": st.booleans()},
    ),
    st.dictionaries(st.sampled_from(["model", "lane", "truncate", "pooling", "x"]), _scalar, max_size=3),
)
_valid = st.fixed_dictionaries(
    {}, optional={"model": st.just(MODEL), "lane": st.sampled_from(["interactive", "bulk"])}
)
_payload = st.one_of(  # (data bytes or None, the request behind it if it is one)
    st.tuples(st.lists(_text, min_size=1, max_size=6), _valid).map(
        lambda t: (MsgpackSerializer.dumps((JOB_FUNCTION, None, [t[0]], t[1])), t)
    ),
    st.tuples(_texts, _options).map(
        lambda t: (MsgpackSerializer.dumps((JOB_FUNCTION, None, [t[0]], t[1])), t)
    ),
    st.binary(max_size=64).map(lambda b: (b, None)),
    st.tuples(_scalar, _scalar, _scalar, _scalar).map(lambda t: (MsgpackSerializer.dumps(t), None)),
    st.just((None, None)),
)
_job = st.tuples(_payload, st.sampled_from([INTERACTIVE, BULK]), st.one_of(st.none(), st.binary(max_size=8)))


def _should_finish(request: tuple | None) -> bool:
    if request is None:
        return False
    try:
        return parse_request([request[0]], request[1]).model == MODEL
    except BadRequest:
        return False


@pytest.mark.slow
def test_ten_thousand_random_jobs_each_finish_or_fail(redis_conn, make_worker, null_embedder) -> None:
    worker = make_worker(burst=False)
    crashed: list[BaseException] = []

    def serve() -> None:
        try:
            worker.work(burst=False)
        except BaseException as exc:
            crashed.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    seen = {"jobs": 0, "finished": 0, "failed": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=30_000,
        derandomize=True,
        phases=[Phase.generate],
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(_job, min_size=85, max_size=120))
    def one_round(jobs: list) -> None:
        ids = [uuid.uuid4().hex for _ in jobs]
        with redis_conn.pipeline(transaction=False) as pipe:
            for job_id, ((data, _), queue, meta) in zip(ids, jobs, strict=True):
                push_job(pipe, job_id, data, meta=meta or None, queue=queue)
            pipe.execute()
        deadline = time.monotonic() + 20
        while True:
            with redis_conn.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(f"rq:job:{job_id}", "status")
                states = pipe.execute()
            if all(s in (b"finished", b"failed") for s in states) or crashed:
                break
            assert time.monotonic() < deadline, "a job hung: neither finished nor failed after 20 s"
            time.sleep(0.01)
        assert not crashed and thread.is_alive()
        for job_id, ((_, request), _, meta), state in zip(ids, jobs, states, strict=True):
            # meta that is not an msgpack map fails the job whatever its data
            ok_meta = not meta or isinstance(_loads_or_none(meta), dict)
            expected = b"finished" if _should_finish(request) and ok_meta else b"failed"
            assert state == expected, (request, meta)
            if state == b"finished" and seen["finished"] % 50 == 0:
                np.testing.assert_array_equal(
                    vectors_of(redis_conn, job_id), null_embedder.embed(list(request[0]))
                )
            seen["finished" if state == b"finished" else "failed"] += 1
        seen["jobs"] += len(jobs)

    try:
        one_round()
    finally:
        worker.stop()
        thread.join(30)
    assert not crashed and not thread.is_alive()
    assert seen["jobs"] >= JOBS_WANTED and seen["finished"] > 1000 and seen["failed"] > 1000, seen
    assert redis_conn.llen(f"rq:queue:{INTERACTIVE}") == 0 and redis_conn.zcard(f"rq:wip:{INTERACTIVE}") == 0


def _loads_or_none(raw: bytes) -> object:
    try:
        return MsgpackSerializer.loads(raw)
    except Exception:
        return None
