"""Open the Redis client: a real server from REDIS_URL, or an in-process fakeredis."""

from __future__ import annotations

import logging

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.settings import Settings

log = logging.getLogger("perch")


def open_redis(settings: Settings) -> Redis:
    """Return a client with explicit timeouts and a bounded, blocking connection pool.

    No retries: a request that can't reach Redis fails fast with a 503 and the client retries,
    which beats holding a request for several timeouts while Redis is down or hung.
    """
    if settings.redis_url is None:
        log.warning("REDIS_URL is not set: using an in-process fakeredis; data lasts only as long as this process.")
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    # from_pool: the client owns the pool, so closing the client closes its connections too.
    return Redis.from_pool(pool)
