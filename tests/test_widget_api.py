from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from service.tenants import TenantRepository, Theme
from service.tokens import SessionTokens
from tests.harness import SECRET, SHOP, add_tenant, perch, start_session

WILDCARD = "https://*.example.org"


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param(SHOP, id="exact"),
        pytest.param("https://SHOP.example.com:443", id="exact-noncanonical"),
        pytest.param("https://a.example.org", id="wildcard-subdomain"),
        pytest.param("https://a.b.example.org", id="wildcard-deep"),
    ],
)
async def test_session_from_allowed_origin_gets_a_token_and_cors_headers(redis: Redis, origin: str) -> None:
    _, key = await add_tenant(redis, origins=(SHOP, WILDCARD))
    async with perch(redis) as client:
        response = await client.post(f"/v1/widget/{key}/session", headers={"Origin": origin})
    assert response.status_code == 200
    body = response.json()
    assert body["visitor_id"].startswith("v_") and len(body["visitor_id"]) == 34
    assert body["token"] and body["expires_at"]
    assert body["expires_in"] == 3600, "the default session lifetime, counted from the reply"
    assert response.headers["access-control-allow-origin"] == origin.lower().replace(":443", "")
    assert "Origin" in response.headers["vary"]
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param("https://evil-example.com", id="look-alike"),
        pytest.param("https://shop.example.com.evil.com", id="suffix-trick"),
        pytest.param("http://shop.example.com", id="http-not-https"),
        pytest.param("https://shop.example.com:8443", id="other-port"),
        pytest.param("https://example.org", id="apex-of-wildcard"),
        pytest.param("null", id="null"),
        pytest.param("https://other.test", id="unrelated"),
    ],
)
async def test_disallowed_origin_gets_403_json_and_no_cors_grant(redis: Redis, origin: str) -> None:
    _, key = await add_tenant(redis, origins=(SHOP, WILDCARD))
    async with perch(redis) as client:
        session = await client.post(f"/v1/widget/{key}/session", headers={"Origin": origin})
        preflight = await client.options(
            f"/v1/widget/{key}/session",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        config = await client.get(f"/v1/widget/{key}/config", headers={"Origin": origin})
    for response in (session, preflight, config):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        assert "access-control-allow-origin" not in response.headers
        assert "Origin" in response.headers["vary"]


async def test_preflight_from_allowed_origin_names_that_origin_only(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        response = await client.options(
            f"/v1/widget/{key}/session",
            headers={
                "Origin": SHOP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == SHOP
    assert "POST" in response.headers["access-control-allow-methods"]
    assert 0 < int(response.headers["access-control-max-age"]) <= 7200
    assert response.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in response.headers


async def test_preflight_asking_for_an_unlisted_header_is_refused(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        response = await client.options(
            f"/v1/widget/{key}/session",
            headers={
                "Origin": SHOP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "cookie",
            },
        )
    assert response.status_code == 403


async def test_unknown_key_is_404_and_revoked_key_is_403(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        unknown = await client.post("/v1/widget/dk_nope/session", headers={"Origin": SHOP})
        await TenantRepository(redis).revoke_key(key)
        revoked = await client.post(f"/v1/widget/{key}/session", headers={"Origin": SHOP})
    assert unknown.status_code == 404
    assert revoked.status_code == 403
    assert "revoked" in revoked.json()["error"]["message"]


async def test_session_without_origin_is_refused(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        response = await client.post(f"/v1/widget/{key}/session")
    assert response.status_code == 403


async def test_previous_token_keeps_the_visitor_and_foreign_tokens_do_not(redis: Redis) -> None:
    await add_tenant(redis, origins=(SHOP, "https://blog.example.com"))
    key = (await TenantRepository(redis).keys_of("acme"))[0].id
    async with perch(redis) as client:
        first = await start_session(client, key)
        again = await start_session(client, key, token=first["token"])
        elsewhere = await start_session(client, key, origin="https://blog.example.com", token=first["token"])
        tampered = await start_session(client, key, token=first["token"][:-2] + "xx")
    assert again["visitor_id"] == first["visitor_id"]
    assert again["token"] != first["token"] or again["expires_at"] >= first["expires_at"]
    assert elsewhere["visitor_id"] != first["visitor_id"]
    assert tampered["visitor_id"] != first["visitor_id"]


async def test_expired_token_within_retention_keeps_the_visitor(redis: Redis) -> None:
    tenant, key = await add_tenant(redis)
    now = time.time()
    old = SessionTokens([SECRET], ttl_seconds=60, clock=lambda: now - 2 * 86400)
    token, claims = old.issue(tenant_id="acme", key_id=key, origin=SHOP, visitor_id="v_" + "a" * 32)
    stale = SessionTokens([SECRET], ttl_seconds=60, clock=lambda: now - tenant.retention_seconds - 3600)
    ancient, _ = stale.issue(tenant_id="acme", key_id=key, origin=SHOP, visitor_id="v_" + "b" * 32)
    async with perch(redis) as client:
        renewed = await start_session(client, key, token=token)
        lapsed = await start_session(client, key, token=ancient)
    assert renewed["visitor_id"] == claims.visitor_id
    assert lapsed["visitor_id"] != "v_" + "b" * 32


async def test_malformed_session_body_is_a_clear_400(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        response = await client.post(
            f"/v1/widget/{key}/session", headers={"Origin": SHOP}, content=b'{"token": 5, "x": 1}'
        )
    assert response.status_code == 400
    assert "token" in response.json()["error"]["message"]


async def test_config_returns_branding_with_an_etag(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        first = await client.get(f"/v1/widget/{key}/config", headers={"Origin": SHOP})
        cached = await client.get(
            f"/v1/widget/{key}/config", headers={"Origin": SHOP, "If-None-Match": first.headers["etag"]}
        )
    assert first.status_code == 200
    body = first.json()
    assert body["branding"]["greeting"] == "Hi! How can I help?"
    assert body["chatkit"]["api_url"] == "/t/acme/chatkit"
    assert cached.status_code == 304
    assert cached.headers["access-control-allow-origin"] == SHOP


async def test_oversized_body_is_refused_with_413(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        response = await client.post(f"/v1/widget/{key}/session", headers={"Origin": SHOP}, content=b"x" * (300 * 1024))
    assert response.status_code == 413


async def test_every_response_carries_a_request_id(redis: Redis) -> None:
    async with perch(redis) as client:
        given = await client.get("/healthz", headers={"X-Request-Id": "abc12345-trace"})
        fresh = await client.get("/healthz")
    assert given.headers["x-request-id"] == "abc12345-trace"
    assert len(fresh.headers["x-request-id"]) == 16


@pytest.mark.parametrize(
    ("accent", "ink"),
    [
        pytest.param("#f59e0b", "#111111", id="amber-gets-dark-text"),
        pytest.param("#fde047", "#111111", id="yellow-gets-dark-text"),
        pytest.param("#0f766e", "#ffffff", id="teal-gets-white-text"),
        pytest.param("#2563eb", "#ffffff", id="blue-gets-white-text"),
    ],
)
async def test_config_says_which_text_colour_reads_on_the_accent(redis: Redis, accent: str, ink: str) -> None:
    tenant, key = await add_tenant(redis)
    branding = tenant.branding.model_copy(update={"theme": Theme(accent=accent)})
    await TenantRepository(redis).save(tenant.model_copy(update={"branding": branding}))
    async with perch(redis) as client:
        theme = (await client.get(f"/v1/widget/{key}/config", headers={"Origin": SHOP})).json()["branding"]["theme"]
    assert theme["accent"] == accent and theme["accent_ink"] == ink
