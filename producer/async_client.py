"""`AsyncClient`: `Client` for asyncio apps; waiting for results never blocks the event loop.

Waiting (the long part) is native redis.asyncio: `embed` waits through the client's
`ResultHub`, one `XREAD BLOCK` over the result streams of all its waiting jobs on one
connection; `result` is one `XREAD BLOCK` of its own; both decode with rq's `Result` format and
`MsgpackSerializer`, as the sync client does.  Enqueueing
(one short round trip) reuses rq's own job-building code on a few writer threads of the
client's own (`ENQUEUE_THREADS`): rq is the one writer of its job hashes, so `rq info` / `rq
requeue` keep working and an rq upgrade changes vecq's writes with it.  An async copy of rq's
writes would drift from rq's layout silently.  The threads are the client's own, few, because
each holds a sync connection: on asyncio's default executor (cores + 4 threads) a gateway on a
16-core host held 23 Redis connections under load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import redis
from rq.job import Job

from . import backpressure
from .cancel import CANCEL_SCRIPT, cancel_args
from .client import Client
from .connection import acall, open_async
from .contract import DEFAULT_MODEL, ResultDtype
from .enqueue import new_job_id
from .errors import JobTimeout
from .hub import ResultHub
from .keys import model_name
from .rerank import RerankResult, check_rerank, ranked
from .results import await_result
from .settings import ProducerSettings

#: Threads (and so sync Redis connections at most) that write jobs.
ENQUEUE_THREADS = 4


class AsyncClient:
    """The same calls as `Client`, as coroutines.  Create it inside or outside a running loop.

    It holds two connection pools to the same URL: an asyncio one for waiting and counting, and
    the sync one of an inner `Client` that rq writes jobs through.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        max_queued_texts: int | None = None,
        settings: ProducerSettings | None = None,
    ) -> None:
        self.sync = Client(url, max_queued_texts=max_queued_texts, settings=settings)
        self.url = self.sync.url
        self.policy = self.sync.policy
        self.max_queued_texts = self.sync.max_queued_texts
        self.connection = open_async(self.url, connect_timeout=self.sync.settings.socket_connect_timeout)
        self._count_script = self.connection.register_script(backpressure.COUNT_SCRIPT)  # EVALSHA
        self._cancel_script = self.connection.register_script(CANCEL_SCRIPT)
        self._writers = ThreadPoolExecutor(ENQUEUE_THREADS, thread_name_prefix="vecq-enqueue")
        #: jobs `embed` cancelled because their caller gave up before a worker took them
        self.canceled_jobs = 0
        #: where `embed` waits: one reader for all of this client's waiting jobs (`hub.py`)
        self.hub = ResultHub(
            self.url, policy=self.policy, connect_timeout=self.sync.settings.socket_connect_timeout
        )

    async def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        lane: str = "interactive",
        timeout: float | None = 30,
        truncate: bool = True,
        result_dtype: ResultDtype = "float32",
        prompt_name: str | None = None,
        prompt: str | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """`Client.embed`, awaiting the result instead of blocking; however many run at once,
        their waits share one connection (`ResultHub`).  Unlike `Client.embed`, a timeout or a
        cancelled await (a web request whose client went away) cancels the job if no worker has
        taken it yet: nobody is left to read its result.  To keep a job past its wait, use
        `submit` and `result`."""
        job = await self.submit(
            texts, model=model, lane=lane, truncate=truncate, result_dtype=result_dtype, deadline_s=timeout,
            prompt_name=prompt_name, prompt=prompt, dimensions=dimensions,
        )  # fmt: skip
        return await self._wait(job, model, len(texts), timeout)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        model: str | None = None,
        top_n: int | None = None,
        lane: str = "interactive",
        timeout: float | None = 30,
    ) -> list[RerankResult]:
        """`Client.rerank`, awaited; a timeout or a cancelled await cancels the job if no
        worker has taken it yet, as `embed` does."""
        check_rerank(documents, top_n)
        job = await self.submit(documents, model=model, lane=lane, deadline_s=timeout, query=query)
        return ranked(await self._wait(job, model, len(documents), timeout), top_n)

    async def _wait(self, job: Job, model: str | None, texts: int, timeout: float | None) -> np.ndarray:
        """The job's result through the hub; the job cancelled if its caller gives up first."""
        try:
            return await self.hub.wait(job.id, timeout)
        except (JobTimeout, asyncio.CancelledError):
            # the caller gave up: its job must not be computed for nobody
            await asyncio.shield(self.cancel_untaken(job, model_name(model or DEFAULT_MODEL), texts))
            raise

    async def cancel_untaken(self, job: Job, model: str, texts: int) -> bool:
        """Cancel `job` if no worker has taken it yet (`cancel.py`); True if it was.  Never
        raises: Redis away only means the job stays queued, as it would have anyway."""
        keys, args = cancel_args(job.id, job.origin, model, texts, self.sync.settings.result_ttl)
        try:
            canceled = bool(await self._cancel_script(keys=keys, args=args))
        except (redis.RedisError, OSError):
            return False
        self.canceled_jobs += canceled
        return canceled

    async def submit(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        lane: str = "interactive",
        truncate: bool = True,
        job_id: str | None = None,
        wait_for_room: float | None = None,
        result_dtype: ResultDtype = "float32",
        deadline_s: float | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        dimensions: int | None = None,
        query: str | None = None,
    ) -> Job:
        """`Client.submit`; waiting for room sleeps on the loop, the rq write runs on a writer
        thread."""
        request = self.sync.request(
            texts, model=model, lane=lane, truncate=truncate, result_dtype=result_dtype,
            prompt_name=prompt_name, prompt=prompt, dimensions=dimensions, query=query,
        )  # fmt: skip
        await self.wait_for_room(request.model, len(request.texts), wait_for_room)
        items = [(request, job_id or new_job_id())]
        write = partial(self.sync.enqueuer.enqueue, items, deadline_s=deadline_s)
        jobs = await asyncio.get_running_loop().run_in_executor(self._writers, write)
        return jobs[0]

    async def result(self, job_or_id: Job | str, *, timeout: float | None = 30) -> np.ndarray:
        """`Client.result` on redis.asyncio (a wait of its own, which also tells a job that does
        not exist: `JobNotFound`)."""
        job_id = job_or_id.id if isinstance(job_or_id, Job) else str(job_or_id)
        return await await_result(self.connection, job_id, timeout, policy=self.policy, url=self.url)

    async def queued_texts(self, model: str | None = None) -> int:
        """`Client.queued_texts` on redis.asyncio."""
        keys = backpressure.count_keys(model_name(model or DEFAULT_MODEL))
        jobs, counter = await acall(self.policy, self.url, lambda: self._count_script(keys=keys))
        return backpressure.estimate(jobs, counter)

    async def wait_for_room(self, model: str, n_texts: int, deadline_s: float | None) -> None:
        """`Client.wait_for_room`, sleeping on the event loop."""
        if self.max_queued_texts is None:
            return
        wait = backpressure.RoomWait(model, n_texts, self.max_queued_texts, deadline_s)
        while (delay := wait.after(await self.queued_texts(model))) is not None:
            await asyncio.sleep(delay)

    async def ping(self) -> bool:
        """True if Redis answers; `RedisUnavailable` (password masked) if not."""
        return bool(await acall(self.policy, self.url, self.connection.ping))  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self.hub.aclose()
        await self.connection.aclose()
        self._writers.shutdown(wait=False)
        self.sync.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
