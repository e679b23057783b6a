"""Build the Starlette application from settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route

from service.demo import seed_demo
from service.endpoints import chatkit, demo, embed, health, widget
from service.errors import ServiceError, handle_service_error
from service.llm import LLM
from service.middleware.bodylimit import BodyLimitMiddleware
from service.middleware.cors import OriginGate
from service.middleware.requestid import RequestIdMiddleware
from service.redis_client import open_redis
from service.services import Services
from service.settings import Settings
from service.store import RedisStore
from service.tenants import TenantRepository
from service.tokens import SessionTokens

log = logging.getLogger("perch")


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
        )
        app.state.services = services
        if settings.secret_keys_generated:
            log.warning("PERCH_SECRET_KEYS is not set: signing sessions with a random key; they end at restart.")
        await seed_demo(services.tenants, settings)
        try:
            yield
        finally:
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
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={ServiceError: handle_service_error},
    )
