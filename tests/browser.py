"""Drive Debian's Chromium with Playwright against a live Perch and a customer site on another origin."""

from __future__ import annotations

import asyncio
import html
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
TIMEOUT_MS = 15_000

if not CHROMIUM.exists():
    if os.environ.get("PERCH_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"{CHROMIUM} is missing and PERCH_REQUIRE_BROWSER=1: install Debian's chromium package.")
    pytest.skip(
        f"{CHROMIUM} is not installed (apt-get install chromium); browser tests skipped.", allow_module_level=True
    )

from playwright.async_api import Browser, Frame, Page, async_playwright  # noqa: E402


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Launch headless Debian Chromium (never a Playwright-downloaded build)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Recorder:
    """ASGI middleware that notes every request the service receives, and the status it answered."""

    app: ASGIApp
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope["query_string"].decode("latin-1")
        entry: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "query": query,
            "headers": headers,
            "body": b"",
            "status": None,
        }
        self.requests.append(entry)

        async def recording_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                entry["body"] += message.get("body", b"")
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, recording_receive, recording_send)

    def paths(self, prefix: str = "/") -> list[str]:
        return [r["path"] for r in self.requests if r["path"].startswith(prefix)]

    def sessions(self) -> list[dict[str, Any]]:
        """The session requests proper (CORS preflights left out)."""
        return [r for r in self.requests if r["method"] == "POST" and r["path"].endswith("/session")]

    def chatkit_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests if r["path"].endswith("/chatkit") and r["body"]]

    def chatkit_posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chatkit") and r["method"] == "POST"]

    def chatkit_tokens(self) -> list[str]:
        """The bearer token of each chat request, in order."""
        return [r["headers"].get("authorization", "").removeprefix("Bearer ") for r in self.chatkit_posts()]


