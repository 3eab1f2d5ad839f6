"""Errors in OpenAI's shape (`{"error": {message, type, param, code}}`): what the gateway
answers for a bad request, a full queue, a timeout, an unreachable Redis, a missing key, a body
too large -- one line naming the field where there is one."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..contract import location
from ..errors import BadRequest, JobFailed, JobTimeout, QueueFull, RedisUnavailable, VecqError

#: How a worker's refusal of a bad request starts a failed job's reason (`vecq.worker.validation`).
REFUSED = "BadRequest: "
#: Seconds a client told "queue full" (429) is asked to wait before trying again.
RETRY_AFTER_S = 1


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
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


def bad_request(message: str) -> ApiError:
    """A 400 whose `param` is the field the one-line message starts with."""
    field = message.split(":", 1)[0].split("[", 1)[0].split(".", 1)[0].strip()
    return ApiError(400, message, param=None if field == "request" else field, code="invalid_value")


def too_many(message: str, code: str) -> ApiError:
    """A 429 that says when to come back, in `Retry-After` and at the end of its one line."""
    return ApiError(
        429,
        f"{message}; retry after {RETRY_AFTER_S}s",
        kind="rate_limit_error",
        code=code,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def api_error(exc: VecqError) -> ApiError:
    """The HTTP answer to a producer error."""
    if isinstance(exc, BadRequest):
        return bad_request(str(exc))
    if isinstance(exc, JobFailed) and exc.reason.startswith(REFUSED):
        # refused by the worker for a request option only it can check (a prompt name its model
        # lacks, `dimensions` over its size): the caller's fault, a 400 like the gateway's own
        return bad_request(exc.reason.removeprefix(REFUSED))
    if isinstance(exc, QueueFull):  # the producer's hint (wait_for_room=) is for Python callers
        return too_many(str(exc).split(";")[0], "queue_full")
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


def http_error(status: int, detail: str, headers: dict[str, str] | None = None) -> ApiError:
    """FastAPI's and Starlette's own refusals (a body it cannot parse -- bad UTF-8, nesting too
    deep --, an unknown route or method) in OpenAI's shape instead of `{"detail": ...}`."""
    if status == 400:
        return bad_request("request: body is not valid JSON (bad UTF-8, or nested too deep)")
    if status == 404:
        return ApiError(404, f"no such route ({detail})", code="not_found", headers=headers)
    if status == 405:
        return ApiError(405, f"method not allowed ({detail})", code="method_not_allowed", headers=headers)
    return ApiError(status, detail, code="http_error", headers=headers)
