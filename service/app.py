"""Build the Starlette application from settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.demo import seed_demo
from service.endpoints import chatkit, demo, embed, health, widget
from service.errors import ServiceError, ServiceUnavailable, handle_service_error
from service.llm import LLM
from service.middleware.bodylimit import BodyLimitMiddleware
from service.middleware.cors import OriginGate
from service.middleware.requestid import RequestIdMiddleware
from service.redis_client import open_redis
from service.services import Services
from service.settings import Settings
from service.sse import OpenStreams
from service.store import RedisStore
from service.tenants import TenantRepository
from service.tokens import SessionTokens
from service.turns import Guards

log = logging.getLogger("perch")

# Streams cancelled at the end of the shutdown grace period get this long to save their partial replies.
STREAM_SAVE_SECONDS = 5.0
REDIS_RETRY_AFTER_SECONDS = 2


def create_app(settings: Settings, *, redis: Redis | None = None) -> Starlette:
    """Return the Perch ASGI app for these settings; a given Redis client is used as is and not closed."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis or open_redis(settings)
        llm = LLM(settings)
        services = Services(
            settings=settings,
            redis=client,
            tenants=TenantRepository(client),
            store=RedisStore(client),
            tokens=SessionTokens(settings.secret_keys, settings.session_ttl_seconds),
            llm=llm,
            guards=Guards(client, longest_reply_seconds=settings.llm_total_timeout_seconds),
            open_streams=OpenStreams(),
        )
        app.state.services = services
        if settings.secret_keys_generated:
            log.warning("PERCH_SECRET_KEYS is not set: signing sessions with a random key; they end at restart.")
        await seed_demo(services.tenants, settings)
        try:
            yield
        finally:
            if not await services.open_streams.wait_idle(STREAM_SAVE_SECONDS):
                log.warning("%d streams were still saving at shutdown.", services.open_streams.count)
            await llm.aclose()
            if redis is None:
                await client.aclose()

    routes = [
        Route("/healthz", health.healthz),
        Route("/readyz", health.readyz),
        Mount(
            "/v1/widget/{key}",
            routes=[
                Route("/config", widget.config, methods=["GET"]),
                Route("/session", widget.session, methods=["POST"]),
            ],
            middleware=[Middleware(OriginGate, resolve=widget.key_allows_origin)],
        ),
        Mount(
            "/t/{tenant}",
            routes=[Route("/chatkit", chatkit.chatkit, methods=["POST"])],
            middleware=[Middleware(OriginGate, resolve=chatkit.tenant_allows_origin)],
        ),
        Route("/demo", demo.demo),
        Route("/widget.js", embed.widget_js, methods=["GET"]),
        Route("/widget/{name}", embed.widget_asset, methods=["GET"]),
        Route("/embed/{key}", embed.embed_page, methods=["GET"]),
    ]
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
    ]
    if settings.trusted_proxies:
        # The client's address comes from X-Forwarded-For only when a configured proxy sent it.
        proxies = [str(network) for network in settings.trusted_proxies]
        middleware.insert(0, Middleware(ProxyHeadersMiddleware, trusted_hosts=proxies))
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={ServiceError: handle_service_error, RedisError: redis_unavailable},
    )


async def redis_unavailable(request: Request, exc: Exception) -> Response:
    """Fail closed when Redis can't answer: no limit decision, no model call, a quick 503."""
    log.warning("Redis unavailable for %s: %s", request.url.path, exc)
    detail = "Chat is briefly unavailable. Please try again in a moment."
    return ServiceUnavailable(detail, retry_after=REDIS_RETRY_AFTER_SECONDS).response()
