"""What `vecq status` and `vecq health` read: vecq's queues, workers and health keys in Redis.

Read-only and side-effect free: registry sizes are read with ZCARD rather than through rq's
`registry.count`, which would run a cleanup (and, without the right serializer, unpickle).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from redis import Redis
from rq.queue import Queue
from rq.worker import Worker

from vecq.producer.keys import (
    HEALTH_PREFIX,
    QUEUE_PREFIX,
    failed_key,
    finished_key,
    intermediate_key,
    parse_queue_name,
    queue_key,
    queued_texts_key,
    started_key,
)
from vecq.producer.serializer import MsgpackSerializer


@dataclass(frozen=True)
class QueueRow:
    name: str
    queued: int  # jobs waiting in the list
    taken: int  # jobs moved to the intermediate list, not started yet
    started: int
    finished: int
    failed: int


@dataclass(frozen=True)
class WorkerRow:
    name: str
    state: str
    queues: list[str]
    finished: int
    failed: int
    healthy: bool  # its health key is alive (vecq workers; False for stock rq workers)


@dataclass
class Report:
    queues: list[QueueRow] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)
    queued_texts: dict[str, int] = field(default_factory=dict)
    jobs_per_s: float | None = None
    texts_per_s: float | None = None

    @property
    def in_flight(self) -> int:
        return sum(q.taken + q.started for q in self.queues)


def health(connection: Redis) -> dict[str, dict]:
    """The live health records of vecq workers, by worker name."""
    out: dict[str, dict] = {}
    for key in connection.scan_iter(match=HEALTH_PREFIX + "*", count=500):
        raw = connection.get(key)
        if raw:
            out[key.decode()[len(HEALTH_PREFIX) :]] = json.loads(raw)
    return out


def gather(connection: Redis, *, sample_s: float = 1.0) -> Report:
    """Queues named `vecq.*`, the workers listening on them, and throughput over `sample_s`."""
    names = sorted(
        q.name
        for q in Queue.all(connection=connection, serializer=MsgpackSerializer)
        if parse_queue_name(q.name) is not None
    )
    report = Report()
    with connection.pipeline(transaction=False) as pipe:
        for n in names:
            pipe.llen(queue_key(n))
            pipe.llen(intermediate_key(n))
            for key in (started_key, finished_key, failed_key):
                pipe.zcard(key(n))
        sizes = pipe.execute()
    for i, n in enumerate(names):
        report.queues.append(QueueRow(n, *sizes[5 * i : 5 * i + 5]))
    for model in sorted({parse_queue_name(n).model for n in names}):  # type: ignore[union-attr]
        raw = connection.get(queued_texts_key(model))
        report.queued_texts[model] = max(0, int(raw)) if raw else 0  # an estimate (see contract)
    before = health(connection)
    for w in Worker.all(connection=connection, serializer=MsgpackSerializer):
        if any(q.startswith(QUEUE_PREFIX) for q in w.queue_names()):
            report.workers.append(
                WorkerRow(
                    w.name,
                    str(w.get_state()),
                    w.queue_names(),
                    w.successful_job_count,
                    w.failed_job_count,
                    w.name in before,
                )
            )
    if sample_s > 0 and before:
        time.sleep(sample_s)
        after = health(connection)
        common = before.keys() & after.keys()
        report.jobs_per_s = sum(after[k]["finished"] - before[k]["finished"] for k in common) / sample_s
        report.texts_per_s = sum(after[k]["texts"] - before[k]["texts"] for k in common) / sample_s
    return report


def render(report: Report, *, url: str) -> str:
    """The report as a few aligned lines of text."""
    lines = [f"redis: {url}"]
    lines.append(f"{'queue':<44} {'queued':>8} {'taken':>7} {'started':>8} {'finished':>9} {'failed':>7}")
    for q in report.queues:
        lines.append(f"{q.name:<44} {q.queued:>8} {q.taken:>7} {q.started:>8} {q.finished:>9} {q.failed:>7}")
    if not report.queues:
        lines.append("(no vecq queues)")
    for model, n in report.queued_texts.items():
        lines.append(f"queued texts ({model}): {n}")
    lines.append(f"in flight: {report.in_flight} job(s)")
    lines.append(f"workers: {len(report.workers)}")
    for w in report.workers:
        mark = "healthy" if w.healthy else "no health key"
        lines.append(f"  {w.name}  {w.state}  {w.finished} finished, {w.failed} failed  ({mark})")
    if report.jobs_per_s is not None:
        lines.append(f"throughput: {report.jobs_per_s:.1f} jobs/s, {report.texts_per_s:.1f} texts/s")
    return "\n".join(lines)


def check_health(
    connection: Redis, *, worker: str | None = None, model: str | None = None, host: str | None = None
) -> tuple[bool, str]:
    """Healthy if the named worker (else any vecq worker, of `model` and on `host` if given) has
    a live health key.  `host` is how a container's probe checks its own workers, whose names
    are random: a pod's or container's hostname is its own."""
    records = health(connection)
    if worker is not None:
        rec = records.get(worker)
        return (rec is not None, f"worker {worker}: {'healthy' if rec else 'no live health key'}")
    alive = [
        n
        for n, r in records.items()
        if (model is None or r.get("model") == model) and (host is None or r.get("host") == host)
    ]
    what = " ".join(f"{k} {v}" for k, v in (("model", model), ("host", host)) if v) or "vecq"
    if alive:
        return True, f"{what}: {len(alive)} healthy worker(s)"
    return False, f"{what}: no healthy worker"
