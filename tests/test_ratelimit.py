from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from service import keys
from service.ratelimit import Decision, Limit, Rate, RateLimiter

# Slow enough that nothing refills while a test runs.
SLOW = 60.0


def visitor_limit(burst: int, count: int = 1, period: float = SLOW) -> Limit:
    return Limit(keys.visitor_message_rate("acme", "v1"), Rate(count, period, burst), "visitor_messages")


def tenant_limit(burst: int) -> Limit:
    return Limit(keys.tenant_message_rate("acme"), Rate(1, SLOW, burst), "tenant_messages")


async def admitted(limiter: RateLimiter, *limits: Limit, attempts: int = 20) -> int:
    decisions = [await limiter.acquire(*limits) for _ in range(attempts)]
    return sum(decision.allowed for decision in decisions)


async def test_burst_is_admitted_then_refused_for_one_interval(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    limit = visitor_limit(burst=3, count=5, period=1.0)

    first = [await limiter.acquire(limit) for _ in range(3)]
    refused = await limiter.acquire(limit)

    assert first == [Decision(allowed=True, retry_after=0.0, limit=None)] * 3
    assert not refused.allowed
    assert refused.limit == "visitor_messages"
    assert 0.15 < refused.retry_after <= 0.2


async def test_concurrent_calls_admit_exactly_the_burst(pooled: Redis) -> None:
    limiter = RateLimiter(pooled)
    limit = visitor_limit(burst=17)

    decisions = await asyncio.gather(*(limiter.acquire(limit) for _ in range(200)))

    assert sum(decision.allowed for decision in decisions) == 17


async def test_a_call_refused_by_one_limit_spends_nothing_of_the_others(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    visitor, tenant = visitor_limit(burst=5), tenant_limit(burst=2)

    assert await admitted(limiter, visitor, tenant, attempts=2) == 2
    refused = [await limiter.acquire(visitor, tenant) for _ in range(4)]

    assert {(decision.allowed, decision.limit) for decision in refused} == {(False, "tenant_messages")}
    assert await admitted(limiter, visitor) == 3


async def test_the_most_restrictive_limit_is_reported(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    quick = Limit(keys.visitor_message_rate("acme", "v1"), Rate(10, 1.0, 1), "visitor_messages")
    slow = Limit(keys.tenant_message_rate("acme"), Rate(1, SLOW, 1), "tenant_messages")

    await limiter.acquire(quick, slow)
    refused = await limiter.acquire(quick, slow)

    assert refused.limit == "tenant_messages"
    assert refused.retry_after > 59


async def test_retry_after_is_exact(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    limit = visitor_limit(burst=2, count=5, period=1.0)
    await admitted(limiter, limit, attempts=2)

    refused = await limiter.acquire(limit)
    await asyncio.sleep(refused.retry_after)
    assert (await limiter.acquire(limit)).allowed

    refused = await limiter.acquire(limit)
    await asyncio.sleep(refused.retry_after * 0.5)
    assert not (await limiter.acquire(limit)).allowed


async def test_idle_keys_expire_once_their_limit_is_full_again(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    limit = visitor_limit(burst=2, count=10, period=0.5)

    await limiter.acquire(limit)

    ttl_ms = await redis.pttl(limit.key)
    assert 0 < ttl_ms <= 50


async def test_keys_of_different_hash_tags_are_refused(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    per_ip = Limit(keys.session_rate("globex", "203.0.113.9"), Rate(1, SLOW, 1), "sessions")

    with pytest.raises(ValueError, match="hash tag"):
        await limiter.acquire(per_ip, tenant_limit(burst=1))
    assert await redis.exists(per_ip.key, keys.tenant_message_rate("acme")) == 0


@pytest.mark.parametrize(
    ("count", "period", "burst"),
    [
        pytest.param(0, 1.0, 1, id="no-calls"),
        pytest.param(1, 0.0, 1, id="no-period"),
        pytest.param(1, float("inf"), 1, id="infinite-period"),
        pytest.param(1, 1.0, 0, id="no-burst"),
    ],
)
def test_nonsense_rates_are_refused(count: int, period: float, burst: int) -> None:
    with pytest.raises(ValueError):
        Rate(count, period, burst)
