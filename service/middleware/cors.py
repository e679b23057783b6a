"""Per-origin CORS for the public API: only origins a tenant allowed get in, and only they get headers.

Unlike Starlette's CORSMiddleware the allowed origins are not fixed: the route's resolver looks
them up (a domain key's origins, or a tenant's). A request from an origin that isn't allowed gets
403 JSON and the handler never runs. Responses never carry `*` or credentials.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Forbidden, ServiceError
from service.origins import OriginError, canonical_origin

# Given the request scope and its canonical Origin, say whether that origin may call this route.
OriginResolver = Callable[[Scope, str], Awaitable[bool]]

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = frozenset({"authorization", "content-type", "x-request-id"})
EXPOSE_HEADERS = "ETag, Retry-After, X-Request-Id"
MAX_AGE_SECONDS = 7200


class OriginGate:
    def __init__(self, app: ASGIApp, resolve: OriginResolver, max_age: int = MAX_AGE_SECONDS) -> None:
        if not 0 <= max_age <= MAX_AGE_SECONDS:
            raise ValueError(f"max_age must be between 0 and {MAX_AGE_SECONDS} seconds (browsers cap it there).")
        self.app = app
        self.resolve = resolve
        self.max_age = max_age

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        raw_origin = headers.get("origin")
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        if raw_origin is None and not preflight:
            await self.app(scope, receive, send_with_vary(send))
            return
        try:
            origin = await self._allowed_origin(scope, raw_origin)
        except ServiceError as exc:
            await exc.response()(scope, receive, send_with_vary(send))
            return
        if preflight:
            await self._preflight(origin, headers, scope, receive, send)
            return
        await self.app(scope, receive, send_with_cors(send, origin))

    async def _allowed_origin(self, scope: Scope, raw_origin: str | None) -> str:
        denied = Forbidden("This website is not allowed to use this chat. Add its origin to the domain key.")
        if raw_origin is None:
            raise denied
        try:
            origin = canonical_origin(raw_origin)
        except OriginError:
            raise denied from None
        if not await self.resolve(scope, origin):
            raise denied
        return origin

    async def _preflight(self, origin: str, headers: Headers, scope: Scope, receive: Receive, send: Send) -> None:
        requested = {
            h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()
        }
        if headers["access-control-request-method"] not in ALLOW_METHODS or not requested <= ALLOW_HEADERS:
            denied = Forbidden("This request method or header is not allowed by Perch's CORS policy.")
            await denied.response()(scope, receive, send_with_vary(send))
            return
        response_headers = [
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ", ".join(sorted(ALLOW_HEADERS)).encode()),
            (b"access-control-max-age", str(self.max_age).encode()),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": response_headers})
        await send({"type": "http.response.body", "body": b""})


def send_with_vary(send: Send) -> Send:
    """Add `Vary: Origin` so caches never serve one origin's answer to another."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message).add_vary_header("Origin")
        await send(message)

    return wrapped


def send_with_cors(send: Send, origin: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            headers.add_vary_header("Origin")
        await send(message)

    return wrapped
