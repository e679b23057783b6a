"""What Perch adds to each chat request, as ratios against a reference measured in the same run.

    .venv/bin/python -m bench.bench_requests            # writes bench/RESULTS.md
    REDIS_URL=redis://127.0.0.1:6379/15 .venv/bin/python -m bench.bench_requests   # on a real Redis (flushes it)

1. Parsing a ChatKit request with Perch's one cached TypeAdapter, against building the adapter per
   request as `ChatKitServer.process` does.
2. Admitting and closing a chat turn (stream slot, both message rates in one script, slot release),
   against a Redis PING round trip on the same client: the limits' cost in round trips.
3. How long a chat turn waits for its 503 when Redis is stopped or frozen (a redis-server of the
   benchmark's own), against the configured Redis timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import fakeredis
import httpx
from chatkit.types import ChatKitReq
from pydantic import TypeAdapter
from redis.asyncio import Redis

from service.app import create_app
from service.chat import REQUEST_ADAPTER
from service.context import RequestContext
from service.tenants import Limits, RateSetting, Tenant
from service.turns import Guards
from tests.harness import SETTINGS, add_tenant, start_session, start_turn
from tests.redis_server import redis_process

RESULTS = Path(__file__).with_name("RESULTS.md")
URL = "http://perch.test"
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


async def bench_redis_trouble(trouble: str) -> float:
    """Seconds from a chat turn's request to its 503, the median of several, with Redis in trouble."""
    with tempfile.TemporaryDirectory() as directory:
        async with redis_process(Path(directory)) as server:
            admin = Redis.from_url(server.url, decode_responses=True)
            _, key = await add_tenant(admin)
            await admin.aclose()
            app = create_app(replace(SETTINGS, redis_url=server.url))
            transport = httpx.ASGITransport(app=app)
            async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=URL) as client:
                token = (await start_session(client, key))["token"]
                server.stop() if trouble == "stopped" else server.hang()
                timings = []
                for _ in range(ROUNDS):
                    started = time.perf_counter()
                    _, response = await start_turn(client, key, token=token)
                    timings.append(time.perf_counter() - started)
                    assert response.status_code == 503, response.text
                return statistics.median(timings)


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
    stopped, hung = await bench_redis_trouble("stopped"), await bench_redis_trouble("hung")
    timeout = SETTINGS.redis_timeout_seconds
    backend = f"real Redis at {url}" if url else "fakeredis (in-process)"
    report = f"""# Benchmark results

Written by `{" ".join(["python -m bench.bench_requests", *sys.argv[1:]])}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC,
Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; Redis: {backend}.
Timings are the fastest of {ROUNDS} rounds unless a table says otherwise;
ratios compare numbers measured in the same run.

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

## Failing closed when Redis is in trouble

| Redis | time to the 503 (median of {ROUNDS}) | ratio to the timeout |
| --- | ---: | ---: |
| reference: `PERCH_REDIS_TIMEOUT_SECONDS` | {timeout * 1e3:.0f} ms | 1.00 |
| stopped (connections refused) | {stopped * 1e3:.1f} ms | {stopped / timeout:.3f} |
| frozen (SIGSTOP: connections accepted, never answered) | {hung * 1e3:.0f} ms | {hung / timeout:.2f} |

No retries: one timeout is the whole wait, well under the one second the service promises.
"""
    RESULTS.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    asyncio.run(main())
