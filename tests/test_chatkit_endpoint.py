from __future__ import annotations

from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from service.tokens import SessionTokens
from tests.harness import (
    BASE_URL,
    SECRET,
    SHOP,
    add_tenant,
    chatkit_headers,
    perch,
    reply_text,
    sse_events,
    start_session,
    user_input,
)


async def post(
    client: httpx.AsyncClient, token: str, body: dict[str, Any], origin: str | None = SHOP
) -> httpx.Response:
    return await client.post("/t/acme/chatkit", headers=chatkit_headers(token, origin), json=body)


async def new_thread(
    client: httpx.AsyncClient, token: str, text: str = "Hello there"
) -> tuple[str, list[dict[str, Any]]]:
    response = await post(client, token, {"type": "threads.create", "params": {"input": user_input(text)}})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    return events[0]["thread"]["id"], events


async def list_items(client: httpx.AsyncClient, token: str, thread_id: str) -> list[dict[str, Any]]:
    response = await post(client, token, {"type": "items.list", "params": {"thread_id": thread_id, "order": "asc"}})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["data"]
    return items


async def test_full_conversation_persists_across_a_restart(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        session = await start_session(client, key)
        token = session["token"]
        thread_id, events = await new_thread(client, token, "What is Perch?")
        assert "Demo mode" in reply_text(events)
        more = await post(
            client,
            token,
            {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input("And?")}},
        )
        assert "You said: “And?”" in reply_text(sse_events(more.text))
        renamed = await post(
            client, token, {"type": "threads.update", "params": {"thread_id": thread_id, "title": "Perch Q&A"}}
        )
        assert renamed.json()["title"] == "Perch Q&A"

    async with perch(redis) as client:  # a new process on the same Redis
        token = (await start_session(client, key, token=token))["token"]
        threads = (await post(client, token, {"type": "threads.list", "params": {}})).json()
        assert [t["id"] for t in threads["data"]] == [thread_id]
        assert threads["data"][0]["title"] == "Perch Q&A"
        items = await list_items(client, token, thread_id)
        assert [i["type"] for i in items] == ["user_message", "assistant_message"] * 2
        first_user = items[0]["id"]
        retried = await post(
            client,
            token,
            {"type": "threads.retry_after_item", "params": {"thread_id": thread_id, "item_id": first_user}},
        )
        assert "What is Perch?" in reply_text(sse_events(retried.text))
        items = await list_items(client, token, thread_id)
        assert [i["type"] for i in items] == ["user_message", "assistant_message"]
        deleted = await post(client, token, {"type": "threads.delete", "params": {"thread_id": thread_id}})
        assert deleted.status_code == 200
        threads = (await post(client, token, {"type": "threads.list", "params": {}})).json()
        assert threads["data"] == []


async def test_two_replies_in_one_thread_get_distinct_real_ids(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        token = (await start_session(client, key))["token"]
        thread_id, _ = await new_thread(client, token)
        await post(
            client,
            token,
            {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input("2")}},
        )
        items = await list_items(client, token, thread_id)
    ids = [i["id"] for i in items if i["type"] == "assistant_message"]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(i.startswith("msg_") and len(i) == 36 for i in ids)


