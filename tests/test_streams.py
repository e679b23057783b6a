from __future__ import annotations

import asyncio

import anyio
import pytest
from redis.asyncio import Redis

from service import keys
from service.streams import StreamCapReached, StreamSlots

KEY = keys.visitor_streams("acme", "v1")


async def test_parallel_holders_get_exactly_the_cap(redis: Redis) -> None:
    slots = StreamSlots(redis)
    streaming: list[str] = []
    finish = asyncio.Event()

    async def stream() -> None:
        async with slots.hold(KEY, cap=3) as slot:
            streaming.append(slot)
            await finish.wait()

    tasks = [asyncio.create_task(stream()) for _ in range(10)]
    with anyio.fail_after(5):
        while sum(task.done() for task in tasks) < 7:
            await asyncio.sleep(0.005)
    finish.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert len(set(streaming)) == 3
    refusals = [outcome for outcome in outcomes if isinstance(outcome, StreamCapReached)]
    assert len(refusals) == 7
    assert {refusal.cap for refusal in refusals} == {3}
    assert await redis.zcard(KEY) == 0


async def test_concurrent_acquires_never_exceed_the_cap(redis: Redis) -> None:
    slots = StreamSlots(redis)

    taken = await asyncio.gather(*(slots.acquire(KEY, cap=4) for _ in range(50)))

    assert len([slot for slot in taken if slot is not None]) == 4


async def test_a_released_slot_can_be_taken_again(redis: Redis) -> None:
    slots = StreamSlots(redis)
    slot = await slots.acquire(KEY, cap=1)
    assert slot is not None
    assert await slots.acquire(KEY, cap=1) is None

    await slots.release(KEY, slot)

    assert await slots.acquire(KEY, cap=1) is not None


async def eventually_acquired(slots: StreamSlots) -> bool:
    # A release that outlives its cancelled task finishes on its own shortly after.
    for _ in range(50):
        if await slots.acquire(KEY, cap=1) is not None:
            return True
        await asyncio.sleep(0.01)
    return False


class SlowReleaseSlots(StreamSlots):
    """Slots whose release takes a while, like a Redis round trip, so cancellation can land during it."""

    async def release(self, key: str, slot: str) -> None:
        await asyncio.sleep(0.02)
        await super().release(key, slot)


async def test_a_cancelled_stream_frees_its_slot(redis: Redis) -> None:
    slots = SlowReleaseSlots(redis)
    holding = asyncio.Event()

    async def stream() -> None:
        async with slots.hold(KEY, cap=1):
            holding.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(stream())
    await holding.wait()
    task.cancel()
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await eventually_acquired(slots)


async def test_a_stream_cancelled_by_its_task_group_frees_its_slot(redis: Redis) -> None:
    slots = SlowReleaseSlots(redis)

    async def stream(task_status: anyio.abc.TaskStatus[None]) -> None:
        async with slots.hold(KEY, cap=1):
            task_status.started()
            await anyio.sleep(60)

    async with anyio.create_task_group() as group:
        await group.start(stream)
        group.cancel_scope.cancel()

    assert await slots.acquire(KEY, cap=1) is not None


async def test_slots_of_a_crashed_process_expire(redis: Redis) -> None:
    slots = StreamSlots(redis, ttl_seconds=0.1)
    assert await slots.acquire(KEY, cap=1) is not None
    assert await slots.acquire(KEY, cap=1) is None

    await asyncio.sleep(0.15)

    assert await slots.acquire(KEY, cap=1) is not None


async def test_refresh_keeps_a_long_stream_slot(redis: Redis) -> None:
    slots = StreamSlots(redis, ttl_seconds=0.3)
    slot = await slots.acquire(KEY, cap=1)
    assert slot is not None

    await asyncio.sleep(0.2)
    assert await slots.refresh(KEY, slot)
    await asyncio.sleep(0.2)

    assert await slots.acquire(KEY, cap=1) is None


async def test_an_expired_slot_cannot_be_refreshed(redis: Redis) -> None:
    slots = StreamSlots(redis, ttl_seconds=0.05)
    slot = await slots.acquire(KEY, cap=1)
    assert slot is not None

    await asyncio.sleep(0.08)

    assert not await slots.refresh(KEY, slot)
    assert not await slots.refresh(KEY, "slot_unknown")
