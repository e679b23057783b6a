"""Build the app inline and talk to it the way browsers and the widget do."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
from redis.asyncio import Redis

from service.app import create_app
from service.settings import Settings
from service.tenants import AISettings, Limits, Tenant, TenantRepository

SHOP = "https://shop.example.com"
BASE_URL = "http://perch.test"
SECRET = "test-secret-key-that-is-long-enough-0001"
SETTINGS = Settings(secret_keys=(SECRET,), public_url=BASE_URL)


@asynccontextmanager
async def perch(redis: Redis, settings: Settings = SETTINGS) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield a client that talks to it in-process."""
    app = create_app(settings, redis=redis)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield client


async def add_tenant(
    redis: Redis, tenant_id: str = "acme", origins: tuple[str, ...] = (SHOP,), limits: Limits | None = None, **ai: Any
) -> tuple[Tenant, str]:
    """Create a tenant with one domain key; return the tenant and the key id."""
    repo = TenantRepository(redis)
    tenant = Tenant(id=tenant_id, name=tenant_id.title(), ai=AISettings(**ai), limits=limits or Limits())
    await repo.save(tenant)
    key = await repo.create_key(tenant_id, list(origins))
    return tenant, key.id


async def start_session(
    client: httpx.AsyncClient, key: str, origin: str = SHOP, token: str | None = None
) -> dict[str, Any]:
    response = await client.post(f"/v1/widget/{key}/session", headers={"Origin": origin}, json={"token": token})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def chatkit_headers(token: str, origin: str | None = SHOP) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if origin is not None:
        headers["Origin"] = origin
    return headers


def user_input(text: str) -> dict[str, Any]:
    return {"content": [{"type": "input_text", "text": text}], "attachments": [], "inference_options": {}}


def sse_events(body: str) -> list[dict[str, Any]]:
    """Parse an SSE body into its JSON events."""
    return [json.loads(chunk[len("data: ") :]) for chunk in body.split("\n\n") if chunk.startswith("data: ")]


def reply_text(events: list[dict[str, Any]]) -> str:
    """Join the assistant text deltas of a stream."""
    return "".join(
        e["update"]["delta"]
        for e in events
        if e["type"] == "thread.item.updated" and e["update"]["type"] == "assistant_message.content_part.text_delta"
    )


def with_settings(**changes: Any) -> Settings:
    return replace(SETTINGS, **changes)


def openai_settings(base_url: str, **changes: Any) -> Settings:
    """Settings whose `openai` provider is the fake upstream at `base_url`, without client retries."""
    return with_settings(**{"openai_api_key": "sk-test", "openai_base_url": base_url, "llm_max_retries": 0, **changes})


async def start_turn(
    client: httpx.AsyncClient, key: str, text: str = "Hi", token: str | None = None
) -> tuple[str, httpx.Response]:
    """Start a visitor's session (unless given its token) and a new thread with one message."""
    token = token or (await start_session(client, key))["token"]
    body = {"type": "threads.create", "params": {"input": user_input(text)}}
    return token, await client.post("/t/acme/chatkit", headers=chatkit_headers(token), json=body)
