"""What Perch adds to each chat request, as ratios against a reference measured in the same run.

    .venv/bin/python -m bench.bench_requests            # writes bench/RESULTS.md
    REDIS_URL=redis://127.0.0.1:6379/15 .venv/bin/python -m bench.bench_requests   # on a real Redis (flushes it)

1. Parsing a ChatKit request with Perch's one cached TypeAdapter, against building the adapter per
   request as `ChatKitServer.process` does.
2. Admitting and closing a chat turn (stream slot, both message rates in one script, slot release),
   against a Redis PING round trip on the same client: the limits' cost in round trips.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import fakeredis
from chatkit.types import ChatKitReq
from pydantic import TypeAdapter
from redis.asyncio import Redis

from service.chat import REQUEST_ADAPTER
from service.context import RequestContext
from service.tenants import Limits, RateSetting, Tenant
from service.turns import Guards

RESULTS = Path(__file__).with_name("RESULTS.md")
ROUNDS = 5
BODY = json.dumps(
    {
        "type": "threads.add_user_message",
        "params": {
            "thread_id": "thr_" + "a" * 32,
            "input": {
                "content": [{"type": "input_text", "text": "Do you ship tents to Norway?"}],
                "attachments": [],
                "inference_options": {},
            },
        },
    }
).encode()


def best_of(rounds: int, calls: int, call: Callable[[], object]) -> float:
    """Seconds per call: the fastest of several rounds, which is the least disturbed by the machine."""
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        timings.append((time.perf_counter() - started) / calls)
    return min(timings)


async def best_of_async(rounds: int, calls: int, call: Callable[[], Awaitable[object]]) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            await call()
        timings.append((time.perf_counter() - started) / calls)
    return min(timings)


def bench_parse() -> tuple[float, float]:
    cached = best_of(ROUNDS, 2000, lambda: REQUEST_ADAPTER.validate_json(BODY))
    per_request = best_of(ROUNDS, 20, lambda: TypeAdapter(ChatKitReq).validate_json(BODY))
    return cached, per_request


async def bench_admission(redis: Redis) -> tuple[float, float]:
    guards = Guards(redis, longest_reply_seconds=120)
    unlimited = RateSetting(count=1_000_000, per_seconds=1, burst=10_000)
    tenant = Tenant(id="bench", name="Bench", limits=Limits(tenant_messages=unlimited))
    visitors = iter(range(10**9))

    async def turn() -> None:
        # A fresh visitor each time, so the visitor's own rate never refuses.
        turn = guards.turn(tenant, RequestContext(tenant.id, f"v_{next(visitors)}", "https://shop.example.com"))
        await turn.admit()
        await turn.close()

    await turn()  # loads the scripts
    ping = await best_of_async(ROUNDS, 500, redis.ping)
    admission = await best_of_async(ROUNDS, 200, turn)
    return ping, admission


async def main() -> None:
    url = os.environ.get("REDIS_URL")
    redis: Redis = (
        Redis.from_url(url, decode_responses=True)
        if url
        else fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    )
    if url:
        await redis.flushdb()
    try:
        cached, per_request = bench_parse()
        ping, admission = await bench_admission(redis)
    finally:
        await redis.aclose()
    backend = f"real Redis at {url}" if url else "fakeredis (in-process)"
    report = f"""# Benchmark results

Written by `{" ".join(["python -m bench.bench_requests", *sys.argv[1:]])}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC,
Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; Redis: {backend}.
Each figure is the fastest of {ROUNDS} rounds; ratios compare numbers measured in the same run.

## Parsing a ChatKit request

| how | per request | ratio |
| --- | ---: | ---: |
| reference: `TypeAdapter(ChatKitReq)` built per request (the SDK's `process`) | {per_request * 1e3:.2f} ms | 1.00 |
| Perch: one cached adapter (`service.chat.REQUEST_ADAPTER`) | {cached * 1e6:.1f} µs | {cached / per_request:.4f} |

The cached adapter is **{per_request / cached:.0f}× faster**:
{(per_request - cached) * 1e3:.2f} ms of CPU saved per request.

## Admitting a chat turn

| what | per call | ratio |
| --- | ---: | ---: |
| reference: Redis `PING` round trip | {ping * 1e6:.0f} µs | 1.00 |
| `Turn.admit()` + `close()`: slot, both rates, release | {admission * 1e6:.0f} µs | {admission / ping:.2f} |

Limits cost about **{admission / ping:.1f} round trips** per chat turn (two scripts and one command),
before any model call.
"""
    RESULTS.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    asyncio.run(main())
