from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import fakeredis
import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from tests.fake_upstream import FakeUpstream
from tests.live import serve

REDIS_URL = os.environ.get("REDIS_URL")


@asynccontextmanager
async def clean_redis(url: str | None) -> AsyncIterator[Redis]:
    """A client on an empty database: the real server at `url` (flushed first), else a new fakeredis."""
    if url:
        client: Redis = Redis.from_url(url, decode_responses=True)
        await client.flushdb()
    else:
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A clean Redis: the real server at REDIS_URL (its database is flushed), else fakeredis."""
    async with clean_redis(REDIS_URL) as client:
        yield client


@pytest.fixture(params=[pytest.param("fakeredis", id="fakeredis"), pytest.param("redis", id="redis")])
async def any_redis(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """A clean Redis of each kind in turn, so a contract holds on fakeredis and on a real server alike."""
    if request.param == "redis" and not REDIS_URL:
        pytest.skip("REDIS_URL is not set: the real-Redis run of the store contract needs it")
    async with clean_redis(REDIS_URL if request.param == "redis" else None) as client:
        yield client


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeUpstream, str]]:
    """The fake OpenAI-compatible upstream on a real socket, and its base URL for the openai client."""
    fake = FakeUpstream()
    async with serve(fake.app) as url:
        yield fake, f"{url}/v1"


@pytest.fixture
async def pooled(redis: Redis) -> AsyncIterator[Redis]:
    """The same server behind a small blocking pool, as the service runs, so a crowd of callers queues for it."""
    pool = redis.connection_pool
    blocking = BlockingConnectionPool(
        connection_class=pool.connection_class, max_connections=32, **pool.connection_kwargs
    )
    yield Redis(connection_pool=blocking)
    await blocking.aclose()
