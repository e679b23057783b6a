"""Limits, budgets and failure behaviour through the HTTP API, with the fake upstream as the model."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from service import keys
from service.app import create_app
from service.budget import DailyUsage, TokenBudget
from service.context import RequestContext
from service.store import RedisStore
from service.tenants import Limits, RateSetting
from tests.fake_upstream import FakeUpstream, Scenario
from tests.harness import (
    SHOP,
    add_tenant,
    chatkit_headers,
    openai_settings,
    perch,
    reply_text,
    sse_events,
    start_session,
    start_turn,
    user_input,
)
from tests.live import GRACEFUL_SHUTDOWN, serve
from tests.redis_server import redis_process

HOUR = 3600
PLENTY = RateSetting(count=10_000, per_seconds=1, burst=10_000)


def limits(**changes: Any) -> Limits:
    """Limits that never get in the way, except the ones a test names."""
    loose: dict[str, Any] = {
        "sessions_per_ip": PLENTY,
        "visitor_messages": PLENTY,
        "visitor_requests": PLENTY,
        "tenant_messages": PLENTY,
        "concurrent_streams": 20,
    }
    return Limits(**{**loose, **changes})


def errors(response: httpx.Response) -> list[dict[str, Any]]:
    return [event for event in sse_events(response.text) if event["type"] == "error"]


async def new_session(client: httpx.AsyncClient, key: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"Origin": SHOP} | ({"X-Forwarded-For": forwarded_for} if forwarded_for else {})
    return await client.post(f"/v1/widget/{key}/session", headers=headers)


# Rate limits


async def test_concurrent_sessions_from_one_address_admit_exactly_the_burst(pooled: Redis) -> None:
    _, key = await add_tenant(pooled, limits=limits(sessions_per_ip=RateSetting(count=1, per_seconds=HOUR, burst=7)))
    async with perch(pooled) as client:
        responses = await asyncio.gather(*(new_session(client, key) for _ in range(200)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 7 and statuses.count(429) == 193
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"]["message"].startswith("Too many new chats from your network")


async def test_retry_after_says_when_the_next_session_succeeds(redis: Redis) -> None:
    _, key = await add_tenant(redis, limits=limits(sessions_per_ip=RateSetting(count=1, per_seconds=1, burst=1)))
    async with perch(redis) as client:
        assert (await new_session(client, key)).status_code == 200
        refused = await new_session(client, key)
        assert refused.status_code == 429
        await asyncio.sleep(int(refused.headers["Retry-After"]))
        assert (await new_session(client, key)).status_code == 200


async def test_sessions_are_counted_per_client_address_only_from_trusted_proxies(redis: Redis) -> None:
    _, key = await add_tenant(redis, limits=limits(sessions_per_ip=RateSetting(count=1, per_seconds=HOUR, burst=1)))
    async with perch(redis) as client:
        # Anyone can send the header: from an untrusted peer it is ignored, so both count against 127.0.0.1.
        assert (await new_session(client, key, "203.0.113.1")).status_code == 200
        assert (await new_session(client, key, "203.0.113.2")).status_code == 429
    await redis.flushdb()
    _, key = await add_tenant(redis, limits=limits(sessions_per_ip=RateSetting(count=1, per_seconds=HOUR, burst=1)))
    behind_proxy = openai_settings("http://unused.invalid/v1", trusted_proxies=(ipaddress.ip_network("127.0.0.1"),))
    async with perch(redis, behind_proxy) as client:
        assert (await new_session(client, key, "203.0.113.1")).status_code == 200
        assert (await new_session(client, key, "198.51.100.7, 203.0.113.2")).status_code == 200
        assert (await new_session(client, key, "203.0.113.1")).status_code == 429


async def test_a_turn_refused_by_the_visitor_limit_spends_none_of_the_tenants(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    one_an_hour = RateSetting(count=1, per_seconds=HOUR, burst=1)
    tenant_three = RateSetting(count=1, per_seconds=HOUR, burst=3)
    _, key = await add_tenant(
        redis,
        provider="openai",
        model="gpt-fake",
        limits=limits(visitor_messages=one_an_hour, tenant_messages=tenant_three),
    )
    async with perch(redis, openai_settings(base_url)) as client:
        token, first = await start_turn(client, key)
        _, second = await start_turn(client, key, token=token)
        others = [(await start_turn(client, key))[1] for _ in range(3)]

    assert reply_text(sse_events(first.text)) == fake.scenario.reply
    assert second.status_code == 200 and second.headers["Retry-After"] == str(HOUR)
    assert errors(second) == [
        {
            "type": "error",
            "code": "custom",
            "message": "You're sending messages quickly — try again in 60 min.",
            "allow_retry": True,
        }
    ]
    # The refused turn took nothing from the tenant: two more visitors fit its burst of three.
    assert [errors(r) for r in others[:2]] == [[], []]
    assert errors(others[2])[0]["message"].startswith("This assistant is very busy right now — try again in")
    assert len(fake.requests) == 3


async def test_reads_over_the_request_limit_get_429_json(redis: Redis) -> None:
    _, key = await add_tenant(redis, limits=limits(visitor_requests=RateSetting(count=1, per_seconds=60, burst=2)))
    async with perch(redis) as client:
        token = (await start_session(client, key))["token"]
        listing = {"type": "threads.list", "params": {}}
        responses = [
            await client.post("/t/acme/chatkit", headers=chatkit_headers(token), json=listing) for _ in range(3)
        ]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[2].headers["Retry-After"] == "60"
    assert responses[2].json()["error"] == {
        "code": "rate_limited",
        "message": "Too many requests from this chat — try again in 60 s.",
    }


# Concurrent streams


async def test_parallel_streams_are_capped_and_their_slots_freed_when_they_end(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    fake.scenario = Scenario(reply="Slow and steady.", first_token_delay=0.5)
    tenant, key = await add_tenant(redis, provider="openai", model="gpt-fake", limits=limits(concurrent_streams=2))
    async with perch(redis, openai_settings(base_url)) as client:
        session = await start_session(client, key)
        turns = await asyncio.gather(*(start_turn(client, key, token=session["token"]) for _ in range(6)))
        slots_left = await redis.zcard(keys.visitor_streams(tenant.id, session["visitor_id"]))
        model_calls = len(fake.requests)
        _, after = await start_turn(client, key, token=session["token"])

    replies = [reply_text(sse_events(response.text)) for _, response in turns]
    busy = [errors(response) for _, response in turns if errors(response)]
    assert replies.count("Slow and steady.") == 2 and len(busy) == 4
    assert busy[0][0]["message"] == "A reply is still on its way — let it finish, then send your next message."
    assert model_calls == 2
    assert slots_left == 0
    assert reply_text(sse_events(after.text)) == "Slow and steady."


async def test_a_stream_the_visitor_abandons_frees_its_slot(redis: Redis, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    fake.scenario = Scenario(reply="word " * 40, chunk_size=5, chunk_delay=0.1)
    tenant, key = await add_tenant(redis, provider="openai", model="gpt-fake", limits=limits(concurrent_streams=1))
    app = create_app(openai_settings(base_url), redis=redis)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        session = await start_session(client, key)
        body = {"type": "threads.create", "params": {"input": user_input("Hi")}}
        headers = chatkit_headers(session["token"])
        async with client.stream("POST", "/t/acme/chatkit", headers=headers, json=body) as response:
            async for chunk in response.aiter_text():
                if "text_delta" in chunk:
                    break  # the visitor closes the tab
        slot_key = keys.visitor_streams(tenant.id, session["visitor_id"])
        for _ in range(50):
            if await redis.zcard(slot_key) == 0:
                break
            await asyncio.sleep(0.1)
        assert await redis.zcard(slot_key) == 0
        fake.scenario = Scenario(reply="Back again.")
        _, again = await start_turn(client, key, token=session["token"])
    assert reply_text(sse_events(again.text)) == "Back again."


# Token budgets


async def test_a_turn_over_the_daily_budget_is_refused_before_the_model_is_called(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    # The smallest budget is below one turn's worst case (the default 1024 output tokens plus input).
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake", limits=limits(tenant_daily_tokens=1000))
    async with perch(redis, openai_settings(base_url)) as client:
        _, response = await start_turn(client, key)
    assert errors(response) == [
        {
            "type": "error",
            "code": "custom",
            "message": "This chat has reached today's usage limit — please try again tomorrow.",
            "allow_retry": False,
        }
    ]
    assert fake.requests == []
    assert await TokenBudget(redis).usage("acme", 1) == [DailyUsage(datetime.now(UTC).date().isoformat(), 0, 0, 0)]


async def test_usage_after_a_turn_is_what_the_upstream_reported(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    fake.scenario = Scenario(reply="Counted.", prompt_tokens=321, completion_tokens=54)
    tenant, key = await add_tenant(redis, provider="openai", model="gpt-fake")
    async with perch(redis, openai_settings(base_url)) as client:
        session = await start_session(client, key)
        await start_turn(client, key, token=session["token"])
    today = datetime.now(UTC).date().isoformat()
    assert await TokenBudget(redis).usage("acme", 1) == [DailyUsage(today, 1, 321, 54)]
    # The worst case reserved before the call was replaced by what the call really cost.
    assert await redis.get(keys.tenant_budget(tenant.id, today)) == "375"
    assert await redis.get(keys.visitor_budget(tenant.id, session["visitor_id"], today)) == "375"


# Redis trouble


@pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="needs a redis-server binary to stop and freeze (Debian: redis-server; .ci/run installs it)",
)
@pytest.mark.parametrize("trouble", ["stopped", "hung"])
async def test_redis_trouble_is_a_fast_503_with_no_model_call_and_the_service_recovers(
    tmp_path: Path, upstream: tuple[FakeUpstream, str], trouble: str
) -> None:
    fake, base_url = upstream
    async with redis_process(tmp_path) as server:
        admin = Redis.from_url(server.url, decode_responses=True)
        _, key = await add_tenant(admin, provider="openai", model="gpt-fake")
        await admin.aclose()
        app = create_app(openai_settings(base_url, redis_url=server.url))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://perch.test") as client,
        ):
            token = (await start_session(client, key))["token"]
            server.stop() if trouble == "stopped" else server.hang()

            started = time.monotonic()
            _, turn = await start_turn(client, key, token=token)
            elapsed = time.monotonic() - started
            session = await new_session(client, key)
            ready = await client.get("/readyz")

            assert turn.status_code == 503 and elapsed < 1.0
            assert turn.headers["Retry-After"] == "2"
            assert turn.json()["error"]["message"] == "Chat is briefly unavailable. Please try again in a moment."
            assert session.status_code == 503 and ready.status_code == 503
            assert fake.requests == []

            await server.start() if trouble == "stopped" else server.wake()
            for _ in range(50):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            _, recovered = await start_turn(client, key, token=token)
    assert reply_text(sse_events(recovered.text)) == fake.scenario.reply
    assert len(fake.requests) == 1


# Upstream trouble


async def test_upstream_429_is_retried_with_backoff_and_the_reply_arrives(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    fake.scenario = Scenario(reply="Worth the wait.", fail_status=429, fail_times=1, retry_after=0.2)
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake")
    async with perch(redis, openai_settings(base_url, llm_max_retries=2)) as client:
        _, response = await start_turn(client, key)
    assert reply_text(sse_events(response.text)) == "Worth the wait."
    assert len(fake.requests) == 2


async def test_upstream_errors_are_retried_within_a_bound_then_reported(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    fake.scenario = Scenario(fail_status=503, retry_after=0.05)
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake")
    async with perch(redis, openai_settings(base_url, llm_max_retries=2)) as client:
        _, response = await start_turn(client, key)
    assert len(fake.requests) == 3
    assert errors(response) == [
        {
            "type": "error",
            "code": "custom",
            "message": "The assistant couldn't answer just now. Please try again.",
            "allow_retry": True,
        }
    ]


async def test_a_silent_model_gets_heartbeats_so_proxies_keep_the_stream(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    fake.scenario = Scenario(reply="Finally.", first_token_delay=0.6)
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake")
    async with perch(redis, openai_settings(base_url, heartbeat_seconds=0.1)) as client:
        _, response = await start_turn(client, key)
    body = response.text
    assert body.count(": keep-alive\n\n") >= 3
    assert body.index(": keep-alive") < body.index("text_delta")
    assert reply_text(sse_events(body)) == "Finally."


async def test_a_reply_over_the_total_time_is_cut_short_and_kept(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    fake.scenario = Scenario(reply="one two three four five six seven eight nine ten", chunk_size=4, chunk_delay=0.15)
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake")
    async with perch(redis, openai_settings(base_url, llm_total_timeout_seconds=0.5)) as client:
        token, response = await start_turn(client, key)
        thread_id = sse_events(response.text)[0]["thread"]["id"]
        body = {"type": "items.list", "params": {"thread_id": thread_id, "order": "asc"}}
        items = (await client.post("/t/acme/chatkit", headers=chatkit_headers(token), json=body)).json()["data"]
    assert errors(response)[0]["message"] == "The reply took too long and was cut short. Please try again."
    saved = items[1]["content"][0]["text"]
    assert saved.startswith("one ") and len(saved) < len(fake.scenario.reply)


# Page context


async def test_page_context_reaches_the_model_as_facts(redis: Redis, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake", instructions="You sell tents.")
    async with perch(redis, openai_settings(base_url)) as client:
        token = (await start_session(client, key))["token"]
        body = {
            "type": "threads.create",
            "params": {"input": user_input("Is this one waterproof?")},
            "metadata": {"perch_context": {"page": "Trail 2P tent", "price": 199}},
        }
        await client.post("/t/acme/chatkit", headers=chatkit_headers(token), json=body)
    system = fake.requests[0]["messages"][0]["content"]
    assert system.startswith("You sell tents.\n\nThe website tells you this about the page")
    assert system.endswith('{"page":"Trail 2P tent","price":199}')


@pytest.mark.parametrize(
    "context",
    [pytest.param({"notes": "x" * 3000}, id="over-2KB"), pytest.param(["not", "an", "object"], id="a-list")],
)
async def test_bad_page_context_is_a_400_and_reaches_no_model(
    redis: Redis, upstream: tuple[FakeUpstream, str], context: Any
) -> None:
    fake, base_url = upstream
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake")
    async with perch(redis, openai_settings(base_url)) as client:
        token = (await start_session(client, key))["token"]
        body = {"type": "threads.create", "params": {"input": user_input("Hi")}, "metadata": {"perch_context": context}}
        response = await client.post("/t/acme/chatkit", headers=chatkit_headers(token), json=body)
        threads = await client.post(
            "/t/acme/chatkit", headers=chatkit_headers(token), json={"type": "threads.list", "params": {}}
        )
    assert response.status_code == 400
    assert "perch_context must be a JSON object of at most 2048 bytes" in response.json()["error"]["message"]
    assert fake.requests == [] and threads.json()["data"] == []


# Shutdown


async def stream_reply(url: str, token: str, received: list[str]) -> None:
    """Stream one turn, appending each chunk as it arrives, until the server ends or cuts the stream."""
    body = {"type": "threads.create", "params": {"input": user_input("Tell me a long story")}}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        try:
            async with client.stream("POST", "/t/acme/chatkit", headers=chatkit_headers(token), json=body) as response:
                async for chunk in response.aiter_text():
                    received.append(chunk)
        except httpx.HTTPError:
            pass  # the server closed the connection mid-stream


async def saved_reply(redis: Redis, tenant_id: str, visitor_id: str, received: list[str]) -> str:
    thread_id = sse_events("".join(received))[0]["thread"]["id"]
    page = await RedisStore(redis).load_thread_items(
        thread_id, None, 10, "asc", RequestContext(tenant_id, visitor_id, SHOP)
    )
    # A stream cut short also leaves the SDK's hidden note for the model that the reply was interrupted.
    [reply] = [item for item in page.data if item.type == "assistant_message"]
    return reply.content[0].text


@pytest.mark.parametrize("length", ["short", "long"])
async def test_shutdown_lets_streams_finish_within_the_grace_period_then_saves_the_rest(
    redis: Redis, upstream: tuple[FakeUpstream, str], length: str
) -> None:
    fake, base_url = upstream
    words = 6 if length == "short" else 60
    # A short reply ends inside uvicorn's grace period; a long one (0.15 s a word) cannot.
    fake.scenario = Scenario(reply=" ".join(f"w{i}" for i in range(words)), chunk_size=4, chunk_delay=0.15)
    tenant, key = await add_tenant(redis, provider="openai", model="gpt-fake")
    app = create_app(openai_settings(base_url), redis=redis)
    received: list[str] = []
    async with serve(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            session = await start_session(client, key)
        visitor = asyncio.create_task(stream_reply(url, session["token"], received))
        while "text_delta" not in "".join(received):
            await asyncio.sleep(0.02)
        stopping = time.monotonic()
    stopped_after = time.monotonic() - stopping
    await asyncio.wait_for(visitor, 5)

    saved = await saved_reply(redis, tenant.id, session["visitor_id"], received)
    if length == "short":
        assert saved == fake.scenario.reply and reply_text(sse_events("".join(received))) == saved
    else:
        assert saved.startswith("w0 w1") and len(saved) < len(fake.scenario.reply)
    assert stopped_after < GRACEFUL_SHUTDOWN + 3
