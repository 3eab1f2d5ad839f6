"""A thread that wakes the main loop when a query lands on the interactive lane.

While bulk work keeps a worker busy, its main thread takes from Redis once per pass, and passes
follow the engine's batches: a query waited ~7 ms to be taken on the H200 (BENCHMARKS.md, issue
14, "where a query's milliseconds go"), more than everything else on its way.  This thread
blocks on the lane on a connection of its own -- BLMOVE of the list onto its own head, which
returns when a job is there and moves nothing -- and sets the main loop's `wake` event, whose
next pass takes the query (a side take when bulk fills the budget).  It then waits until the
main thread has taken from the lane (`took`), so a query the worker cannot take yet costs a
wake every `RETRY_S`, not a busy loop.  It never takes or changes anything in Redis; a lost
connection only pauses it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence

import redis
from redis import Redis

from vecq.producer.keys import LANES, queue_key

log = logging.getLogger(__name__)

#: Seconds one blocking wait on the lane lasts (a stop also ends it at once, CLIENT UNBLOCK).
BLOCK_S = 1.0
#: Seconds to wait for the main thread to take from the lane before watching it again.
RETRY_S = 0.05
#: Seconds to pause after a Redis error (the main thread's reconnect loop handles the worker).
ERROR_PAUSE_S = 0.5


class LaneWatch:
    """Watches one queue key; `wake` is set when a job waits there."""

    def __init__(self, connection: Redis, key: str, wake: threading.Event) -> None:
        self.pool = connection.connection_pool
        self.connection = connection
        self.key = key
        self.wake = wake
        #: set by the main thread after each take: the job that woke it has had its chance
        self.took = threading.Event()
        #: a job was seen on the lane and no take has happened since (the take policy reads it)
        self.waiting = False
        self.wakes = 0
        self._stopping = threading.Event()
        self._client: int | None = None  # client id of the blocking wait, for CLIENT UNBLOCK
        self._thread: threading.Thread | None = None

    @classmethod
    def for_lanes(
        cls, connection: Redis, queue_names: Sequence[str], lanes: Sequence[str], wake: threading.Event
    ) -> LaneWatch | None:
        """The watch of a worker serving the interactive lane before others; None otherwise (a
        worker of one lane blocks on it in its own takes)."""
        if tuple(lanes[:1]) != (LANES[0],) or len(queue_names) < 2:
            return None
        return cls(connection, queue_key(queue_names[0]), wake)

    def taken(self) -> None:
        """From the main thread, after a take: the job that woke it has had its chance."""
        self.waiting = False
        self.took.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vecq-lane-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self.took.set()
        client = self._client
        if client is not None:
            with contextlib.suppress(redis.RedisError):
                self.connection.client_unblock(client)
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        conn = None
        while not self._stopping.is_set():
            try:
                if conn is None:
                    conn = self.pool.get_connection()
                    conn.send_command("CLIENT", "ID")
                    try:
                        self._client = conn.read_response()
                    except redis.ResponseError:  # refused by an ACL: stops wait out BLOCK_S
                        self._client = None
                conn.send_command("BLMOVE", self.key, self.key, "LEFT", "LEFT", BLOCK_S)
                found = conn.read_response() is not None
            except (redis.RedisError, OSError) as exc:
                log.debug("lane watch: %s; pausing", exc)
                if conn is not None:
                    conn.disconnect()  # a reply may still be on its way: never reuse it
                    self.pool.release(conn)
                    conn, self._client = None, None
                self._stopping.wait(ERROR_PAUSE_S)
                continue
            if found and not self._stopping.is_set():
                self.took.clear()
                self.waiting = True
                self.wakes += 1
                self.wake.set()
                self.took.wait(RETRY_S)
        if conn is not None:
            conn.disconnect()
            self.pool.release(conn)
