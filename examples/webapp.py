"""Async enqueue from a web app: a FastAPI service that hands texts to vecq workers.

    vecq worker --redis redis://localhost:6379/0
    VECQ_REDIS_URL=redis://localhost:6379/0 uvicorn examples.webapp:app --port 8080

Two ways to use it:

- `POST /embed {"texts": [...]}` waits for the vectors and returns them (a search box: the
  user is waiting anyway).
- `POST /jobs {"texts": [...]}` answers 202 with a job id at once; `GET /jobs/{id}` answers
  `{"status": "pending"}` until the vectors are there, then `{"status": "done", "vectors": ...}`
  (an upload handler: store the id, come back later).  Results are kept for an hour.

The app holds one `AsyncClient`, opened and closed with the app; waiting never blocks the event
loop.  Bad texts are refused with 400 before anything reaches Redis; a full queue is 429.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from vecq.producer import AsyncClient, BadRequest, JobFailed, JobNotFound, JobTimeout, QueueFull


class Texts(BaseModel):
    texts: list[str]
    model: str | None = None


def create_app(redis_url: str | None = None) -> FastAPI:
    """The app; `redis_url` defaults to env VECQ_REDIS_URL, read when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.vecq = AsyncClient(redis_url)
        try:
            yield
        finally:
            await app.state.vecq.aclose()

    app = FastAPI(title="vecq webapp example", lifespan=lifespan)

    @app.post("/embed")
    async def embed(body: Texts, request: Request) -> dict[str, object]:
        client: AsyncClient = request.app.state.vecq
        try:
            vectors = await client.embed(body.texts, model=body.model, timeout=30)
        except (BadRequest, QueueFull, JobTimeout) as exc:
            raise http_error(exc) from None
        return {"dim": int(vectors.shape[1]), "vectors": vectors.tolist()}

    @app.post("/jobs", status_code=202)
    async def submit(body: Texts, request: Request) -> dict[str, str]:
        client: AsyncClient = request.app.state.vecq
        try:
            job = await client.submit(body.texts, model=body.model)
        except (BadRequest, QueueFull) as exc:
            raise http_error(exc) from None
        return {"id": job.id}

    @app.get("/jobs/{job_id}")
    async def status(job_id: str, request: Request) -> dict[str, object]:
        client: AsyncClient = request.app.state.vecq
        try:
            vectors = await client.result(job_id, timeout=0)  # look, don't wait
        except JobTimeout:
            return {"status": "pending"}
        except JobNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except JobFailed as exc:
            return {"status": "failed", "error": exc.reason}
        return {"status": "done", "vectors": vectors.tolist()}

    return app


def http_error(exc: Exception) -> HTTPException:
    """400 for bad texts, 429 for a full queue, 504 when the worker took too long."""
    code = 400 if isinstance(exc, BadRequest) else 429 if isinstance(exc, QueueFull) else 504
    return HTTPException(code, str(exc))


app = create_app()
