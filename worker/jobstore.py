"""rq's job keys, read and written atomically: take (and start), finish, heartbeat, put back.

Stock rq spends ~20 round trips and a full job-hash rewrite per job; at thousands of jobs a
second that bookkeeping, not the model, is the bottleneck.  Here each step for a whole group of
jobs is one Lua script call that writes the keys rq itself reads (same names, same fields, same
scores), so `rq info`, `Job.fetch`, `job.return_value()`, the registries and `rq requeue` see
vecq's jobs as ordinary rq jobs.  The key names come from `vecq.producer.keys` (rq's own templates).

Leaner than rq on purpose, since Redis time per job is what caps a batch worker:

- take and start are one atomic step (LPOP many + start each), so there is no intermediate
  list to push to and LREM from, and no window in which a job is neither queued nor started;
- registry writes are one ZADD / ZREM / ZMSCORE per queue with every member, not one per job;
- a job's execution lives in the started registry as rq's own `job_id:execution_id` entry
  (what recovery and `rq info` read) and in its result's `execution_id`; rq's per-execution
  hash and indexes (`rq:execution:*`, `rq:executions:*`, the worker's executions set) are not
  written, since only `Worker.get_current_executions` reads them.

Finish is also a guard: a job is finished only if this worker's execution is still in the
started registry -- so a job recovered from a worker that looked dead is never done twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgpack
from redis import Redis
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError

from vecq.producer.contract import SHAPE_FIELD, TEXTS_FIELD, VECTORS_FIELD
from vecq.producer.keys import intermediate_key, queue_key, rq_keys

from .luatime import UTC_ISO

#: Job-hash fields a worker needs to validate and run a job (their order in `Taken.fields`).
JOB_FIELDS = ("data", "meta", "result_ttl", "enqueued_at", "timeout")


# KEYS: pairs (queue key, started-registry key) in priority order.  ARGV: max jobs, job key
# prefix, worker name, ttl, now, now_iso, execution-id prefix, queued-texts counter key and the
# texts still owed to it, the texts budget, the texts to assume for a job that does not say, then
# the field names -- the first says how many texts a job holds (`TEXTS_FIELD`).  Takes and starts
# in one step: pops ids up to the texts budget (each job's own text count, so one take never
# holds more than the prefetch budget plus one job, however the sizes of waiting jobs vary; at
# least one job), reading each job's fields with one HMGET, and -- for a job whose hash exists --
# writes what rq's Execution.create + Job.prepare_for_execution write that anything reads (job
# status fields, one ZADD of `job:execution` entries per queue).  Nothing sits in an
# intermediate list, so a worker dying after this call leaves only started jobs, which recovery
# retries.  Returns one msgpack blob: per job, queue index, job id, started flag, then one value
# per field.  An empty `now_iso` means "when the script runs" (Redis's TIME, in rq's ISO
# format): a take sent behind a blocking wait starts its jobs when they arrive, not when it was
# sent; where an ACL refuses TIME, the `now` sent stands.
_TAKE_BODY = """
local out = {}
local n = tonumber(ARGV[1])
local JP, w, ttl, now, iso, EX = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
if iso == '' then  -- sent behind a wait: the jobs start now (the sender's clock if TIME is refused)
  local t = redis.pcall('TIME')
  local s, us = math.floor(now), math.floor((now - math.floor(now)) * 1e6)
  if type(t) == 'table' and t[1] then s, us = tonumber(t[1]), tonumber(t[2]) end
  now = s + us / 1e6
  iso = utc_iso(s, us)
end
if tonumber(ARGV[9]) > 0 then redis.call('DECRBY', ARGV[8], ARGV[9]) end
local budget, guess = tonumber(ARGV[10]), tonumber(ARGV[11])
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
local k = 0
for i = 1, #KEYS, 2 do
  if n <= 0 or budget <= 0 then break end
  local ids = redis.call('LRANGE', KEYS[i], 0, n - 1)
  local members = {}
  local m = 0
  for _, id in ipairs(ids) do
    local values = redis.call('HMGET', JP .. id, unpack(fields))
    local cost = tonumber(values[1]) or guess
    if k > 0 and cost > budget then break end
    m = m + 1
    k = k + 1
    budget = budget - cost
    local started = 0
    if values[2] then
      redis.call('HSET', JP .. id, 'status', 'started', 'started_at', iso, 'last_heartbeat', iso,
                 'worker_name', w)
      redis.call('PERSIST', JP .. id)
      members[#members + 1] = now + ttl
      members[#members + 1] = id .. ':' .. EX .. k
      started = 1
    end
    out[#out + 1] = (i + 1) / 2
    out[#out + 1] = id
    out[#out + 1] = started
    for j = 1, #fields do out[#out + 1] = values[j] end
  end
  if m > 0 then
    redis.call('LTRIM', KEYS[i], m, -1)
    n = n - m
    if #members > 0 then redis.call('ZADD', KEYS[i + 1], unpack(members)) end
  end
end
return cmsgpack.pack(out)
"""
_TAKE = UTC_ISO + _TAKE_BODY

# ARGV: prefixes (job, started, finished, results), worker key, worker name, now, now_iso, the
# raw-result field names (vectors, shape), then a msgpack list alternating queue name and a flat
# list of 6-tuples (job id, execution id, execution started_at, result ttl, result, raw shape:
# '' for rq's base64 return value, else "n,dim,dtype" for raw bytes) -- one argument, so
# redis-py does not encode thousands of small ones.  rq's handle_job_success without rewriting
# the whole job hash, and only for executions still in the started registry (one ZMSCORE and one
# ZREM per queue, not per job).  Per job: the result stream entry, status, TTLs.  Returns the ids skipped.
_FINISH = """
local JP, SP, FP, RP = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wkey, w = ARGV[5], ARGV[6]
local now, iso = tonumber(ARGV[7]), ARGV[8]
local skipped = {}
local done, busy = 0, 0
local VF, SF = ARGV[9], ARGV[10]
local groups = cmsgpack.unpack(ARGV[11])
for g = 1, #groups, 2 do
  local q, jobs = groups[g], groups[g + 1]
  local members = {}
  for i = 1, #jobs, 6 do members[#members + 1] = jobs[i] .. ':' .. jobs[i + 1] end
  local scores = redis.call('ZMSCORE', SP .. q, unpack(members))
  local ours, finished = {}, {}
  for m = 1, #members do
    local i = 6 * m - 5
    local id, ex, st = jobs[i], jobs[i + 1], jobs[i + 2]
    local ttl, value, shape = tonumber(jobs[i + 3]), jobs[i + 4], jobs[i + 5]
    if scores[m] then
      ours[#ours + 1] = members[m]
      if ttl == 0 then
        redis.call('DEL', JP .. id)
      else
        local rk = RP .. id
        if shape == '' then
          redis.call('XADD', rk, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', w,
                     'return_value', value, 'execution_id', ex, 'execution_started_at', st,
                     'execution_ended_at', now)
        else
          redis.call('XADD', rk, 'MAXLEN', '~', '10', '*', 'type', '1', 'worker_name', w,
                     VF, value, SF, shape, 'execution_id', ex, 'execution_started_at', st,
                     'execution_ended_at', now)
        end
        redis.call('HSET', JP .. id, 'status', 'finished', 'ended_at', iso)
        if ttl > 0 then
          redis.call('EXPIRE', rk, ttl)
          redis.call('EXPIRE', JP .. id, ttl)
          finished[#finished + 1] = now + ttl
        else
          finished[#finished + 1] = '+inf'
        end
        finished[#finished + 1] = id
      end
      done = done + 1
      busy = busy + (now - tonumber(st))
    else
      skipped[#skipped + 1] = id
    end
  end
  if #ours > 0 then redis.call('ZREM', SP .. q, unpack(ours)) end
  if #finished > 0 then redis.call('ZADD', FP .. q, unpack(finished)) end
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


@dataclass(frozen=True, slots=True)
class Taken:
    """One job id popped from a queue, with the fields of its hash; `execution_id` is set when
    the take also started it (its hash existed), None for an id without a job behind it."""

    queue_index: int
    raw_id: bytes  # as stored in the list (garbage stays garbage)
    fields: list[bytes | None]
    execution_id: str | None
    texts: int | None = None  # the job's `TEXTS_FIELD`: how many texts it says it holds

    @property
    def job_id(self) -> str:
        return self.raw_id.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class PendingTake:
    """A take sent on a connection of its own, its reply not read yet (`JobStore.read_take`)."""

    connection: Connection
    keys: list[str]
    args: list[object]
    prefix: str  # of the execution ids the take gives the jobs it starts
    waits: bool = False  # sent behind a blocking wait, whose reply comes first


@dataclass(frozen=True, slots=True)
class Running:
    """What identifies one started execution (enough to heartbeat, finish or fail it)."""

    job_id: str
    queue: str
    execution_id: str


@dataclass(frozen=True, slots=True)
class Finished:
    """One job's success: its execution, when that started, result TTL, serialized result."""

    running: Running
    started_at: float
    result_ttl: int
    payload: str | bytes  # base64 of the serializer's bytes (rq's return value), or raw bytes
    raw_shape: str = ""  # raw results: "n,dim,<numpy dtype>" (`contract.SHAPE_FIELD`)


class JobStore:
    """The atomic operations of the batch worker on rq's keys, one script call each."""

    def __init__(self, connection: Redis, *, worker_name: str, worker_key: str) -> None:
        self.connection = connection
        self.keys = rq_keys()
        self.worker_name = worker_name
        self.worker_key = worker_key
        self._take_sha = Script(connection, _TAKE).sha  # loaded on first use (NOSCRIPT)
        self._finish = connection.register_script(_FINISH)
        self._heartbeat = connection.register_script(_HEARTBEAT)
        self._put_back = connection.register_script(_PUT_BACK)

    def take(self, queue_names: list[str], max_jobs: int, **options: object) -> list[Taken]:
        """Pop up to `max_jobs` ids and about `budget_texts` texts from the queues (in order) and
        start those that are jobs; the options are `send_take`'s."""
        return self.read_take(self.send_take(queue_names, max_jobs, **options))  # type: ignore[arg-type]

    def send_take(
        self,
        queue_names: list[str],
        max_jobs: int,
        *,
        ttl: int,
        now: float,
        now_iso: str,
        counter: tuple[str, int],
        budget_texts: int,
        guess_texts: float,
        wait: tuple[str, float] | None = None,
        connection: Connection | None = None,
    ) -> PendingTake:
        """Send a take without waiting for it: Redis runs it while the caller works, and
        `read_take` collects the reply.  `guess_texts` counts for a job without `TEXTS_FIELD`
        (written by other producers); `counter` (key, texts) is what the queued-texts counter is
        still owed by earlier takes; `now_iso` "": its jobs start when Redis runs it.

        `wait` (list key, seconds): the take goes behind a wait for a job on that list (BLMOVE
        of the list onto its own head), on the same connection, so Redis runs it the moment a
        job lands -- a round trip less between a query's arrival and its take than waking the
        worker first.  `connection`: the one to use (taken from the pool, given back by
        `read_take` or `abandon`), else one from the pool."""
        keys: list[str] = []
        for name in queue_names:
            keys += [self.keys.queue + name, self.keys.started + name]
        prefix = uuid.uuid4().hex[:20]
        args = [max_jobs, self.keys.job, self.worker_name, ttl, now, now_iso, prefix, *counter]
        args += [max(1, budget_texts), max(1.0, guess_texts), TEXTS_FIELD, *JOB_FIELDS]
        conn = connection or self.connection.connection_pool.get_connection()
        pending = PendingTake(conn, keys, args, prefix, waits=wait is not None)
        try:
            if wait is not None:
                key, seconds = wait
                conn.send_packed_command(
                    conn.pack_commands(
                        [("BLMOVE", key, key, "LEFT", "LEFT", seconds), self._take_command(pending)]
                    )
                )
            else:
                self._send(pending)
        except BaseException:
            self.abandon(pending)
            raise
        return pending

    def read_take(self, pending: PendingTake) -> list[Taken]:
        """The jobs of a take sent by `send_take` (waits for Redis if it is still running it)."""
        try:
            if pending.waits:
                pending.connection.read_response()  # the wait's: a job landed, or it timed out
            try:
                reply = pending.connection.read_response()
            except NoScriptError:  # the server lost its scripts (a restart): load and send again
                self._take_sha = self.connection.script_load(_TAKE)
                self._send(pending)
                reply = pending.connection.read_response()
        except BaseException:
            pending.connection.disconnect()  # a reply may still be on its way: never reuse it
            raise
        finally:
            self.connection.connection_pool.release(pending.connection)
        out = msgpack.unpackb(reply, raw=True)
        step = 4 + len(JOB_FIELDS)
        return [
            Taken(
                int(out[i]) - 1,
                out[i + 1],
                [v or None for v in out[i + 4 : i + step]],
                f"{pending.prefix}{k}" if out[i + 2] else None,
                _int_or_none(out[i + 3]),
            )
            for k, i in enumerate(range(0, len(out), step), start=1)
        ]

    def abandon(self, pending: PendingTake) -> None:
        """Close the connection of a take that will not be read (a late reply must not reach
        the next user of that connection)."""
        pending.connection.disconnect()
        self.connection.connection_pool.release(pending.connection)

    def _send(self, pending: PendingTake) -> None:
        pending.connection.send_command(*self._take_command(pending))

    def _take_command(self, pending: PendingTake) -> tuple[object, ...]:
        keys, args = pending.keys, pending.args
        return ("EVALSHA", self._take_sha, len(keys), *keys, *args)

    def finish(self, done: list[Finished], *, now: float, now_iso: str) -> list[str]:
        """Write results and end executions; returns ids skipped as no longer this worker's."""
        k = self.keys
        by_queue: dict[str, list[object]] = {}
        for f in done:
            r = f.running
            by_queue.setdefault(r.queue, []).extend(
                (r.job_id, r.execution_id, f.started_at, f.result_ttl, f.payload, f.raw_shape)
            )
        groups: list[object] = []
        for queue, flat in by_queue.items():
            groups += [queue, flat]
        args = [k.job, k.started, k.finished, k.results, self.worker_key, self.worker_name, now, now_iso]
        # raw bytes packed as msgpack "raw" strings: the Lua cmsgpack of Valkey rejects bin types
        args += [VECTORS_FIELD, SHAPE_FIELD, msgpack.packb(groups, use_bin_type=False)]
        return [s.decode() for s in self._finish(keys=[], args=args)]

    def heartbeat(self, runs: list[Running], *, ttl: int, now: float) -> list[str]:
        """Extend the started-registry entries of `runs`; returns ids recovery already took away."""
        args: list[object] = [self.keys.started, ttl, now]
        for r in runs:
            args += [r.job_id, r.queue, r.execution_id]
        return [x.decode() for x in self._heartbeat(keys=[], args=args)]

    def put_back(self, queue_name: str, job_id: str | bytes) -> bool:
        """Return a job stranded in an intermediate list (by a stock rq worker, or a vecq worker
        before 0.x) to the front of its queue (False: someone else did)."""
        keys = [queue_key(queue_name), intermediate_key(queue_name)]
        return bool(self._put_back(keys=keys, args=[job_id]))


def _int_or_none(raw: object) -> int | None:
    try:
        return int(raw) if raw else None  # type: ignore[call-overload]
    except ValueError:
        return None