@dataclass
class CustomerSite:
    """The customer's own web server: pages that paste the snippet, and a canary that must never be hit."""

    pages: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, str]] = field(default_factory=dict)
    canary_hits: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/canary/{rest:path}", self._canary), Route("/{path:path}", self._page)])

    async def _page(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        self.served.append(path)
        if path in self.files:
            body, media_type = self.files[path]
            return Response(body, media_type=media_type)
        if path not in self.pages:
            return Response("not found", status_code=404)
        return HTMLResponse(self.pages[path])

    async def _canary(self, request: Request) -> Response:
        self.canary_hits.append(request.url.path)
        return Response(b"", media_type="image/png")


def customer_page(service_url: str, key: str, *, head: str = "", **data: str) -> str:
    """A plain customer page with the real snippet, as a site owner would paste it."""
    attributes = "".join(f' data-{name.replace("_", "-")}="{html.escape(value)}"' for name, value in data.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Acme Outdoor</title>
<style>body{{font:16px/1.5 Georgia,serif;margin:0;background:#f6f4ef;color:#222}}
header{{padding:18px 32px;background:#fff;border-bottom:1px solid #e5e0d6;font-weight:bold;font-size:20px}}
main{{max-width:820px;margin:0 auto;padding:40px 32px}} h1{{font-size:40px;line-height:1.1;margin:0 0 12px}}
.cards{{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:16px;margin-top:28px}}
.card{{background:#fff;border:1px solid #e5e0d6;border-radius:12px;padding:16px;min-height:120px}}</style>
<script>window.__before = Object.getOwnPropertyNames(window);</script>
{head}
</head><body>
<header>Acme Outdoor</header>
<main><h1>Gear for long weekends.</h1><p>Tents, stoves and rain shells, tested on real trips.</p>
<div class="cards"><div class="card">Trail tent 2P</div><div class="card">Camp stove</div>
<div class="card">Rain shell</div></div>
<button id="page-button" type="button">A button on the page</button></main>
<script async src="{service_url}/widget.js" data-key="{key}"{attributes}></script>
</body></html>"""


@asynccontextmanager
async def black_hole() -> AsyncIterator[str]:
    """Serve nothing: accept connections and never answer, like a CDN that hangs. Yields its base URL."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


HOST_EVENTS = """<script>
window.__events = [];
window.Perch = window.Perch || function () { (Perch.q = Perch.q || []).push(arguments); };
["ready", "open", "close", "message", "error", "shutdown"].forEach(function (name) {
  Perch("on", name, function (detail) {
    window.__events.push({name: name, detail: detail === undefined ? null : detail});
  });
});
</script>"""


async def wait_until(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll a condition until it holds (for state outside the browser, like a server's request log)."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.05)


async def shadow_node(page: Page, attribute: str) -> dict[str, Any] | None:
    """Find an element with `attribute` anywhere, closed shadow roots included (CDP pierces them; scripts can't).

    The result carries its attributes (`attrs`), the centre of its box (`center`) and its computed
    style (`style`, property name to value).
    """
    cdp = await page.context.new_cdp_session(page)
    try:
        document = await cdp.send("DOM.getDocument", {"depth": -1, "pierce": True})
        found = _find(document["root"], attribute)
        if found is None:
            return None
        attrs = found.get("attributes", [])
        found["attrs"] = dict(zip(attrs[::2], attrs[1::2], strict=True))
        box = await cdp.send("DOM.getBoxModel", {"backendNodeId": found["backendNodeId"]})
        quad = box["model"]["border"]
        found["center"] = (sum(quad[0::2]) / 4, sum(quad[1::2]) / 4)
        await cdp.send("DOM.enable")
        await cdp.send("CSS.enable")
        computed = await cdp.send("CSS.getComputedStyleForNode", {"nodeId": found["nodeId"]})
        found["style"] = {p["name"]: p["value"] for p in computed["computedStyle"]}
        return found
    finally:
        await cdp.detach()


def _find(node: dict[str, Any], attribute: str) -> dict[str, Any] | None:
    if attribute in node.get("attributes", [])[::2]:
        return node
    for child in node.get("shadowRoots", []) + node.get("children", []):
        found = _find(child, attribute)
        if found is not None:
            return found
    return None


async def launcher_node(page: Page) -> dict[str, Any]:
    """Return the launcher button as `shadow_node` finds it, waiting for it to be drawn."""
    found: dict[str, Any] | None = None

    async def drawn() -> bool:
        nonlocal found
        found = await shadow_node(page, "aria-expanded")
        return found is not None

    await wait_until(drawn)
    assert found is not None
    return found


async def launcher(page: Page) -> dict[str, str]:
    """Return the launcher button's attributes, waiting for it to be drawn."""
    attrs: dict[str, str] = (await launcher_node(page))["attrs"]
    return attrs


async def click_launcher(page: Page) -> None:
    x, y = (await launcher_node(page))["center"]
    await page.mouse.click(x, y)


async def expanded(page: Page, value: str) -> None:
    async def check() -> bool:
        return (await launcher(page)).get("aria-expanded") == value

    await wait_until(check)


async def embed_frame(page: Page) -> Frame:
    """Return the chat iframe (it lives in a closed shadow root, but Playwright sees every frame)."""
    found: list[Frame] = []

    def attached() -> bool:
        found[:] = [f for f in page.frames if "/embed/" in f.url]
        return bool(found)

    await wait_until(attached)
    return found[0]


async def lite_ready(frame: Frame) -> None:
    await frame.wait_for_selector(".pl .pl-input", timeout=TIMEOUT_MS)


def console_warnings(page: Page) -> list[str]:
    """Collect what the widget says on the page's console from now on."""
    said: list[str] = []
    page.on("console", lambda message: said.append(message.text) if message.text.startswith("Perch:") else None)
    return said


async def host_events(page: Page, name: str) -> list[Any]:
    events: list[dict[str, Any]] = await page.evaluate("window.__events || []")
    return [e["detail"] for e in events if e["name"] == name]


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / name))
