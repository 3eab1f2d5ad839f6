"""Reliability (issue 5), fuzz: hypothesis writes >= 10,000 random jobs (texts, options, raw payload
bytes, missing fields) straight into Redis for one live worker.  Each example is one Redis round of
many jobs, so CI time stays bounded.  Oracle: written out by hand from the wire contract (README,
`producer/contract.py`), not computed by vecq's own parser: a job finishes iff its texts and
options are valid for the worker's model; every other job fails with the one-line reason of its
refusal class (first fault in the contract's order); none is left behind; the worker never dies."""

from __future__ import annotations

import re
import threading
import time
import uuid
import zlib
from base64 import b64decode
from collections import Counter

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from vecq.producer.contract import JOB_FUNCTION
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
_near_miss = st.fixed_dictionaries(  # options a typo away from valid, each field on its own
    {},
    optional={
        "model": st.sampled_from([MODEL, " All-MiniLM-L6-v2 ", "other-model", "other-model", ""]),
        "lane": st.sampled_from(["interactive", "bulk", "Bulk", "batch", None]),
        "truncate": st.sampled_from([True, False, 0, 1, "yes"]),
    },
)
_valid = st.fixed_dictionaries(
    {}, optional={"model": st.just(MODEL), "lane": st.sampled_from(["interactive", "bulk"])}
)
_payload = st.one_of(  # (data bytes or None, what it is, the (texts, options) behind it)
    st.tuples(st.lists(_text, min_size=1, max_size=6), _valid).map(
        lambda t: (MsgpackSerializer.dumps((JOB_FUNCTION, None, [t[0]], t[1])), "request", t)
    ),
    st.tuples(st.lists(_text, min_size=1, max_size=6), _near_miss).map(
        lambda t: (MsgpackSerializer.dumps((JOB_FUNCTION, None, [t[0]], t[1])), "request", t)
    ),
    st.tuples(_texts, _options).map(
        lambda t: (MsgpackSerializer.dumps((JOB_FUNCTION, None, [t[0]], t[1])), "request", t)
    ),
    st.binary(max_size=64).map(lambda b: (b, "bytes", None)),
    st.tuples(_scalar, _scalar, _scalar, _scalar).map(
        lambda t: (MsgpackSerializer.dumps(t), "scalars", None)
    ),
    st.just((None, "none", None)),
)
_meta = st.one_of(
    st.none(),
    st.binary(max_size=8),
    st.binary(max_size=6).map(lambda b: b"\x80\x04" + b),  # a pickle's header
    st.dictionaries(st.text(max_size=4), _scalar, max_size=2).map(MsgpackSerializer.dumps),
)
_job = st.tuples(_payload, st.sampled_from([INTERACTIVE, BULK]), _meta)

# --- the oracle, by hand ------------------------------------------------------------------------
KNOWN_OPTIONS = ("dimensions", "lane", "model", "prompt", "prompt_name", "result_dtype", "result_encoding")
KNOWN_OPTIONS += ("truncate",)
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # README: a-z, 0-9, '.', '_', '-'; max 64
#: refusal class -> how its one-line reason may start (each class must be met in the run)
Fault = tuple[str, tuple[str, ...]]
REFUSAL_CLASSES = ("no data", "junk data", "not a function of vecq's", "pickled meta", "bad meta")
REFUSAL_CLASSES += ("unknown option", "texts", "model name", "lane", "truncate", "other model")


