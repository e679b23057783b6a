"""The operator CLI, `python -m service tenants|keys …`, against the real Redis the service uses."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.budget import TokenBudget
from service.cli import LIMIT_KINDS, main
from service.tenants import Limits, RateSetting, Tenant, TenantRepository
from tests.conftest import REDIS_URL
from tests.fake_upstream import FakeUpstream, Scenario
from tests.harness import SHOP, add_tenant, openai_settings, perch, start_session, start_turn

# Without REDIS_URL the suite runs on fakeredis, which a CLI in another process can't reach; use
# this spare database of a local server instead (it is flushed), or skip.
FALLBACK_REDIS_URL = "redis://127.0.0.1:6379/14"
ROOT = Path(__file__).resolve().parents[1]
BLOG = "https://blog.example.com"


@dataclass(frozen=True)
class Shared:
    """A Redis database both the CLI (by URL) and the test (by client) reach."""

    url: str
    redis: Redis

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.url}


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
async def shared(redis: Redis) -> AsyncIterator[Shared]:
    if REDIS_URL:
        yield Shared(REDIS_URL, redis)  # the `redis` fixture has flushed it
        return
    client: Redis = Redis.from_url(FALLBACK_REDIS_URL, decode_responses=True, socket_connect_timeout=1)
    try:
        await client.ping()
    except (RedisError, OSError):
        await client.aclose()
        pytest.skip(f"the CLI edits a real Redis: set REDIS_URL, or run a server for {FALLBACK_REDIS_URL}")
    await client.flushdb()
    try:
        yield Shared(FALLBACK_REDIS_URL, client)
    finally:
        await client.aclose()


async def cli(capsys: pytest.CaptureFixture[str], env: dict[str, str], *argv: str) -> Run:
    """Run the CLI in-process, as `python -m service` would, and capture what it prints."""
    # main() runs its own event loop, so give it a thread of its own.
    code = await asyncio.to_thread(main, list(argv), env)
    out, err = capsys.readouterr()
    return Run(code, out, err)


async def snapshot(redis: Redis) -> dict[str, object]:
    """Everything the tenant repository keeps, to prove a failed command wrote nothing."""
    state: dict[str, object] = {}
    for key in sorted(map(str, await redis.keys("*"))):
        kind = await redis.type(key)
        if kind == "string":
            state[key] = await redis.get(key)
        elif kind == "set":
            state[key] = sorted(await redis.smembers(key))
        else:  # the repository writes only strings and sets
            state[key] = kind
    return state


async def test_tenants_create_list_and_show(shared: Shared, capsys: pytest.CaptureFixture[str]) -> None:
    created = await cli(
        capsys, shared.env, "--json", "tenants", "create", "acme", "--name", "Acme", "--provider", "openai"
    )
    assert created.code == 0, created.err
    assert created.json()["id"] == "acme" and created.json()["name"] == "Acme"
    assert created.json()["ai"]["provider"] == "openai" and created.json()["ai"]["model"] == "gpt-4.1-mini"
    assert (await cli(capsys, shared.env, "tenants", "create", "globex", "--name", "Globex")).code == 0

    listed = await cli(capsys, shared.env, "tenants", "list")
    assert listed.code == 0
    assert listed.out.splitlines() == ["acme\tAcme\topenai:gpt-4.1-mini", "globex\tGlobex\tdemo:demo"]

    shown = await cli(capsys, shared.env, "tenants", "show", "acme", "--json")
    assert shown.code == 0
    assert shown.json() == created.json()
    assert (await TenantRepository(shared.redis).get("acme")).ai.provider == "openai"


async def test_domain_key_lifecycle(shared: Shared, capsys: pytest.CaptureFixture[str]) -> None:
    assert (await cli(capsys, shared.env, "tenants", "create", "acme", "--name", "Acme")).code == 0
    created = await cli(
        capsys,
        shared.env,
        *("keys", "create", "acme", "--json", "--label", "shop"),
        *("--origin", "https://SHOP.example.com:443", "--origin", "https://*.example.org"),
    )
    assert created.code == 0, created.err
    key = created.json()
    assert key["id"].startswith("dk_") and key["tenant_id"] == "acme" and key["label"] == "shop"
    assert key["origins"] == ["https://*.example.org", SHOP]  # canonical, sorted
    assert key["revoked_at"] is None

    added = await cli(capsys, shared.env, "keys", "add-origin", key["id"], BLOG, "--json")
    assert added.code == 0, added.err
    assert added.json()["origins"] == ["https://*.example.org", BLOG, SHOP]

    # Any spelling of a listed origin removes it, as it would match the same pages.
    removed = await cli(capsys, shared.env, "--json", "keys", "remove-origin", key["id"], "https://Shop.Example.com/")
    assert removed.code == 0, removed.err
    assert removed.json()["origins"] == ["https://*.example.org", BLOG]

    revoked = await cli(capsys, shared.env, "keys", "revoke", key["id"])
    assert revoked.code == 0, revoked.err
    assert revoked.out.split("\t")[:3] == [key["id"], "acme", "revoked"]

    listed = await cli(capsys, shared.env, "keys", "list", "acme")
    assert listed.out.splitlines() == [f"{key['id']}\tacme\trevoked\thttps://*.example.org {BLOG}"]
    assert not (await TenantRepository(shared.redis).get_key(key["id"])).active


async def test_json_output_is_the_whole_stored_record(shared: Shared, capsys: pytest.CaptureFixture[str]) -> None:
    repo = TenantRepository(shared.redis)
    await repo.save(Tenant(id="acme", name="Acme"))
    await repo.save(Tenant(id="globex", name="Globex"))
    await repo.create_key("acme", [SHOP], label="shop")
    await repo.revoke_key((await repo.create_key("acme", [BLOG])).id)

    tenants = await cli(capsys, shared.env, "--json", "tenants", "list")
    keys = await cli(capsys, shared.env, "keys", "list", "acme", "--json")

    assert tenants.json() == [t.model_dump(mode="json") for t in await repo.all()]
    assert keys.json() == [k.model_dump(mode="json") for k in await repo.keys_of("acme")]
    assert [Tenant.model_validate(t) for t in tenants.json()] == await repo.all()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(("tenants", "create", "Bad_Slug", "--name", "X"), "not a valid tenant id", id="bad-slug"),
        pytest.param(("tenants", "create", "acme-", "--name", "X"), "not a valid tenant id", id="slug-dash"),
        pytest.param(("tenants", "create", "acme", "--name", "Again"), "already exists", id="duplicate-tenant"),
        pytest.param(("tenants", "show", "nope"), "No tenant 'nope'", id="show-unknown-tenant"),
        pytest.param(("keys", "create", "nope", "--origin", BLOG), "No tenant 'nope'", id="key-for-unknown-tenant"),
        pytest.param(("keys", "list", "nope"), "No tenant 'nope'", id="list-unknown-tenant"),
        pytest.param(("keys", "create", "acme", "--origin", "null"), "null is what browsers send", id="null"),
        pytest.param(("keys", "create", "acme", "--origin", "*"), "would allow every website", id="star"),
        pytest.param(("keys", "create", "acme", "--origin", "https://*.com"), "public suffix", id="public-wildcard"),
        pytest.param(("keys", "create", "acme", "--origin", f"{SHOP}/checkout"), "no path", id="path"),
        pytest.param(
            ("keys", "create", "acme", "--origin", "https://me:pw@shop.example.com"), "user name", id="userinfo"
        ),
        pytest.param(
            ("keys", "create", "acme", "--origin", BLOG, "--origin", "shop.example.com"),
            "start with http:// or https://",
            id="one-bad-of-two",
        ),
        pytest.param(("keys", "add-origin", "{key}", "null"), "null is what browsers send", id="add-null"),
        pytest.param(("keys", "add-origin", "{key}", "https://*.co.uk"), "public suffix", id="add-public-wildcard"),
        pytest.param(("keys", "remove-origin", "{key}", BLOG), "is not one of", id="remove-unlisted"),
        pytest.param(("keys", "remove-origin", "{key}", "*"), "would allow every website", id="remove-invalid"),
        pytest.param(("keys", "revoke", "dk_missing"), "No domain key 'dk_missing'", id="revoke-unknown-key"),
        pytest.param(("keys", "add-origin", "dk_missing", BLOG), "No domain key 'dk_missing'", id="add-unknown-key"),
        pytest.param(("keys", "revoke", "not-a-key"), "No domain key 'not-a-key'", id="malformed-key"),
        pytest.param(("tenants", "limits", "nope"), "No tenant 'nope'", id="limits-unknown-tenant"),
        pytest.param(
            ("tenants", "limits", "acme", "--visitor-messages", "6/60"),
            "--visitor-messages 6/60: expected N/SECONDS/BURST, N per SECONDS with bursts of up to BURST, like 6/60/4",
            id="rate-two-parts",
        ),
        pytest.param(
            ("tenants", "limits", "acme", "--tenant-messages", "ten/60/5"), "expected N/SECONDS/BURST", id="rate-word"
        ),
        pytest.param(
            ("tenants", "limits", "acme", "--sessions-per-ip", "0/86401/1"),
            "0/86401/1: N must be at least 1, SECONDS must be at most 86400 (expected N/SECONDS/BURST",
            id="rate-out-of-range",
        ),
        pytest.param(
            ("tenants", "limits", "acme", "--concurrent-streams", "2", "--visitor-requests", "1/60/0"),
            "--visitor-requests 1/60/0: BURST must be at least 1",
            id="one-good-one-bad",
        ),
        pytest.param(
            ("tenants", "limits", "acme", "--concurrent-streams", "21"),
            "--concurrent-streams 21: must be at most 20 (expected a whole number, like 2)",
            id="streams-too-many",
        ),
        pytest.param(
            ("tenants", "limits", "acme", "--concurrent-streams", "none"), "expected a whole number", id="streams-none"
        ),
        pytest.param(
            ("tenants", "limits", "acme", "--tenant-daily-tokens", "999"),
            "--tenant-daily-tokens 999: must be at least 1000 (expected a number of tokens per UTC day",
            id="tokens-too-few",
        ),
        pytest.param(
            ("tenants", "limits", "acme", "--visitor-daily-tokens", "-5"), "or none for no cap", id="tokens-negative"
        ),
        pytest.param(("tenants", "usage", "nope"), "No tenant 'nope'", id="usage-unknown-tenant"),
        pytest.param(
            ("tenants", "usage", "acme", "--days", "0"), "--days 0: expected a whole number from 1 to 90", id="days-0"
        ),
        pytest.param(("tenants", "usage", "acme", "--days", "91"), "from 1 to 90", id="days-91"),
        pytest.param(("tenants", "usage", "acme", "--days", "week"), "from 1 to 90", id="days-word"),
    ],
)
async def test_bad_input_fails_with_one_line_and_changes_nothing(
    shared: Shared, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    repo = TenantRepository(shared.redis)
    await repo.save(Tenant(id="acme", name="Acme"))
    key = await repo.create_key("acme", [SHOP])
    before = await snapshot(shared.redis)

    run = await cli(capsys, shared.env, *(arg.format(key=key.id) for arg in argv))

    assert run.code == 1
    assert run.out == ""
    assert run.err.startswith("error: ") and run.err.count("\n") == 1, run.err
    assert message in run.err
    assert await snapshot(shared.redis) == before


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("tenants", "list"), id="read"),
        pytest.param(("tenants", "create", "acme", "--name", "Acme"), id="write"),
        pytest.param(("keys", "revoke", "dk_demo"), id="keys"),
    ],
)
async def test_without_redis_url_the_cli_refuses_and_says_to_set_it(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    # An in-process store would vanish with the command, so editing it would silently do nothing.
    run = await cli(capsys, {}, *argv)
    assert run.code != 0
    assert run.out == ""
    assert "set REDIS_URL" in run.err and run.err.count("\n") == 1


async def test_unreachable_redis_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = await cli(capsys, {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}, "tenants", "list")
    assert run.code == 1
    assert run.out == ""
    assert run.err.startswith("error: cannot reach Redis at REDIS_URL")


async def test_usage_errors_exit_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    run = await cli(capsys, {"REDIS_URL": FALLBACK_REDIS_URL}, "keys", "list")
    assert run.code == 2
    assert run.out == ""
    assert "usage: python -m service keys list" in run.err


async def test_the_service_honours_what_the_cli_changed(shared: Shared, capsys: pytest.CaptureFixture[str]) -> None:
    assert (await cli(capsys, shared.env, "tenants", "create", "acme", "--name", "Acme")).code == 0
    key = (await cli(capsys, shared.env, "--json", "keys", "create", "acme", "--origin", SHOP)).json()["id"]

    async with perch(shared.redis) as client:
        session = await start_session(client, key, origin=SHOP)
        assert session["token"]
        blog = await client.post(f"/v1/widget/{key}/session", headers={"Origin": BLOG})
        assert blog.status_code == 403

        assert (await cli(capsys, shared.env, "keys", "add-origin", key, BLOG)).code == 0
        assert (await start_session(client, key, origin=BLOG))["token"]

        assert (await cli(capsys, shared.env, "keys", "revoke", key)).code == 0
        revoked = await client.post(f"/v1/widget/{key}/session", headers={"Origin": SHOP})
        assert revoked.status_code == 403
        assert "revoked" in revoked.json()["error"]["message"]


DEFAULT_LIMITS = [
    "sessions_per_ip       30 per 3600 s, burst 10",
    "visitor_messages      6 per 60 s, burst 4",
    "visitor_requests      120 per 60 s, burst 60",
    "tenant_messages       600 per 60 s, burst 100",
    "concurrent_streams    2 at a time per visitor",
    "tenant_daily_tokens   2000000 tokens per UTC day",
    "visitor_daily_tokens  100000 tokens per UTC day",
]


async def test_tenant_limits_show_and_change_only_what_is_named(
    shared: Shared, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = TenantRepository(shared.redis)
    tenant, key = await add_tenant(shared.redis, provider="openai", model="gpt-fake")

    shown = await cli(capsys, shared.env, "tenants", "limits", "acme")
    assert shown.code == 0, shown.err
    assert shown.out.splitlines() == DEFAULT_LIMITS

    changed = await cli(
        capsys,
        shared.env,
        *("tenants", "limits", "acme", "--json", "--visitor-messages", "10/60/5"),
        *("--tenant-daily-tokens", "none", "--concurrent-streams", "3"),
    )
    assert changed.code == 0, changed.err
    expected = Limits(
        visitor_messages=RateSetting(count=10, per_seconds=60, burst=5), concurrent_streams=3, tenant_daily_tokens=None
    )
    assert changed.json() == expected.model_dump(mode="json")
    assert await repo.get("acme") == tenant.model_copy(update={"limits": expected})
    assert [k.id for k in await repo.keys_of("acme")] == [key]

    again = await cli(capsys, shared.env, "tenants", "limits", "acme", "--visitor-daily-tokens", "5000")
    assert again.code == 0, again.err
    assert again.out.splitlines() == [
        DEFAULT_LIMITS[0],
        "visitor_messages      10 per 60 s, burst 5",
        *DEFAULT_LIMITS[2:4],
        "concurrent_streams    3 at a time per visitor",
        "tenant_daily_tokens   no cap",
        "visitor_daily_tokens  5000 tokens per UTC day",
    ]


async def test_every_limit_has_an_option() -> None:
    # A limit added to the model but not to the CLI could be neither shown nor changed from a shell.
    assert list(LIMIT_KINDS) == list(Limits.model_fields)


async def test_a_limit_set_by_the_cli_is_what_the_service_enforces(
    shared: Shared, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await cli(capsys, shared.env, "tenants", "create", "acme", "--name", "Acme")).code == 0
    key = (await cli(capsys, shared.env, "--json", "keys", "create", "acme", "--origin", SHOP)).json()["id"]
    set_limit = await cli(capsys, shared.env, "tenants", "limits", "acme", "--sessions-per-ip", "1/3600/1")
    assert set_limit.code == 0, set_limit.err

    # The default would allow a burst of ten sessions from one address.
    async with perch(shared.redis) as client:
        assert (await start_session(client, key))["token"]
        second = await client.post(f"/v1/widget/{key}/session", headers={"Origin": SHOP})
    assert second.status_code == 429
    assert "Too many new chats" in second.json()["error"]["message"]


async def test_tenant_usage_is_what_chat_turns_recorded_per_day(
    shared: Shared, capsys: pytest.CaptureFixture[str], upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base_url = upstream
    fake.scenario = Scenario(reply="Counted.", prompt_tokens=321, completion_tokens=54)
    _, key = await add_tenant(shared.redis, provider="openai", model="gpt-fake")
    now = datetime.now(UTC)
    earlier = TokenBudget(shared.redis, clock=lambda: now - timedelta(days=2))
    reservation = await earlier.reserve("acme", "v_earlier", 500, None, None)
    assert reservation is not None
    await earlier.settle(reservation, 40, 7)
    async with perch(shared.redis, openai_settings(base_url)) as client:
        await start_turn(client, key)
    days = [(now - timedelta(days=back)).date().isoformat() for back in (2, 1, 0)]

    recent = await cli(capsys, shared.env, "tenants", "usage", "acme", "--days", "3", "--json")
    assert recent.code == 0, recent.err
    assert recent.json() == [
        {"day": days[0], "messages": 1, "input_tokens": 40, "output_tokens": 7},
        {"day": days[1], "messages": 0, "input_tokens": 0, "output_tokens": 0},
        {"day": days[2], "messages": 1, "input_tokens": 321, "output_tokens": 54},
    ]

    week = await cli(capsys, shared.env, "tenants", "usage", "acme")
    assert week.code == 0, week.err
    lines = week.out.splitlines()
    assert lines[0].split() == ["day", "messages", "input_tokens", "output_tokens"]
    assert len(lines) == 1 + 7
    assert lines[-3].split() == [days[0], "1", "40", "7"]
    assert lines[-1].split() == [days[2], "1", "321", "54"]


async def test_python_dash_m_service_runs_the_cli(shared: Shared) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "REDIS_URL": shared.url}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    created = await asyncio.to_thread(run, "tenants", "create", "acme", "--name", "Acme")
    assert created.returncode == 0, created.stderr
    assert created.stdout == "acme\tAcme\tdemo:demo\n"
    key = await asyncio.to_thread(run, "keys", "create", "acme", "--origin", SHOP, "--json")
    assert key.returncode == 0, key.stderr
    assert json.loads(key.stdout)["origins"] == [SHOP]
    assert [k.id for k in await TenantRepository(shared.redis).keys_of("acme")] == [json.loads(key.stdout)["id"]]

    refused = await asyncio.to_thread(run, "keys", "create", "acme", "--origin", "null")
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith("error: null is what browsers send") and refused.stderr.count("\n") == 1
