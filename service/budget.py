"""Daily token budgets per tenant and visitor, and the usage the admin screen shows.

A chat turn reserves its worst case before the LLM call and settles with the real count after,
so concurrent turns can never spend more than the budget between them. Counters are per UTC day
(from the injected clock) and expire a couple of days after their day ends; usage stays ~90 days.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from redis.asyncio import Redis

from service import keys

BUDGET_GRACE = timedelta(days=2)
USAGE_RETENTION = timedelta(days=90)

_RESERVE = """
local tokens = tonumber(ARGV[1])
local limits = {ARGV[2], ARGV[3]}
for i, key in ipairs(KEYS) do
  local limit = tonumber(limits[i])
  if limit and tonumber(redis.call('GET', key) or '0') + tokens > limit then
    return 0
  end
end
for _, key in ipairs(KEYS) do
  redis.call('INCRBY', key, tokens)
  redis.call('EXPIRE', key, ARGV[4])
end
return 1
"""

# SET rather than INCRBY so a counter never goes below zero, and a counter that expired while
# its call ran comes back with a TTL instead of living forever.
_ADJUST = """
local function adjust(key, delta, ttl)
  local value = math.max(0, tonumber(redis.call('GET', key) or '0') + delta)
  redis.call('SET', key, string.format('%.0f', value), 'EX', ttl)
end
"""

_RELEASE = (
    _ADJUST
    + """
for _, key in ipairs(KEYS) do
  adjust(key, tonumber(ARGV[1]), ARGV[2])
end
"""
)

_SETTLE = (
    _ADJUST
    + """
for i = 2, #KEYS do
  adjust(KEYS[i], tonumber(ARGV[1]), ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'messages', 1)
redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
"""
)


@dataclass(frozen=True)
class Reservation:
    """Tokens held against one UTC day's budgets until the call settles or is released."""

    tenant_id: str
    visitor_id: str
    day: str
    tokens: int
    visitor_charged: bool


@dataclass(frozen=True)
class DailyUsage:
    day: str
    messages: int
    input_tokens: int
    output_tokens: int


def utc_now() -> datetime:
    return datetime.now(UTC)


class TokenBudget:
    def __init__(self, redis: Redis, clock: Callable[[], datetime] = utc_now) -> None:
        self._redis = redis
        self._clock = clock
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)
        self._settle = redis.register_script(_SETTLE)

    async def reserve(
        self, tenant_id: str, visitor_id: str, tokens: int, tenant_daily: int | None, visitor_daily: int | None
    ) -> Reservation | None:
        """Hold ``tokens`` of today's budgets, or return None (holding nothing) if either would be exceeded."""
        _check_counts(tokens=tokens)
        now = self._now()
        day = now.date().isoformat()
        budget_keys = [keys.tenant_budget(tenant_id, day)]
        if visitor_daily is not None:
            budget_keys.append(keys.visitor_budget(tenant_id, visitor_id, day))
        limits = ["" if limit is None else limit for limit in (tenant_daily, visitor_daily)]
        ttl = _seconds_left(now, now.date(), BUDGET_GRACE)
        if not int(await self._reserve(keys=budget_keys, args=[tokens, *limits, ttl])):
            return None
        return Reservation(tenant_id, visitor_id, day, tokens, visitor_charged=visitor_daily is not None)

    async def settle(self, reservation: Reservation, input_tokens: int, output_tokens: int) -> None:
        """Replace a reservation with the tokens the call really used, and count the message."""
        _check_counts(input_tokens=input_tokens, output_tokens=output_tokens)
        now, day = self._now(), date.fromisoformat(reservation.day)
        usage_key = keys.tenant_usage(reservation.tenant_id, reservation.day)
        delta = input_tokens + output_tokens - reservation.tokens
        budget_ttl = _seconds_left(now, day, BUDGET_GRACE)
        usage_ttl = _seconds_left(now, day, USAGE_RETENTION)
        args = [delta, budget_ttl, input_tokens, output_tokens, usage_ttl]
        await self._settle(keys=[usage_key, *_budget_keys(reservation)], args=args)

    async def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose call never happened."""
        ttl = _seconds_left(self._now(), date.fromisoformat(reservation.day), BUDGET_GRACE)
        await self._release(keys=_budget_keys(reservation), args=[-reservation.tokens, ttl])

    async def usage(self, tenant_id: str, days: int) -> list[DailyUsage]:
        """Return the tenant's messages and tokens for each of the last ``days`` days, today last."""
        if days < 1:
            raise ValueError(f"Ask for at least one day of usage, got {days}.")
        today = self._now().date()
        dates = [(today - timedelta(days=back)).isoformat() for back in reversed(range(days))]
        async with self._redis.pipeline(transaction=False) as pipe:
            for day in dates:
                pipe.hgetall(keys.tenant_usage(tenant_id, day))
            counts: list[dict[str, str]] = await pipe.execute()
        return [_daily_usage(day, fields) for day, fields in zip(dates, counts, strict=True)]

    def _now(self) -> datetime:
        # A naive time from the clock is taken to be UTC already, as datetime.utcnow() gives.
        now = self._clock()
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _budget_keys(reservation: Reservation) -> list[str]:
    budget_keys = [keys.tenant_budget(reservation.tenant_id, reservation.day)]
    if reservation.visitor_charged:
        budget_keys.append(keys.visitor_budget(reservation.tenant_id, reservation.visitor_id, reservation.day))
    return budget_keys


def _seconds_left(now: datetime, day: date, kept_after_day: timedelta) -> int:
    """Seconds from ``now`` until ``kept_after_day`` past the end of ``day``, at least one."""
    day_end = datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
    return max(1, int((day_end + kept_after_day - now).total_seconds()))


def _daily_usage(day: str, fields: dict[str, str]) -> DailyUsage:
    return DailyUsage(
        day=day,
        messages=int(fields.get("messages", 0)),
        input_tokens=int(fields.get("input_tokens", 0)),
        output_tokens=int(fields.get("output_tokens", 0)),
    )


def _check_counts(**counts: int) -> None:
    for name, count in counts.items():
        if count < 0:
            raise ValueError(f"{name} must not be negative, got {count}.")