async def test_thread_gets_a_title_from_the_first_message(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        token = (await start_session(client, key))["token"]
        await new_thread(client, token, "How do I reset my password?")
        threads = (await post(client, token, {"type": "threads.list", "params": {}})).json()
    assert threads["data"][0]["title"] == "How do I reset my password?"


def forged(claims: dict[str, Any], clock: float = 2_000_000_000.0, secret: str = SECRET) -> str:
    tokens = SessionTokens([secret], ttl_seconds=3600, clock=lambda: clock)
    return tokens.issue(**claims)[0]


@pytest.mark.parametrize(
    ("change", "status"),
    [
        pytest.param({"tamper": True}, 401, id="tampered"),
        pytest.param({"secret": "another-secret-key-that-is-long-enough-02"}, 401, id="foreign-signature"),
        pytest.param({"clock": 1_000.0}, 401, id="expired"),
        pytest.param({"tenant_id": "globex"}, 403, id="other-tenant"),
        pytest.param({"origin": "https://evil.example.net"}, 403, id="other-origin"),
        pytest.param({"missing": True}, 401, id="missing"),
    ],
)
async def test_bad_tokens_are_refused_before_anything_runs(redis: Redis, change: dict[str, Any], status: int) -> None:
    _, key = await add_tenant(redis)
    await add_tenant(redis, "globex")
    claims = {"tenant_id": change.get("tenant_id", "acme"), "key_id": key, "origin": change.get("origin", SHOP)}
    claims["visitor_id"] = "v_" + "1" * 32
    clock = change.get("clock", 9_999_999_999.0 - 7200)
    token = forged(claims, clock, change.get("secret", SECRET))
    if change.get("tamper"):
        token = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    headers = chatkit_headers(token)
    if change.get("missing"):
        del headers["Authorization"]
    async with perch(redis) as client:
        response = await client.post("/t/acme/chatkit", headers=headers, json={"type": "threads.list", "params": {}})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert await redis.keys("perch:{t:acme:v:*") == []


async def test_token_used_from_another_allowed_site_is_refused(redis: Redis) -> None:
    _, key = await add_tenant(redis, origins=(SHOP, "https://blog.example.com"))
    async with perch(redis) as client:
        token = (await start_session(client, key))["token"]
        elsewhere = await post(client, token, {"type": "threads.list", "params": {}}, origin="https://blog.example.com")
        framed = await post(client, token, {"type": "threads.list", "params": {}}, origin=BASE_URL)
        server = await post(client, token, {"type": "threads.list", "params": {}}, origin=None)
    assert elsewhere.status_code == 403
    assert framed.status_code == 200
    assert server.status_code == 200


async def test_revoking_the_key_ends_its_sessions(redis: Redis) -> None:
    from service.tenants import TenantRepository

    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        token = (await start_session(client, key))["token"]
        await TenantRepository(redis).revoke_key(key)
        response = await post(client, token, {"type": "threads.list", "params": {}})
    assert response.status_code == 403


async def test_chatkit_preflight_is_answered_from_the_tenants_origins(redis: Redis) -> None:
    await add_tenant(redis)
    async with perch(redis) as client:
        allowed = await client.options(
            "/t/acme/chatkit",
            headers={
                "Origin": SHOP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        denied = await client.options(
            "/t/acme/chatkit", headers={"Origin": "https://evil-example.com", "Access-Control-Request-Method": "POST"}
        )
    assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == SHOP
    assert denied.status_code == 403


def id_taking_ops(thread_id: str, item_id: str) -> list[dict[str, Any]]:
    return [
        {"type": "threads.get_by_id", "params": {"thread_id": thread_id}},
        {"type": "items.list", "params": {"thread_id": thread_id, "order": "asc"}},
        {"type": "threads.update", "params": {"thread_id": thread_id, "title": "pwned"}},
        {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input("hi")}},
        {"type": "threads.retry_after_item", "params": {"thread_id": thread_id, "item_id": item_id}},
        {"type": "items.feedback", "params": {"thread_id": thread_id, "item_ids": [item_id], "kind": "negative"}},
    ]


@pytest.mark.parametrize(
    "intruder", [pytest.param("visitor", id="other-visitor"), pytest.param("tenant", id="other-tenant")]
)
async def test_another_visitors_ids_are_not_found_and_nothing_changes(redis: Redis, intruder: str) -> None:
    _, key = await add_tenant(redis)
    _, other_key = await add_tenant(redis, "globex")
    async with perch(redis) as client:
        owner = (await start_session(client, key))["token"]
        thread_id, _ = await new_thread(client, owner, "my secret")
        items = await list_items(client, owner, thread_id)
        before = sorted(k for k in await redis.keys("*") if ":rl:" not in k)  # limits change by design
        snapshot = {k: await redis.dump(k) for k in before}
        if intruder == "visitor":
            thief, path = (await start_session(client, key))["token"], "/t/acme/chatkit"
        else:
            thief, path = (await start_session(client, other_key))["token"], "/t/globex/chatkit"
        for op in [
            *id_taking_ops(thread_id, items[0]["id"]),
            {"type": "threads.delete", "params": {"thread_id": thread_id}},
        ]:
            response = await client.post(path, headers=chatkit_headers(thief), json=op)
            assert response.status_code in (404, 200), (op["type"], response.status_code)
            assert "my secret" not in response.text
            if op["type"] not in ("threads.delete", "items.feedback"):
                assert response.status_code == 404, op["type"]
        listing = await client.post(path, headers=chatkit_headers(thief), json={"type": "threads.list", "params": {}})
    assert listing.json()["data"] == []
    assert {k: await redis.dump(k) for k in before} == snapshot


async def test_malformed_chatkit_request_is_a_400(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        token = (await start_session(client, key))["token"]
        bad_json = await client.post("/t/acme/chatkit", headers=chatkit_headers(token), content=b"{not json")
        bad_op = await post(client, token, {"type": "threads.explode", "params": {}})
    assert bad_json.status_code == 400 and bad_op.status_code == 400
