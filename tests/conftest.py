from __future__ import annotations

import os
from collections.abc import AsyncIterator

import fakeredis
import pytest
from redis.asyncio import Redis

REDIS_URL = os.environ.get("REDIS_URL")


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A clean Redis: the real server at REDIS_URL (its database is flushed), else fakeredis."""
    if REDIS_URL:
        client: Redis = Redis.from_url(REDIS_URL, decode_responses=True)
        await client.flushdb()
    else:
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
