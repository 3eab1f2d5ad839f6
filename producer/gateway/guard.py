"""What stands between the gateway's routes and the network: API keys and the body limit.

Both answer before any route runs, in OpenAI's error shape (`openai_errors.ApiError`), so a hostile or
careless client costs the gateway neither memory nor Redis:
- `ApiKeys`: `Authorization: Bearer <key>` checked in constant time against every configured key
  (no early exit on the first match or the first differing byte), on every route but the
  liveness route `LIVENESS_PATH`, which says only that the process serves HTTP.
- `BodyLimit`: a body over the limit is refused 413 from its `Content-Length` before a byte is
  read, and a body sent without one (chunked) is cut off once it passes the limit: eight
  concurrent 50 MB bodies took the gateway from 190 to 884 MB before their 400s (issue 15).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from .openai_errors import ApiError

#: Answers 200 while the process serves HTTP; needs no key and reads nothing (a k8s liveness probe).
LIVENESS_PATH = "/livez"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def read_key_file(path: Path) -> list[str]:
    """API keys from a file (a mounted Secret): one per line; blank lines and `#` comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"api_key_file: cannot read {path} ({exc.strerror or exc})") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ValueError(f"api_key_file: {path} holds no key")
    return keys


class ApiKeys:
    """The configured keys; no keys: every request is let in (and the gateway says so at start)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode("utf-8") for k in keys if k]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header carries one of the keys, compared against all of
        them in constant time."""
        if not self._keys:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(given, key)
        return found and bool(given)


class RequireKey:
    """ASGI middleware: a request without one of `keys` gets 401 (the liveness route excepted)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == LIVENESS_PATH or not self.keys:
            return await self.app(scope, receive, send)
        if self.keys.allows(_header(scope, b"authorization")):
            return await self.app(scope, receive, send)
        response = ApiError(
            401,
            "missing or incorrect API key; send it as 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        ).response()
        await response(scope, receive, send)


class BodyLimit:
    """ASGI middleware refusing request bodies over `limit` bytes with a 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        seen, over = 0, False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}  # the route stops reading: nothing parsed
            return message

        async def unless_over(message: Message) -> None:
            if not over:  # the route's own answer to a cut-off body (FastAPI: a 400) is dropped
                await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not over:
                raise
        if over:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = ApiError(
            413,
            f"request: body over the limit of {self.limit} bytes (max_body_bytes)",
            code="body_too_large",
            headers={"Connection": "close"},
        ).response()
        await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
