"""The widget's files: size budgets, caching, and the embed page's framing policy."""

from __future__ import annotations

import gzip
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from service.tenants import Branding, TenantRepository
from tests.harness import SHOP, add_tenant, perch, with_settings

WIDGET = Path(__file__).resolve().parents[1] / "widget"
LOADER_BUDGET = 4096
LITE_BUDGET = 25 * 1024


def gzipped_size(name: str) -> int:
    """Measure as `gzip -9 -c FILE | wc -c` does: the header carries the file name, a few bytes more."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as compressed:
        compressed.write((WIDGET / name).read_bytes())
    return len(buffer.getvalue())


def test_loader_stays_within_its_gzip_budget() -> None:
    assert gzipped_size("loader.js") <= LOADER_BUDGET


def test_lite_renderer_stays_within_its_gzip_budget() -> None:
    assert gzipped_size("lite.js") <= LITE_BUDGET


@pytest.mark.parametrize("name", ["loader.js", "embed.js", "lite.js"])
def test_widget_scripts_are_type_checked(name: str) -> None:
    assert (WIDGET / name).read_text(encoding="utf-8").startswith("// @ts-check\n")


@pytest.mark.parametrize("name", ["loader.js", "embed.js", "lite.js"])
def test_widget_scripts_parse_in_older_safari(name: str) -> None:
    # Safari before 16.4 rejects a regex lookbehind when it parses the file, so nothing in it would run.
    assert not re.search(r"\(\?<[=!]", (WIDGET / name).read_text(encoding="utf-8"))


async def test_widget_js_is_cached_and_revalidated_with_an_etag(redis: Redis) -> None:
    async with perch(redis) as client:
        first = await client.get("/widget.js")
        again = await client.get("/widget.js", headers={"If-None-Match": first.headers["etag"]})
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("application/javascript")
    assert first.headers["cache-control"] == "public, max-age=300"
    assert first.content == (WIDGET / "loader.js").read_bytes()
    assert "set-cookie" not in first.headers
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first.headers["etag"]


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        pytest.param("embed.js", "application/javascript", id="embed-script"),
        pytest.param("lite.js", "application/javascript", id="lite-renderer"),
        pytest.param("embed.css", "text/css", id="styles"),
    ],
)
async def test_embed_assets_are_served_with_etags(redis: Redis, name: str, media_type: str) -> None:
    async with perch(redis) as client:
        response = await client.get(f"/widget/{name}")
        cached = await client.get(f"/widget/{name}", headers={"If-None-Match": response.headers["etag"]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content == (WIDGET / name).read_bytes()
    assert cached.status_code == 304


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/widget/demo.html", id="not-on-the-list"),
        pytest.param("/widget/loader.js", id="loader-only-at-widget-js"),
        pytest.param("/widget/..%2Fpyproject.toml", id="traversal"),
        pytest.param("/widget/%2e%2e/service/app.py", id="dot-segments"),
    ],
)
async def test_only_listed_widget_files_are_served(redis: Redis, path: str) -> None:
    async with perch(redis) as client:
        response = await client.get(path)
    assert response.status_code == 404


def csp(header: str) -> dict[str, str]:
    return {part.split(" ", 1)[0]: part.split(" ", 1)[1] if " " in part else "" for part in header.split("; ")}


async def test_embed_page_may_be_framed_only_by_the_keys_origins(redis: Redis) -> None:
    origins = (SHOP, "https://*.example.org", "http://localhost:3000")
    _, key = await add_tenant(redis, origins=origins)
    settings = with_settings(chatkit_js_url="https://cdn.chatkit.test/deployments/chatkit/chatkit.js")
    async with perch(redis, settings) as client:
        response = await client.get(f"/embed/{key}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = csp(response.headers["content-security-policy"])
    assert sorted(policy["frame-ancestors"].split(" ")) == sorted(origins)
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self' https://cdn.chatkit.test"
    assert policy["connect-src"] == "'self' https://cdn.chatkit.test"
    assert policy["img-src"] == "'self' data:"
    assert policy["base-uri"] == "'none'" and policy["form-action"] == "'none'"
    assert "access-control-allow-origin" not in response.headers
    config = embedded_config(response.text)
    assert config["key"] == key and config["tenant"] == "acme"
    assert config["chatkit"]["api_url"] == "/t/acme/chatkit"
    assert sorted(config["origins"]) == sorted(origins)
    assert "token" not in response.text


async def test_embed_page_keeps_branding_text_inert(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    repo = TenantRepository(redis)
    tenant = await repo.get("acme")
    hostile = "</script><script>alert(1)</script>"
    await repo.save(tenant.model_copy(update={"branding": Branding(title=hostile, greeting=hostile)}))
    async with perch(redis) as client:
        response = await client.get(f"/embed/{key}")
    assert "<script>alert(1)" not in response.text
    assert embedded_config(response.text)["branding"]["greeting"] == hostile


async def test_embed_page_is_not_found_for_an_unknown_key_and_forbidden_for_a_revoked_one(redis: Redis) -> None:
    _, key = await add_tenant(redis)
    async with perch(redis) as client:
        unknown = await client.get("/embed/dk_nope")
        await TenantRepository(redis).revoke_key(key)
        revoked = await client.get(f"/embed/{key}")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    assert revoked.status_code == 403
    assert revoked.json()["error"]["code"] == "forbidden"


def embedded_config(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="perch-config">(.*?)</script>', page)
    assert match is not None
    config: dict[str, Any] = json.loads(match.group(1))
    return config


@pytest.mark.parametrize("name", ["launcher.png", "chat-light.png", "chat-dark.png", "mobile.png"])
def test_readme_shows_the_screenshots_the_browser_tests_write(name: str) -> None:
    root = WIDGET.parent
    assert f"(docs/screenshots/{name})" in (root / "README.md").read_text(encoding="utf-8")
    assert (root / "docs" / "screenshots" / name).read_bytes().startswith(b"\x89PNG")
