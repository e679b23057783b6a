"""A cap on how many replies one visitor may stream at once.

Each open stream holds a slot: a member of the visitor's sorted set scored by the Redis-time
millisecond at which it expires. Acquiring first drops expired slots, so the slots of a process
that died mid-stream free themselves after the TTL; a long stream calls ``refresh`` to keep its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from redis.asyncio import Redis

from service.ids import new_id

log = logging.getLogger("perch")

_NOW_MS = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
"""

_ACQUIRE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

_REFRESH = (
    _NOW_MS
    + """
local expires = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]))
if not expires or expires <= now then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', now + tonumber(ARGV[1])), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)


class StreamCapReached(Exception):
    """The visitor already has ``cap`` replies streaming."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"Already streaming {cap} replies at once; wait for one to finish.")
        self.cap = cap


class StreamSlots:
    def __init__(self, redis: Redis, ttl_seconds: float = 300) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"Stream slot TTL must be positive, got {ttl_seconds}.")
        self._redis = redis
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._acquire = redis.register_script(_ACQUIRE)
        self._refresh = redis.register_script(_REFRESH)
        self._releasing: set[asyncio.Task[None]] = set()

    async def acquire(self, key: str, cap: int) -> str | None:
        """Take a slot under ``key`` and return its id, or None when ``cap`` slots are taken."""
        slot = new_id("slot")
        taken = await self._acquire(keys=[key], args=[cap, self._ttl_ms, slot])
        return slot if int(taken) else None

    async def release(self, key: str, slot: str) -> None:
        """Give a slot back."""
        await self._redis.zrem(key, slot)

    async def refresh(self, key: str, slot: str) -> bool:
        """Extend a held slot by the TTL; False when it has already expired and may be someone else's."""
        return bool(int(await self._refresh(keys=[key], args=[self._ttl_ms, slot])))

    @asynccontextmanager
    async def hold(self, key: str, cap: int) -> AsyncIterator[str]:
        """Hold a slot for the body of an ``async with``, or raise StreamCapReached."""
        slot = await self.acquire(key, cap)
        if slot is None:
            raise StreamCapReached(cap)
        try:
            yield slot
        finally:
            await self._release_shielded(key, slot)

    async def _release_shielded(self, key: str, slot: str) -> None:
        # A cancelled stream must still free its slot. The anyio shield stops a task group (as
        # Starlette uses on disconnect) from cancelling the release again and again; running it as
        # its own task lets it finish even if a plain asyncio cancel() interrupts the wait.
        task = asyncio.ensure_future(self._release_logged(key, slot))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        with anyio.CancelScope(shield=True):
            await asyncio.shield(task)

    async def _release_logged(self, key: str, slot: str) -> None:
        # Raising here would replace the stream's own outcome (or its cancellation); the TTL
        # frees the slot anyway, so a failed release is only worth a log line.
        try:
            await self.release(key, slot)
        except Exception:
            log.warning("Could not release stream slot %s; it frees itself when its TTL ends.", slot, exc_info=True)
