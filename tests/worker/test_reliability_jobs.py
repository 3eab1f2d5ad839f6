"""Reliability (issue 5), hostile input: bad jobs written straight to Redis (past the producer's
checks), pickles where rq would unpickle, and no eval/exec/unpickling anywhere in vecq's source.

Cases the producer already refuses at submit are proven in tests/producer/test_validation.py;
those the worker already refuses (garbage data, no data field, someone else's function, unknown
options, wrong model or lane, broken meta) in tests/worker/test_worker.py.  Here: what is left.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import time
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis
from rq.results import Result

from vecq.producer import Client
from vecq.producer.contract import JOB_FUNCTION
from vecq.producer.serializer import MsgpackSerializer, SerializationError

from .conftest import INTERACTIVE, MODEL, enqueue, result_of, run, vectors_of
from .servers import VECQ
from .test_worker import MakesMarker

ROOT = Path(__file__).resolve().parents[2]


def push_job(
    conn: redis.Redis | redis.client.Pipeline,
    job_id: str,
    data: bytes | None,
    *,
    meta: bytes | None = None,
    queue: str = INTERACTIVE,
) -> None:
    """A job hash as any rq client would write it, with `data` exactly as given."""
    fields: dict[str, object] = {"status": "queued", "origin": queue, "created_at": "2026-01-01T00:00:00Z"}
    if data is not None:
        fields["data"] = data
    if meta is not None:
        fields["meta"] = meta
    conn.hset(f"rq:job:{job_id}", mapping=fields)
    conn.rpush(f"rq:queue:{queue}", job_id)


def job_data(texts: object, kwargs: object = None, func: object = JOB_FUNCTION) -> bytes:
    return MsgpackSerializer.dumps((func, None, [texts], {"model": MODEL} if kwargs is None else kwargs))


def _with_bad_utf8(replacement: bytes) -> bytes:
    """Job data whose one text is a msgpack str holding bytes that are not valid UTF-8."""
    raw = job_data(["XYZ"])
    assert raw.count(b"\xa3XYZ") == 1
    return raw.replace(b"\xa3XYZ", b"\xa3" + replacement)


BAD = {  # job id -> (data, the exact exc_string)
    "none-item": (job_data(["ok", None]), "BadRequest: texts[1]: expected str, got NoneType"),
    "none-texts": (job_data(None), "BadRequest: texts: expected a list of str, got NoneType"),
    "empty": (job_data([]), "BadRequest: texts: empty list (send at least one text)"),
    "bytes-item": (job_data([b"raw"]), "BadRequest: texts[0]: expected str, got bytes"),
    "nested": (job_data([["a"]]), "BadRequest: texts[0]: expected str, got list"),
    "ten-mb": (
        job_data(["x" * 10_000_000]),
        "BadRequest: texts[0]: 10000000 characters, over the limit of 100000",
    ),
    "100k-texts": (
        job_data(["t"] * 100_000),
        "BadRequest: texts: 100000 texts in one job, over the limit of 4096",
    ),
    "two-args": (
        MsgpackSerializer.dumps((JOB_FUNCTION, None, [["a"], ["b"]], {})),
        "BadRequest: job args: expected exactly one argument, the list of texts",
    ),
    "kwargs-list": (
        MsgpackSerializer.dumps((JOB_FUNCTION, None, [["a"]], [1])),
        "BadRequest: job kwargs: expected a map of options, got list",
    ),
    "not-a-tuple": (
        MsgpackSerializer.dumps({"f": 1}),
        "InvalidJob: job data: expected (function, instance, args, kwargs)",
    ),
    "method": (
        MsgpackSerializer.dumps((JOB_FUNCTION, "obj", [["a"]], {})),
        "InvalidJob: job instance: vecq jobs call a function, not a method",
    ),
}


def test_each_bad_job_fails_alone_with_its_one_line_reason(redis_conn, make_worker, null_embedder) -> None:
    good = enqueue(redis_conn, [[f"before {i}"] for i in range(50)])
    for job_id, (data, _) in BAD.items():
        push_job(redis_conn, job_id, zlib.compress(data) if job_id == "ten-mb" else data)
    push_job(redis_conn, "lone-surrogate", _with_bad_utf8(b"\xed\xa0\x80"))
    push_job(redis_conn, "invalid-utf8", _with_bad_utf8(b"a\xffb"))
    good += enqueue(redis_conn, [[f"after {i}"] for i in range(50)])
    worker = make_worker()
    run(worker)
    for i, job in enumerate(good):
        text = f"before {i}" if i < 50 else f"after {i - 50}"
        np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed([text]))
    for job_id, (_, reason) in BAD.items():
        res = result_of(redis_conn, job_id)
        assert res is not None and res.type == Result.Type.FAILED and res.exc_string == reason, job_id
    for job_id in ("lone-surrogate", "invalid-utf8"):
        res = result_of(redis_conn, job_id)
        assert res.exc_string.startswith("InvalidJob: job data: not vecq msgpack (undecodable payload ("), res
        assert "UnicodeDecodeError" in res.exc_string and "\n" not in res.exc_string
    failed = {x.decode() for x in redis_conn.zrange(f"rq:failed:{INTERACTIVE}", 0, -1)}
    assert failed == set(BAD) | {"lone-surrogate", "invalid-utf8"}
    assert worker.finished_jobs == 100 and worker.failed_jobs == len(failed)
    assert redis_conn.llen(f"rq:queue:{INTERACTIVE}") == 0 and redis_conn.zcard(f"rq:wip:{INTERACTIVE}") == 0


def _pickle(marker: Path) -> bytes:
    return pickle.dumps(MakesMarker(str(marker)))


def test_pickles_as_meta_result_and_abandoned_job_are_never_unpickled(
    redis_conn, redis_url, make_worker, null_embedder, tmp_path
) -> None:
    marker = tmp_path / "unpickled"
    push_job(redis_conn, "pickled-meta", job_data(["fine"]), meta=_pickle(marker))
    push_job(redis_conn, "pickled-meta-z", job_data(["fine"]), meta=zlib.compress(_pickle(marker)))
    # a result stream entry planted before the job runs: the real result is appended after it
    job = enqueue(redis_conn, [["real result"]])[0]
    redis_conn.xadd(f"rq:results:{job.id}", {"type": 1, "return_value": _pickle(marker), "worker_name": "x"})
    # a started job whose worker died, its data a pickle: recovery fails it (no retries left)
    redis_conn.hset(
        "rq:job:abandoned",
        mapping={
            "status": "started",
            "origin": INTERACTIVE,
            "data": _pickle(marker),
            "meta": _pickle(marker),
        },
    )
    redis_conn.zadd(f"rq:wip:{INTERACTIVE}", {"abandoned:ex1": time.time() - 60})
    worker = make_worker()
    run(worker)
    for job_id in ("pickled-meta", "pickled-meta-z"):
        res = result_of(redis_conn, job_id)
        assert res.exc_string == (
            "UnsafePayload: job meta: a pickle payload; vecq never unpickles "
            "(producers must use vecq.producer.serializer.MsgpackSerializer)"
        )
    np.testing.assert_array_equal(vectors_of(redis_conn, job.id), null_embedder.embed(["real result"]))
    worker.serving.recovery.clean(INTERACTIVE)
    assert redis_conn.hget("rq:job:abandoned", "status") == b"failed"
    assert redis_conn.zrange(f"rq:failed:{INTERACTIVE}", 0, -1) == [
        b"abandoned",
        b"pickled-meta",
        b"pickled-meta-z",
    ]
    status = subprocess.run(
        [*VECQ, "status", "--redis", redis_url, "--sample", "0"], capture_output=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    assert not marker.exists()


# --- no code execution in the source ---------------------------------------------------------
_BANNED_CALLS = {"eval", "exec", "compile", "__import__"}
_BANNED_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "dill", "cloudpickle", "shelve", "joblib"}
#: rq classes that deserialize with pickle unless given `serializer=`.
_RQ_DESERIALIZING = {
    "Job",
    "Queue",
    "Result",
    "StartedJobRegistry",
    "FailedJobRegistry",
    "FinishedJobRegistry",
}
_RQ_STATIC = {"key_for", "get_key", "prepare_data", "dependents_key_for", "get_intermediate_queue_key"}


def unsafe_calls(source: str) -> list[str]:
    """What in `source` could run code from data: eval/exec, unpickling modules, torch.load
    without weights_only, np.load(allow_pickle=True), rq objects built without vecq's serializer."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"import {n}" for n in names if n and n.split(".")[0] in _BANNED_MODULES]
        if not isinstance(node, ast.Call):
            continue
        f, kw = node.func, {k.arg: k.value for k in node.keywords}
        if isinstance(f, ast.Name) and f.id in _BANNED_CALLS:
            found.append(f"{f.id}() at line {node.lineno}")
        dotted = ast.unparse(f)
        if dotted == "torch.load" and not (
            isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value
        ):
            found.append(f"torch.load without weights_only=True at line {node.lineno}")
        if dotted in ("np.load", "numpy.load") and "allow_pickle" in kw:
            found.append(f"np.load(allow_pickle=...) at line {node.lineno}")
        head, _, attr = dotted.partition(".")
        plain = "(" not in dotted and "." not in attr  # `Job(...)`, `Job.fetch(...)`: not `X.y.z()`
        if plain and head in _RQ_DESERIALIZING and attr not in _RQ_STATIC and "serializer" not in kw:
            found.append(f"{dotted}() without serializer= at line {node.lineno}")
    return found


