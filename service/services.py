"""What the lifespan opens and every handler shares, kept on `app.state.services`."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from starlette.requests import HTTPConnection
from starlette.types import Scope

from service.llm import LLM
from service.settings import Settings
from service.sse import OpenStreams
from service.store import RedisStore
from service.tenants import TenantRepository
from service.tokens import SessionTokens
from service.turns import Guards


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: Redis
    tenants: TenantRepository
    store: RedisStore
    tokens: SessionTokens
    llm: LLM
    guards: Guards
    open_streams: OpenStreams

    @classmethod
    def of(cls, request: HTTPConnection) -> Services:
        """Return the services of the app serving this request."""
        services: Services = request.app.state.services
        return services

    @classmethod
    def of_scope(cls, scope: Scope) -> Services:
        services: Services = scope["app"].state.services
        return services


def own_origin(request: HTTPConnection, settings: Settings) -> str:
    """Return Perch's own origin: PERCH_PUBLIC_URL, else the origin this request was addressed to."""
    if settings.public_url:
        return settings.public_url
    return f"{request.url.scheme}://{request.url.netloc}".lower()
