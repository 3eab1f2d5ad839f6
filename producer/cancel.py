"""Cancelling a job nobody has taken yet: the work of a request whose caller gave up.

A gateway request that timed out or whose client went away used to leave its job queued and
computed later: after one overloaded minute 20-26k texts of abandoned work were still queued and
goodput halved (issue 15).  `CANCEL_SCRIPT` takes the job off its queue list only if it is still
there -- a worker that took it already finishes it, and its result simply expires -- and then
does what rq's own cancel does (status `canceled`, the queue's canceled registry) plus vecq's
bookkeeping: the queued-texts counter gives its texts back (never below 0) and the job hash gets
the result TTL, so no key outlives it.
"""

from __future__ import annotations

import time

from rq.job import JobStatus

from .keys import canceled_key, job_key, queue_key, queued_texts_key

CANCEL_SCRIPT = """
-- KEYS: queue list, job hash, canceled registry, queued-texts counter
-- ARGV: job id, texts, now (s), ttl (s), status
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'status', ARGV[5])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
if redis.call('DECRBY', KEYS[4], tonumber(ARGV[2])) < 0 then redis.call('SET', KEYS[4], 0) end
return 1
"""


def cancel_args(job_id: str, queue: str, model: str, texts: int, ttl: int) -> tuple[list[str], list[object]]:
    """The script's keys and arguments for a job of `texts` texts on `queue`."""
    keys = [queue_key(queue), job_key(job_id), canceled_key(queue), queued_texts_key(model)]
    return keys, [job_id, texts, int(time.time()), max(1, ttl), JobStatus.CANCELED.value]
