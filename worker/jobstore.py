"""rq's job keys, read and written atomically: take, start, finish, heartbeat, put back.

Stock rq spends ~20 round trips and a full job-hash rewrite per job; at thousands of jobs a
second that bookkeeping, not the model, is the bottleneck.  Here each step for a whole group of
jobs is one Lua script call that writes exactly the keys rq itself writes (same names, same
fields, same scores), so `rq info`, `Job.fetch`, `job.return_value()`, the registries and
`rq requeue` see vecq's jobs as ordinary rq jobs.  The key names come from rq's own templates,
so a custom `RQ_KEY_PREFIX` is honoured.

Leaner than rq on purpose: a job's execution lives in the started registry as rq's own
`job_id:execution_id` entry (what recovery and `rq info` read) and in its result's
`execution_id`; rq's per-execution hash and indexes (`rq:execution:*`, `rq:executions:*`, the
worker's executions set) are not written, since only `Worker.get_current_executions` reads them.

Being scripts, start and finish are also guards: a job is started only if it is still in the
intermediate list this worker moved it to, and finished only if this worker's execution is
still in the started registry -- so a job recovered from a worker that looked dead is never
done twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
from redis import Redis
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result

#: Job-hash fields a worker needs to validate and run a job (their order in `Taken.fields`).
JOB_FIELDS = ("data", "meta", "result_ttl", "enqueued_at")


@dataclass(frozen=True)
class KeyLayout:
    """Prefixes of rq 3.0's keys, derived once from rq's templates."""

    job: str
    queue: str
    started: str
    finished: str
    failed: str
    results: str

    @classmethod
    def from_rq(cls) -> KeyLayout:
        return cls(
            job=Job.key_for(""),
            queue=Queue.redis_queue_namespace_prefix,
            started=StartedJobRegistry.key_template.format(""),
            finished=FinishedJobRegistry.key_template.format(""),
            failed=FailedJobRegistry.key_template.format(""),
            results=Result.get_key(""),
        )

    def intermediate(self, queue_name: str) -> str:
        return IntermediateQueue.get_intermediate_queue_key(self.queue + queue_name)


# KEYS: pairs (queue key, intermediate key) in priority order.  ARGV: max jobs, job key prefix,
# field names.  Returns one msgpack blob (parsed in C, not by redis-py's reply parser): a flat
# list of queue index, job id, then one value per field, per job.
_TAKE = """
local out = {}
local n = tonumber(ARGV[1])
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
for i = 1, #KEYS, 2 do
  while n > 0 do
    local id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
    if not id then break end
    n = n - 1
    out[#out + 1] = (i + 1) / 2
    out[#out + 1] = id
    local values = redis.call('HMGET', ARGV[2] .. id, unpack(fields))
    for j = 1, #fields do out[#out + 1] = values[j] end
  end
end
return cmsgpack.pack(out)
"""

# ARGV: prefixes (job, queue, started), worker name, ttl, now, now_iso, queued-texts counter key
# and the texts to take off it, then a msgpack list of triples (job id, queue name, execution id).  What rq's
# Execution.create + Job.prepare_for_execution write that anything reads: the started-registry
# entry `job:execution` (recovery's source of truth) and the job's status fields -- only if the
# job is still in the intermediate list this worker moved it to (recovery may have put it back
# on its queue meanwhile).
_START = """
local JP, QP, SP, w = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, now, iso = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
if tonumber(ARGV[9]) > 0 then redis.call('DECRBY', ARGV[8], ARGV[9]) end
local started = {}
local runs = cmsgpack.unpack(ARGV[10])
for i = 1, #runs, 3 do
  local id, q, ex = runs[i], runs[i + 1], runs[i + 2]
  if redis.call('LREM', QP .. q .. ':intermediate', 1, id) == 1 then
    redis.call('ZADD', SP .. q, now + ttl, id .. ':' .. ex)
    redis.call('HSET', JP .. id, 'status', 'started', 'started_at', iso, 'last_heartbeat', iso,
               'worker_name', w)
    redis.call('PERSIST', JP .. id)
    started[#started + 1] = id
  end
end
return started
"""

# ARGV: prefixes (job, started, finished, results), worker key, worker name, now, now_iso, then
# a msgpack list of 6-tuples (job id, queue, execution id, execution started_at, result ttl,
# base64 result) -- one argument, so redis-py does not encode thousands of small ones.
# rq's handle_job_success without rewriting the whole job hash; only if this worker's
# execution is still in the started registry.  Returns the ids skipped.
_FINISH = """
local JP, SP, FP, RP = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wkey, w = ARGV[5], ARGV[6]
local now, iso = tonumber(ARGV[7]), ARGV[8]
local skipped = {}
local done, busy = 0, 0
local jobs = cmsgpack.unpack(ARGV[9])
for i = 1, #jobs, 6 do
  local id, q, ex, st = jobs[i], jobs[i + 1], jobs[i + 2], jobs[i + 3]
  local ttl, value = tonumber(jobs[i + 4]), jobs[i + 5]
  if redis.call('ZREM', SP .. q, id .. ':' .. ex) == 1 then
    if ttl == 0 then
      redis.call('DEL', JP .. id)
    else
      local rk = RP .. id
      redis.call('XADD', rk, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', w,
                 'return_value', value, 'execution_id', ex, 'execution_started_at', st,
                 'execution_ended_at', now)
      redis.call('HSET', JP .. id, 'status', 'finished', 'ended_at', iso)
      if ttl > 0 then
        redis.call('EXPIRE', rk, ttl)
        redis.call('EXPIRE', JP .. id, ttl)
        redis.call('ZADD', FP .. q, now + ttl, id)
      else
        redis.call('ZADD', FP .. q, '+inf', id)
      end
    end
    done = done + 1
    busy = busy + (now - tonumber(st))
  else
    skipped[#skipped + 1] = id
  end
end
if done > 0 then
  redis.call('HINCRBY', wkey, 'successful_job_count', done)
  redis.call('HINCRBYFLOAT', wkey, 'total_working_time', busy)
end
return skipped
"""

# ARGV: started prefix, ttl, now, then triples (job id, queue, execution id).  rq's execution
# heartbeat, for the started-registry entry; never re-adds one that recovery already took away.
_HEARTBEAT = """
local SP, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local lost = {}
for i = 4, #ARGV, 3 do
  local id, q, ex = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('ZADD', SP .. q, 'XX', 'CH', now + ttl, id .. ':' .. ex) == 0
     and not redis.call('ZSCORE', SP .. q, id .. ':' .. ex) then
    lost[#lost + 1] = id
  end
end
return lost
"""

# KEYS: queue key, intermediate key.  ARGV: job id.  Puts a job that was taken but never
# started back at the front of its queue, once (whoever removes it from the list wins).
_PUT_BACK = """
if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Taken:
    """One job id moved from a queue to its intermediate list, with the fields of its hash."""

    queue_index: int
    raw_id: bytes  # as stored in the list (garbage stays garbage, to remove it exactly)
    fields: list[bytes | None]

    @property
    def job_id(self) -> str:
        return self.raw_id.decode("utf-8", "replace")


@dataclass(frozen=True)
class Running:
    """What identifies one started execution (enough to heartbeat, finish or fail it)."""

    job_id: str
    queue: str
    execution_id: str


@dataclass(frozen=True)
class Finished:
    """One job's success: its execution, when that started, result TTL, serialized result."""

    running: Running
    started_at: float
    result_ttl: int
    payload: str  # base64 of the serializer's bytes, as rq's result stream stores it


class JobStore:
    """The atomic operations of the batch worker on rq's keys, one script call each."""

    def __init__(self, connection: Redis, *, worker_name: str, worker_key: str) -> None:
        self.connection = connection
        self.keys = KeyLayout.from_rq()
        self.worker_name = worker_name
        self.worker_key = worker_key
        self._take = connection.register_script(_TAKE)
        self._start = connection.register_script(_START)
        self._finish = connection.register_script(_FINISH)
        self._heartbeat = connection.register_script(_HEARTBEAT)
        self._put_back = connection.register_script(_PUT_BACK)

    def take(self, queue_names: list[str], max_jobs: int) -> list[Taken]:
        """Move up to `max_jobs` ids from the queues (in order) to their intermediate lists."""
        keys: list[str] = []
        for name in queue_names:
            keys += [self.keys.queue + name, self.keys.intermediate(name)]
        out = msgpack.unpackb(self._take(keys=keys, args=[max_jobs, self.keys.job, *JOB_FIELDS]), raw=True)
        step = 2 + len(JOB_FIELDS)
        return [
            Taken(int(out[i]) - 1, out[i + 1], [v or None for v in out[i + 2 : i + step]])
            for i in range(0, len(out), step)
        ]

    def start(
        self, runs: list[Running], *, ttl: int, now: float, now_iso: str, counter: tuple[str, int]
    ) -> list[str]:
        """Mark jobs started (started-registry entry, job status) and take their texts off the
        producers' queued-texts `counter` (key, texts); returns the ids started."""
        k = self.keys
        flat: list[object] = []
        for r in runs:
            flat += [r.job_id, r.queue, r.execution_id]
        args = [k.job, k.queue, k.started, self.worker_name, ttl, now, now_iso, *counter, msgpack.packb(flat)]
        return [x.decode() for x in self._start(keys=[], args=args)]

    def finish(self, done: list[Finished], *, now: float, now_iso: str) -> list[str]:
        """Write results and end executions; returns ids skipped as no longer this worker's."""
        k = self.keys
        args: list[object] = [
            k.job,
            k.started,
            k.finished,
            k.results,
            self.worker_key,
            self.worker_name,
            now,
            now_iso,
        ]
        flat: list[object] = []
        for f in done:
            r = f.running
            flat += [r.job_id, r.queue, r.execution_id, f.started_at, f.result_ttl, f.payload]
        args.append(msgpack.packb(flat))
        return [s.decode() for s in self._finish(keys=[], args=args)]

    def heartbeat(self, runs: list[Running], *, ttl: int, now: float) -> list[str]:
        """Extend the started-registry entries of `runs`; returns ids recovery already took away."""
        args: list[object] = [self.keys.started, ttl, now]
        for r in runs:
            args += [r.job_id, r.queue, r.execution_id]
        return [x.decode() for x in self._heartbeat(keys=[], args=args)]

    def put_back(self, queue_name: str, job_id: str | bytes) -> bool:
        """Return a taken-but-never-started job to the front of its queue (False: someone else did)."""
        keys = [self.keys.queue + queue_name, self.keys.intermediate(queue_name)]
        return bool(self._put_back(keys=keys, args=[job_id]))
