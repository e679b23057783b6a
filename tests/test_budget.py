from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from service import keys
from service.budget import DailyUsage, TokenBudget

DAY = "2025-03-14"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2025, 3, 14, 23, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def budget(redis: Redis, clock: Clock) -> TokenBudget:
    return TokenBudget(redis, clock=clock)


async def spent(redis: Redis, key: str) -> int:
    return int(await redis.get(key) or 0)


async def test_a_reservation_within_budget_is_held(redis: Redis, budget: TokenBudget) -> None:
    reservation = await budget.reserve("acme", "v1", 400, tenant_daily=1000, visitor_daily=500)

    assert reservation is not None
    assert (reservation.day, reservation.tokens) == (DAY, 400)
    assert await spent(redis, keys.tenant_budget("acme", DAY)) == 400
    assert await spent(redis, keys.visitor_budget("acme", "v1", DAY)) == 400


async def test_a_reservation_over_budget_holds_nothing(redis: Redis, budget: TokenBudget) -> None:
    assert await budget.reserve("acme", "v1", 700, tenant_daily=1000, visitor_daily=None)

    assert await budget.reserve("acme", "v1", 301, tenant_daily=1000, visitor_daily=None) is None
    assert await spent(redis, keys.tenant_budget("acme", DAY)) == 700
    assert await budget.reserve("acme", "v1", 300, tenant_daily=1000, visitor_daily=None)


async def test_the_visitor_budget_is_enforced_on_its_own(redis: Redis, budget: TokenBudget) -> None:
    assert await budget.reserve("acme", "v1", 80, tenant_daily=1000, visitor_daily=100)

    assert await budget.reserve("acme", "v1", 30, tenant_daily=1000, visitor_daily=100) is None
    assert await budget.reserve("acme", "v2", 30, tenant_daily=1000, visitor_daily=100)
    assert await spent(redis, keys.tenant_budget("acme", DAY)) == 110
    assert await spent(redis, keys.visitor_budget("acme", "v1", DAY)) == 80


async def test_the_tenant_budget_binds_visitors_with_room_left(budget: TokenBudget) -> None:
    assert await budget.reserve("acme", "v1", 90, tenant_daily=100, visitor_daily=1000)

    assert await budget.reserve("acme", "v2", 20, tenant_daily=100, visitor_daily=1000) is None


async def test_settle_replaces_the_reservation_with_real_usage(redis: Redis, budget: TokenBudget) -> None:
    reservation = await budget.reserve("acme", "v1", 1000, tenant_daily=5000, visitor_daily=2000)
    assert reservation is not None

    await budget.settle(reservation, input_tokens=30, output_tokens=12)

    assert await spent(redis, keys.tenant_budget("acme", DAY)) == 42
    assert await spent(redis, keys.visitor_budget("acme", "v1", DAY)) == 42
    assert await budget.usage("acme", days=1) == [DailyUsage(DAY, messages=1, input_tokens=30, output_tokens=12)]


async def test_settle_above_the_reservation_counts_real_usage(redis: Redis, budget: TokenBudget) -> None:
    reservation = await budget.reserve("acme", "v1", 10, tenant_daily=None, visitor_daily=None)
    assert reservation is not None

    await budget.settle(reservation, input_tokens=25, output_tokens=5)

    assert await spent(redis, keys.tenant_budget("acme", DAY)) == 30


async def test_release_gives_the_tokens_back(redis: Redis, budget: TokenBudget) -> None:
    kept = await budget.reserve("acme", "v1", 100, tenant_daily=1000, visitor_daily=500)
    dropped = await budget.reserve("acme", "v1", 400, tenant_daily=1000, visitor_daily=500)
    assert kept is not None and dropped is not None

    await budget.release(dropped)

    assert await spent(redis, keys.tenant_budget("acme", DAY)) == 100
    assert await spent(redis, keys.visitor_budget("acme", "v1", DAY)) == 100
    assert await budget.usage("acme", days=1) == [DailyUsage(DAY, 0, 0, 0)]


async def test_counters_never_go_below_zero(redis: Redis, budget: TokenBudget) -> None:
    reservation = await budget.reserve("acme", "v1", 100, tenant_daily=1000, visitor_daily=None)
    assert reservation is not None
    await redis.delete(keys.tenant_budget("acme", DAY))

    await budget.release(reservation)

    assert await spent(redis, keys.tenant_budget("acme", DAY)) == 0
    assert await redis.ttl(keys.tenant_budget("acme", DAY)) > 0


async def test_concurrent_reservations_never_exceed_the_budget(redis: Redis, budget: TokenBudget) -> None:
    reservations = await asyncio.gather(
        *(budget.reserve("acme", f"v{n}", 10, tenant_daily=250, visitor_daily=None) for n in range(100))
    )

    assert sum(reservation is not None for reservation in reservations) == 25
    assert await spent(redis, keys.tenant_budget("acme", DAY)) == 250


async def test_a_new_day_brings_a_new_budget(redis: Redis, budget: TokenBudget, clock: Clock) -> None:
    late = await budget.reserve("acme", "v1", 100, tenant_daily=100, visitor_daily=None)
    assert late is not None
    assert await budget.reserve("acme", "v1", 1, tenant_daily=100, visitor_daily=None) is None

    clock.now += timedelta(hours=1)
    early = await budget.reserve("acme", "v1", 100, tenant_daily=100, visitor_daily=None)
    assert early is not None
    await budget.settle(late, input_tokens=7, output_tokens=3)
    await budget.settle(early, input_tokens=20, output_tokens=5)

    assert early.day == "2025-03-15"
    assert await budget.usage("acme", days=3) == [
        DailyUsage("2025-03-13", 0, 0, 0),
        DailyUsage("2025-03-14", 1, 7, 3),
        DailyUsage("2025-03-15", 1, 20, 5),
    ]


async def test_counters_expire_days_after_their_day(redis: Redis, budget: TokenBudget) -> None:
    reservation = await budget.reserve("acme", "v1", 10, tenant_daily=None, visitor_daily=None)
    assert reservation is not None
    await budget.settle(reservation, input_tokens=1, output_tokens=1)

    half_hour = 30 * 60
    budget_ttl = await redis.ttl(keys.tenant_budget("acme", DAY))
    usage_ttl = await redis.ttl(keys.tenant_usage("acme", DAY))
    assert half_hour + 2 * 86400 - 2 <= budget_ttl <= half_hour + 2 * 86400
    assert half_hour + 90 * 86400 - 2 <= usage_ttl <= half_hour + 90 * 86400


async def test_negative_token_counts_are_refused(budget: TokenBudget) -> None:
    with pytest.raises(ValueError, match="tokens"):
        await budget.reserve("acme", "v1", -5, tenant_daily=100, visitor_daily=None)
