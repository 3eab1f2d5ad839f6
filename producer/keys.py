"""Every Redis key and queue name vecq reads or writes, spelled in this one module.

rq's keys are derived from rq's own templates (`Job.key_for`, the registries' `key_template`...),
so they follow rq, a changed `RQ_KEY_PREFIX` included; nothing else in vecq writes `rq:`.
vecq's own keys start with `vecq:`.  Queue names are `vecq.<model>.<lane>`, built by
`queue_name` and read back only by `parse_queue_name`.

Model names are part of every queue name, so their rule (`model_name`) lives here too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .errors import BadRequest

Lane = Literal["interactive", "bulk"]
LANES: tuple[Lane, ...] = ("interactive", "bulk")  # priority order: interactive first

#: Every vecq queue name starts with this (`vecq status` lists only these).
QUEUE_PREFIX = "vecq."
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def model_name(name: str) -> str:
    """Canonical model name (lower case); queue names are derived from it."""
    if not isinstance(name, str):
        raise BadRequest(f"model: expected str, got {type(name).__name__}")
    canon = name.strip().lower()
    if not _MODEL_NAME.match(canon):
        raise BadRequest(f"model: {name!r} is not a valid model name (a-z, 0-9, '.', '_', '-'; max 64)")
    return canon


# --- queue names ---------------------------------------------------------------------------------
def queue_name(model: str, lane: str) -> str:
    """The rq queue of one model and lane, e.g. `vecq.all-minilm-l6-v2.interactive`."""
    if lane not in LANES:
        raise BadRequest(f"lane: {lane!r} is not one of {', '.join(LANES)}")
    return f"{QUEUE_PREFIX}{model_name(model)}.{lane}"


def queue_names(model: str, lanes: Iterable[str] = LANES) -> list[str]:
    """Queue names in priority order (interactive before bulk), as a worker listens to them."""
    chosen = set(lanes)
    return [queue_name(model, lane) for lane in LANES if lane in chosen]


@dataclass(frozen=True)
class QueueName:
    """A vecq queue name read back into its parts."""

    model: str
    lane: Lane


def parse_queue_name(name: str) -> QueueName | None:
    """The model and lane of a vecq queue name; None for any other name.  Model names may hold
    dots, so the lane is what follows the last one."""
    if not name.startswith(QUEUE_PREFIX):
        return None
    model, _, lane = name[len(QUEUE_PREFIX) :].rpartition(".")
    if lane not in LANES or not _MODEL_NAME.match(model):
        return None
    return QueueName(model, lane)  # type: ignore[arg-type]


# --- rq's keys -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyLayout:
    """The prefixes of rq 3.0's keys (a key is prefix + job id or queue name)."""

    job: str
    queue: str
    queues: str  # the set of every queue's key (rq:queues)
    started: str
    finished: str
    failed: str
    results: str
    executions: str
    worker: str


@functools.cache
def rq_keys() -> KeyLayout:
    """rq's key prefixes, read from rq's own templates (once, at first use: nothing at import)."""
    from rq.executions import ExecutionRegistry
    from rq.job import Job
    from rq.queue import Queue
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
    from rq.results import Result
    from rq.worker import Worker

    return KeyLayout(
        job=Job.key_for(""),
        queue=Queue.redis_queue_namespace_prefix,
        queues=Queue.redis_queues_keys,
        started=StartedJobRegistry.key_template.format(""),
        finished=FinishedJobRegistry.key_template.format(""),
        failed=FailedJobRegistry.key_template.format(""),
        results=Result.get_key(""),
        executions=ExecutionRegistry.key_template.format(""),
        worker=Worker.redis_worker_namespace_prefix,
    )


def job_key(job_id: str) -> str:
    """rq's job hash."""
    return rq_keys().job + job_id


def result_key(job_id: str) -> str:
    """rq's result stream of a job."""
    return rq_keys().results + job_id


def job_keys(job_id: str) -> list[str]:
    """Every key rq keeps for one job (hash, result stream, dependents, executions): what
    deleting a job for good removes."""
    from rq.job import Job

    k = rq_keys()
    return [k.job + job_id, k.results + job_id, Job.dependents_key_for(job_id), k.executions + job_id]


def queue_key(name: str) -> str:
    """rq's list of a queue's waiting job ids."""
    return rq_keys().queue + name


def queue_keys(model: str) -> list[str]:
    """The keys of a model's queue lists, both lanes, priority order."""
    return [queue_key(name) for name in queue_names(model)]


def started_key(name: str) -> str:
    """rq's started registry of a queue (`job_id:execution_id` members, heartbeat deadlines)."""
    return rq_keys().started + name


def finished_key(name: str) -> str:
    return rq_keys().finished + name


def failed_key(name: str) -> str:
    return rq_keys().failed + name


def canceled_key(name: str) -> str:
    """rq's canceled registry of a queue (job ids scored by when they expire)."""
    from rq.registry import CanceledJobRegistry

    return CanceledJobRegistry.key_template.format(name)


def intermediate_key(name: str) -> str:
    """rq's intermediate list of a queue (only stock rq workers fill it)."""
    from rq.intermediate_queue import IntermediateQueue

    return IntermediateQueue.get_intermediate_queue_key(queue_key(name))


# --- vecq's own keys -----------------------------------------------------------------------------
#: Texts waiting in a model's queue lists (both lanes), an integer: see `contract` for who keeps it.
QUEUED_TEXTS_PREFIX = "vecq:queued_texts:"
#: A live worker's health record (JSON), with an expiry of two heartbeat TTLs.
HEALTH_PREFIX = "vecq:health:"


def queued_texts_key(model: str) -> str:
    """The per-model queued-texts counter."""
    return QUEUED_TEXTS_PREFIX + model_name(model)


def health_key(worker_name: str) -> str:
    return HEALTH_PREFIX + worker_name


def cleanup_lock_key(queue: str) -> str:
    """Held (SET NX, shorter than the cleanup interval) by the one worker cleaning a queue."""
    return "vecq:cleanup:" + queue


def stranded_key(queue: str) -> str:
    """When each id in a queue's intermediate list was first seen there (recovery)."""
    return "vecq:stranded:" + queue


#: Where `vecq bench scale` parks a round's queue list until every worker is up.
BENCH_HELD_KEY = "vecq:bench:held"
