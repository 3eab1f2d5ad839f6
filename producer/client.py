"""`Client`: send texts to vecq workers as rq jobs and get float32 vectors back.

One job per call (the worker batches across jobs, so callers need not).  Requests are checked
against the wire contract before anything is written; backpressure is checked before the
enqueue; results are read from rq's result stream with one blocking XREAD.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis
from rq.job import Job

from . import backpressure
from .connection import RetryPolicy, call, describe, open_sync
from .contract import DEFAULT_MODEL, EmbedRequest, ResultDtype, build_request
from .enqueue import Enqueuer, JobOptions, new_job_id
from .keys import model_name
from .rerank import RerankResult, check_rerank, ranked
from .results import wait
from .settings import ProducerSettings


class Client:
    """A producer bound to one Redis; cheap to create, safe to share between threads.

    `url` defaults to env `VECQ_REDIS_URL`, else `redis://localhost:6379/0` (read now, not at
    import).  Pass `connection` to reuse a `redis.Redis` you built (it must not decode
    responses); its own retry settings then apply to vecq's writes too.  `settings` carries the
    job options (retries, TTLs) and retry policy; `max_queued_texts` overrides its limit.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        max_queued_texts: int | None = None,
        connection: redis.Redis | None = None,
        settings: ProducerSettings | None = None,
    ) -> None:
        self.settings = settings or ProducerSettings()
        self.max_queued_texts = max_queued_texts or self.settings.max_queued_texts
        self._owns_connection = connection is None
        if connection is not None:
            self.url = url or describe(connection)
            self.connection = connection
        else:
            self.url = url or self.settings.redis_url
            self.connection = open_sync(self.url, connect_timeout=self.settings.socket_connect_timeout)
        self.policy = RetryPolicy(
            attempts=self.settings.connect_attempts, cap=self.settings.retry_backoff_cap
        )
        self._count_script = self.connection.register_script(backpressure.COUNT_SCRIPT)  # EVALSHA
        self.enqueuer = Enqueuer(
            self.connection, url=self.url, options=JobOptions.from_settings(self.settings), policy=self.policy
        )

    # --- the three calls -----------------------------------------------------------------------
    def embed(
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
        """Vectors for `texts` (float32, len(texts) x dim), blocking up to `timeout` seconds.

        On timeout the job stays queued (`JobTimeout` names it; `result(job_id)` can pick it up).
        `result_dtype="float16"` halves the bytes the result moves through Redis (cosine >= 0.9999).
        `prompt_name` / `prompt` / `dimensions` are sentence-transformers' `prompt_name`, `prompt`
        and `truncate_dim`, applied by the worker with the model's own prompts (see `submit`).
        """
        job = self.submit(
            texts, model=model, lane=lane, truncate=truncate, result_dtype=result_dtype,
            prompt_name=prompt_name, prompt=prompt, dimensions=dimensions,
        )  # fmt: skip
        return wait(self.connection, job.id, timeout, policy=self.policy, url=self.url, just_sent=True)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        model: str | None = None,
        top_n: int | None = None,
        lane: str = "interactive",
        timeout: float | None = 30,
    ) -> list[RerankResult]:
        """`documents` ranked by relevance to `query` by a worker serving a cross-encoder
        (`vecq worker --model DIR`), best first, at most `top_n`: each a `RerankResult(index,
        score)`, the score `CrossEncoder.predict`'s for the pair.  Blocks up to `timeout` seconds
        as `embed` does; one job, so at most `MAX_TEXTS_PER_JOB` documents."""
        check_rerank(documents, top_n)
        job = self.submit(documents, model=model, lane=lane, query=query)
        return ranked(self.result(job, timeout=timeout), top_n)

    def submit(
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
        """Enqueue one job and return its rq `Job` without waiting for the result.

        Raises `BadRequest` for texts or options the worker would refuse, and `QueueFull` when the
        model's queues are over `max_queued_texts` (after waiting up to `wait_for_room` seconds).
        `deadline_s`: seconds from now after which no worker starts the job (it fails as
        `DeadlineExceeded` instead of being computed for nobody).  `prompt_name`: one of the
        model's prompts, prepended to every text before tokenizing (the model's default prompt
        when neither it nor `prompt` is given); `prompt`: a literal one ("": none).  `dimensions`:
        keep the first d components (Matryoshka).  Only the worker knows the model's prompts and
        size, so an unknown name or a size over the model's fails the job (`JobFailed`).
        `query`: a rerank job (see `rerank`): the texts are scored against it, (n, 1) scores.
        """
        request = self.request(
            texts, model=model, lane=lane, truncate=truncate, result_dtype=result_dtype,
            prompt_name=prompt_name, prompt=prompt, dimensions=dimensions, query=query,
        )  # fmt: skip
        self.wait_for_room(request.model, len(request.texts), wait_for_room)
        return self.enqueuer.enqueue([(request, job_id or new_job_id())], deadline_s=deadline_s)[0]

    def result(self, job_or_id: Job | str, *, timeout: float | None = 30) -> np.ndarray:
        """The job's vectors, waiting up to `timeout` seconds (None: no limit).

        Raises `JobFailed` with the worker's one-line reason, `JobNotFound`, or `JobTimeout`.
        """
        job_id = job_or_id.id if isinstance(job_or_id, Job) else str(job_or_id)
        return wait(self.connection, job_id, timeout, policy=self.policy, url=self.url)

    # --- helpers also used by the bulk submitter ------------------------------------------------
    def request(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        lane: str = "interactive",
        truncate: bool = True,
        **options: Any,
    ) -> EmbedRequest:
        """The validated request (`BadRequest` in one line), before anything touches Redis;
        `options`: `result_dtype`, `result_encoding`, `prompt_name`, `prompt`, `dimensions` (see
        `EmbedRequest`; those left None are not sent)."""
        given = {k: v for k, v in options.items() if v is not None}
        return build_request(texts, model=model or DEFAULT_MODEL, lane=lane, truncate=truncate, **given)

    def queued_texts(self, model: str | None = None) -> int:
        """Texts waiting in the model's queues (both lanes), as backpressure counts them."""
        keys = backpressure.count_keys(model_name(model or DEFAULT_MODEL))
        jobs, counter = call(self.policy, self.url, lambda: self._count_script(keys=keys))
        return backpressure.estimate(jobs, counter)

    def wait_for_room(self, model: str, n_texts: int, deadline_s: float | None) -> None:
        """Return once a job of `n_texts` fits under the limit, or raise `QueueFull`."""
        if self.max_queued_texts is None:
            return
        wait = backpressure.RoomWait(model, n_texts, self.max_queued_texts, deadline_s)
        while (delay := wait.after(self.queued_texts(model))) is not None:
            time.sleep(delay)

    def ping(self) -> bool:
        """True if Redis answers; `RedisUnavailable` (password masked) if not."""
        return bool(call(self.policy, self.url, self.connection.ping))

    def close(self) -> None:
        """Close the connection pool, unless the caller passed it in (then it is theirs)."""
        if self._owns_connection:
            self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        from .connection import mask_url

        return f"Client({mask_url(self.url)!r})"