def test_checker_finds_what_it_looks_for() -> None:
    planted = "import pickle\neval('1')\ntorch.load(p)\nJob.fetch('x', connection=c)\nexec(s)\n"
    assert len(unsafe_calls(planted)) == 5
    assert (
        unsafe_calls("model.eval()\nJob.fetch('x', serializer=S)\ntorch.load(p, weights_only=True)\n") == []
    )


def test_package_source_has_no_eval_exec_or_unpickling() -> None:
    files = [p for d in ("engines", "producer", "worker") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 30
    problems = {str(p.relative_to(ROOT)): unsafe_calls(p.read_text()) for p in files}
    assert {k: v for k, v in problems.items() if v} == {}


def test_what_vecq_hands_rq_is_msgpack_and_a_pickle_is_never_loaded(redis_url, make_worker, tmp_path) -> None:
    """The serializer vecq uses instead of pickle, observed where it acts: the worker's rq
    objects carry it, a submitted job's data in Redis is plain msgpack (read with the msgpack
    library itself, not vecq's code), and a pickle fed to it is refused without running."""
    worker = make_worker()
    assert worker.serializer is MsgpackSerializer
    assert {q.serializer for q in worker.queues} == {MsgpackSerializer}
    with Client(redis_url) as client:
        job = client.submit(["plain msgpack"])
        raw = client.connection.hget(job.key, "data")
    func, instance, args, kwargs = msgpack.unpackb(zlib.decompress(raw) if raw[:1] == b"x" else raw)
    assert (func, instance, args, kwargs["model"]) == (JOB_FUNCTION, None, [["plain msgpack"]], MODEL)
    marker = tmp_path / "unpickled"
    with pytest.raises(SerializationError):
        MsgpackSerializer.loads(_pickle(marker))
    assert not marker.exists()
