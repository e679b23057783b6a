"""Rate limits as GCRA (the generic cell rate algorithm), decided by one Lua script on Redis time.

Each limit stores one number, its theoretical arrival time (TAT) in microseconds. A call is allowed
when ``now >= TAT - tolerance``; it then moves the TAT one emission interval forward. One script
checks every limit of a call before it writes any, so a call refused by the tenant's limit spends
nothing of the visitor's, and Redis ``TIME`` makes all replicas agree on the clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

MICROSECONDS = 1_000_000

# Numbers are written with %.0f because Lua 5.1 prints a 16-digit microsecond time as "1.7e+15".
_ACQUIRE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local new_tats = {}
local wait, rejecting = 0, 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = math.max(tonumber(redis.call('GET', key) or now), now)
  local limit_wait = tat - tolerance - now
  if limit_wait > wait then
    wait, rejecting = limit_wait, i
  end
  new_tats[i] = tat + interval
end
if rejecting > 0 then
  return {0, string.format('%.0f', wait), rejecting}
end
for i, key in ipairs(KEYS) do
  local ttl_ms = math.ceil((new_tats[i] - now) / 1000)
  redis.call('SET', key, string.format('%.0f', new_tats[i]), 'PX', string.format('%.0f', ttl_ms))
end
return {1, '0', 0}
"""


@dataclass(frozen=True)
class Rate:
    """``count`` calls per ``period_seconds`` on average, up to ``burst`` of them back to back."""

    count: int
    period_seconds: float
    burst: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"Rate count must be at least 1, got {self.count}.")
        if not (math.isfinite(self.period_seconds) and self.period_seconds > 0):
            raise ValueError(f"Rate period must be a positive number of seconds, got {self.period_seconds}.")
        if self.burst < 1:
            raise ValueError(f"Rate burst must be at least 1, got {self.burst}.")

    @property
    def interval_us(self) -> int:
        """Microseconds between two calls at the sustained rate (the emission interval)."""
        return max(1, round(self.period_seconds * MICROSECONDS / self.count))

    @property
    def tolerance_us(self) -> int:
        """How far ahead of now the TAT may run: room for ``burst - 1`` calls beyond the first."""
        return (self.burst - 1) * self.interval_us


@dataclass(frozen=True)
class Limit:
    """One rate applied to one Redis key; ``name`` tells callers which limit refused a call."""

    key: str
    rate: Rate
    name: str


@dataclass(frozen=True)
class Decision:
    """Whether a call may go ahead and, if not, how many seconds until it would and which limit said no."""

    allowed: bool
    retry_after: float
    limit: str | None


def hash_tag(key: str) -> str:
    """Return the part of a key Redis Cluster hashes: the first non-empty ``{…}``, else the whole key."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


class RateLimiter:
    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_ACQUIRE)

    async def acquire(self, *limits: Limit) -> Decision:
        """Spend one call of every limit, or none of them if any limit refuses."""
        _check_keys(limits)
        args: list[int] = []
        for limit in limits:
            args += [limit.rate.interval_us, limit.rate.tolerance_us]
        reply: list[Any] = await self._script(keys=[limit.key for limit in limits], args=args)
        allowed, wait_us, rejecting = int(reply[0]), int(reply[1]), int(reply[2])
        if allowed:
            return Decision(allowed=True, retry_after=0.0, limit=None)
        return Decision(allowed=False, retry_after=wait_us / MICROSECONDS, limit=limits[rejecting - 1].name)


def _check_keys(limits: tuple[Limit, ...]) -> None:
    # One script may only touch keys of one cluster slot, and a key listed twice would be
    # checked twice but written once, so both are caller bugs worth failing loudly on.
    if not limits:
        raise ValueError("acquire() needs at least one limit.")
    keys = [limit.key for limit in limits]
    if len(set(keys)) != len(keys):
        raise ValueError(f"Each key may appear once per acquire() call, got {keys}.")
    if len({hash_tag(key) for key in keys}) > 1:
        raise ValueError(f"All keys of one acquire() call must share a {{hash tag}} for Redis Cluster, got {keys}.")