def _meta_fault(meta: bytes | None) -> Fault | None:
    """Meta must be empty or a plain msgpack map (read with the msgpack library, not vecq)."""
    if not meta:
        return None
    if meta[:1] == b"\x80" and meta[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickled meta", ("UnsafePayload: job meta: a pickle payload; vecq never unpickles",)

    def no_ext(code: int, data: bytes) -> None:
        raise ValueError("extension")

    try:
        value = msgpack.unpackb(meta, raw=False, strict_map_key=False, ext_hook=no_ext)
    except Exception:
        return "bad meta", ("InvalidJob: job meta: not vecq msgpack (",)
    if isinstance(value, dict):
        return None
    return "bad meta", (f"InvalidJob: job meta: expected a map, got {type(value).__name__}",)


def _texts_fault(texts: object) -> str | None:
    if not isinstance(texts, list):
        return f"BadRequest: texts: expected a list of str, got {type(texts).__name__}"
    if not texts:
        return "BadRequest: texts: empty list (send at least one text)"
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            return f"BadRequest: texts[{i}]: expected str, got {type(t).__name__}"
    return None


def _request_fault(texts: object, options: dict) -> Fault | None:
    """The contract's first fault of a request: option names, then texts, model, lane, truncate
    (the order the request's fields are declared in), then the model served here."""
    unknown = sorted(k for k in options if k not in KNOWN_OPTIONS)
    if unknown:
        return "unknown option", (f"BadRequest: options: unknown option(s) {', '.join(unknown)}; known: ",)
    fault = _texts_fault(texts)
    if fault:
        return "texts", (fault,)
    model = options.get("model", MODEL)
    if not isinstance(model, str):
        return "model name", (f"BadRequest: model: expected str, got {type(model).__name__}",)
    if not MODEL_NAME.fullmatch(model.strip().lower()):
        return "model name", (f"BadRequest: model: {model!r} is not a valid model name",)
    if options.get("lane", "bulk") not in ("interactive", "bulk"):
        return "lane", ("BadRequest: lane: Input should be 'interactive' or 'bulk'",)
    if type(options.get("truncate", True)) is not bool:
        return "truncate", ("BadRequest: truncate: Input should be a valid boolean",)
    if model.strip().lower() != MODEL:
        return "other model", (f"BadRequest: model: {model.strip().lower()!r} is not served here",)
    return None


def _expected(data: bytes | None, kind: str, request: tuple | None, meta: bytes | None) -> Fault | None:
    """The refusal of this job (None: it finishes).  In the order a worker reads a job: data
    present, data decodable, its function, meta, then the request."""
    if not data:  # none, or empty
        return "no data", ("InvalidJob: job hash missing or without a 'data' field (not an rq job)",)
    if kind == "bytes":  # undecodable, a pickle, or a value that is no call of vecq's
        return "junk data", (
            "InvalidJob: job data: ",
            "UnsafePayload: job data: ",
            "InvalidJob: job function: ",
        )
    if kind == "scalars":  # a 4-tuple whose function is a scalar (never vecq's dotted name)
        return "not a function of vecq's", ("InvalidJob: job function: ",)
    assert request is not None
    return _meta_fault(meta) or _request_fault(request[0], request[1])


def _check_round(conn, ids, jobs, states, seen, null_embedder) -> None:  # type: ignore[no-untyped-def]
    """Each job of one round ended as the oracle says, a failure with its class's reason."""
    reasons = _exc_strings(conn, ids)
    for job_id, ((data, kind, request), _, meta), state, reason in zip(
        ids, jobs, states, reasons, strict=True
    ):
        expected = _expected(data, kind, request, meta)
        assert state == (b"failed" if expected else b"finished"), (kind, request, meta, reason)
        if expected is None:
            if seen["finished"] % 50 == 0:
                np.testing.assert_array_equal(vectors_of(conn, job_id), null_embedder.embed(list(request[0])))
            seen["finished"] += 1
            continue
        refusal, starts = expected
        assert reason is not None and reason.startswith(starts), (refusal, kind, request, meta, reason)
        assert "\n" not in reason, reason
        seen[refusal] += 1


def _exc_strings(conn, ids: list[str]) -> list[str | None]:  # type: ignore[no-untyped-def]
    """The latest result's exc_string of each job (rq's stream entry: base64 of zlib)."""
    with conn.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.xrevrange(f"rq:results:{job_id}", count=1)
        entries = pipe.execute()
    out: list[str | None] = []
    for entry in entries:
        raw = entry[0][1].get(b"exc_string") if entry else None
        out.append(zlib.decompress(b64decode(raw)).decode() if raw else None)
    return out


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
    seen: Counter[str] = Counter()

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
            for job_id, ((data, _, _), queue, meta) in zip(ids, jobs, strict=True):
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
        _check_round(redis_conn, ids, jobs, states, seen, null_embedder)
        seen["jobs"] += len(jobs)

    try:
        one_round()
    finally:
        worker.stop()
        thread.join(30)
    assert not crashed and not thread.is_alive()
    failed = sum(seen[c] for c in REFUSAL_CLASSES)
    assert seen["jobs"] >= JOBS_WANTED and seen["finished"] > 1000 and failed > 1000, seen
    assert seen["jobs"] == seen["finished"] + failed, seen
    # every refusal class was met, often: the oracle's rules were all exercised
    assert min(seen[c] for c in REFUSAL_CLASSES) >= 10, seen
    print(f"jobs by outcome: {dict(seen)}")
    assert redis_conn.llen(f"rq:queue:{INTERACTIVE}") == 0 and redis_conn.zcard(f"rq:wip:{INTERACTIVE}") == 0
