from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis

from service.app import create_app
from service.context import RequestContext
from service.store import RedisStore
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
from tests.live import serve


async def test_reply_streams_from_the_upstream_with_the_tenants_instructions(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    fake.scenario = Scenario(reply="Our tents are waterproof.")
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake", instructions="You sell tents.")
    async with perch(redis, openai_settings(base_url)) as client:
        _, response = await start_turn(client, key, "Are tents waterproof?")
    assert reply_text(sse_events(response.text)) == "Our tents are waterproof."
    sent = fake.requests[0]
    assert sent["model"] == "gpt-fake"
    assert sent["messages"][0] == {"role": "system", "content": "You sell tents."}
    assert sent["messages"][-1]["content"][0]["text"] == "Are tents waterproof?"
    assert fake.bearer() == "sk-test"


async def test_history_sent_to_the_model_is_bounded_by_the_tenants_window(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake", history_window=3)
    async with perch(redis, openai_settings(base_url)) as client:
        token, first = await start_turn(client, key, "one")
        thread_id = sse_events(first.text)[0]["thread"]["id"]
        for text in ("two", "three"):
            body = {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input(text)}}
            await client.post("/t/acme/chatkit", headers=chatkit_headers(token), json=body)
    last = fake.requests[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user"]
    assert last[-1]["content"][0]["text"] == "three"


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(Scenario(fail_status=500), id="upstream-500"),
        pytest.param(Scenario(fail_status=429), id="upstream-429"),
        pytest.param(Scenario(first_token_delay=5.0), id="first-token-timeout"),
    ],
)
async def test_upstream_failure_becomes_a_retryable_error_event(
    redis: Redis, upstream: tuple[FakeUpstream, str], scenario: Scenario
) -> None:
    fake, base_url = upstream
    fake.scenario = scenario
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake")
    settings = openai_settings(base_url, llm_first_token_timeout_seconds=0.3)
    async with perch(redis, settings) as client:
        _, response = await start_turn(client, key)
    assert response.status_code == 200
    errors = [e for e in sse_events(response.text) if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["allow_retry"] is True
    assert "try again" in errors[0]["message"]
    assert "server_error" not in response.text and "sk-test" not in response.text


async def test_mid_stream_drop_keeps_the_partial_reply(redis: Redis, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base_url = upstream
    # Paced like a real stream: the Agents SDK drops events still queued when the error lands.
    fake.scenario = Scenario(
        reply="Part one. Part two. Part three.", chunk_size=5, chunk_delay=0.2, drop_after_chunks=3
    )
    _, key = await add_tenant(redis, provider="openai", model="gpt-fake")
    async with perch(redis, openai_settings(base_url)) as client:
        token, response = await start_turn(client, key)
        events = sse_events(response.text)
        thread_id = events[0]["thread"]["id"]
        body = {"type": "items.list", "params": {"thread_id": thread_id, "order": "asc"}}
        items = (await client.post("/t/acme/chatkit", headers=chatkit_headers(token), json=body)).json()["data"]
    assert events[-1]["type"] == "error" and events[-1]["allow_retry"] is True
    assert [i["type"] for i in items] == ["user_message", "assistant_message"]
    assert items[1]["content"][0]["text"].startswith("Part one.")
    assert len(items[1]["content"][0]["text"]) < len(fake.scenario.reply)


async def test_unconfigured_provider_says_so_without_retry(redis: Redis) -> None:
    _, key = await add_tenant(redis, provider="gemini", model="gemini-2.5-flash")
    async with perch(redis) as client:
        _, response = await start_turn(client, key)
    [error] = [e for e in sse_events(response.text) if e["type"] == "error"]
    assert error["allow_retry"] is False
    assert "isn't set up" in error["message"]


async def test_disconnect_mid_stream_still_saves_the_partial_reply(
    redis: Redis, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    fake.scenario = Scenario(reply="alpha beta gamma delta epsilon zeta eta theta", chunk_size=6, chunk_delay=0.1)
    tenant, key = await add_tenant(redis, provider="openai", model="gpt-fake")
    app = create_app(openai_settings(base_url), redis=redis)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        token = (await start_session(client, key))["token"]
        body = {"type": "threads.create", "params": {"input": user_input("Hi")}}
        received = ""
        async with client.stream("POST", "/t/acme/chatkit", headers=chatkit_headers(token), json=body) as response:
            async for chunk in response.aiter_text():
                received += chunk
                if received.count("text_delta") >= 2:
                    break  # the visitor closes the tab
        thread_id = sse_events(received.rsplit("\n\n", 1)[0] + "\n\n")[0]["thread"]["id"]
        context = RequestContext(tenant.id, (await start_session(client, key, token=token))["visitor_id"], SHOP)
        store = RedisStore(redis)
        for _ in range(50):
            page = await store.load_thread_items(thread_id, None, 10, "asc", context)
            if len(page.data) >= 2:
                break
            await asyncio.sleep(0.1)
    kinds = [item.type for item in page.data]
    assert kinds[:2] == ["user_message", "assistant_message"]
    partial = page.data[1].content[0].text  # type: ignore[union-attr]
    assert partial.startswith("alpha ") and len(partial) < len(fake.scenario.reply)
