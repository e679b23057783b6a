"""The widget end to end in headless Chromium: a customer page on one origin, Perch on another."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.async_api import Browser, Frame, Page, Route
from redis.asyncio import Redis

from service.app import create_app
from service.demo import DEMO_KEY
from service.settings import Settings
from service.tenants import AISettings, Branding, Limits, Prompt, RateSetting, Tenant, TenantRepository, Theme
from service.tokens import SessionTokens
from tests.browser import (
    HOST_EVENTS,
    TIMEOUT_MS,
    CustomerSite,
    Recorder,
    black_hole,
    chromium,
    click_launcher,
    console_warnings,
    customer_page,
    embed_frame,
    expanded,
    host_events,
    launcher,
    launcher_node,
    lite_ready,
    screenshot,
    wait_until,
)
from tests.fake_upstream import DEFAULT_REPLY, FakeUpstream, Scenario
from tests.harness import SECRET
from tests.live import serve

pytestmark = pytest.mark.browser

BRANDING = Branding(
    title="Acme Assistant",
    greeting="Hi! Ask me about tents, stoves and returns.",
    prompts=[
        Prompt(label="Return policy", prompt="What is your return policy?"),
        Prompt(label="Sizes", prompt="Help me pick a size"),
    ],
    placeholder="Ask Acme anything…",
    disclaimer="Answers may be wrong. Check important facts.",
    theme=Theme(accent="#0f766e", radius="round", density="normal"),
    renderer="lite",
)
UNREACHABLE_CHATKIT = "http://127.0.0.1:9/chatkit.js"


@dataclass
class Stack:
    service: str
    customer: str
    site: CustomerSite
    recorder: Recorder
    key: str


@asynccontextmanager
async def stack(
    redis: Redis,
    *,
    branding: Branding = BRANDING,
    ai: AISettings | None = None,
    allow_customer: bool = True,
    chatkit_js: str | None = None,
    chatkit_url: str = UNREACHABLE_CHATKIT,
    upstream: str | None = None,
    limits: Limits | None = None,
    session_ttl_seconds: int = 3600,
) -> AsyncIterator[Stack]:
    """Serve a customer site on localhost:P2 and Perch on 127.0.0.1:P1, with a key for the customer's origin."""
    site = CustomerSite()
    async with serve(site.app()) as site_url:
        customer = site_url.replace("127.0.0.1", "localhost")
        repo = TenantRepository(redis)
        tenant = Tenant(id="acme", name="Acme", branding=branding, ai=ai or AISettings(), limits=limits or Limits())
        await repo.save(tenant)
        origins = [customer] if allow_customer else ["https://shop.example.com"]
        key = await repo.create_key("acme", origins, key_id="dk_acme_test")
        if chatkit_js is not None:
            site.files["/chatkit.js"] = (chatkit_js, "application/javascript")
            chatkit_url = f"{customer}/chatkit.js"
        settings = Settings(
            secret_keys=(SECRET,),
            chatkit_js_url=chatkit_url,
            openai_api_key="test" if upstream else None,
            openai_base_url=f"{upstream}/v1" if upstream else None,
            llm_max_retries=0,
            session_ttl_seconds=session_ttl_seconds,
        )
        recorder = Recorder(create_app(settings, redis=redis))
        async with serve(recorder) as service:
            yield Stack(service, customer, site, recorder, key.id)


def page_for(s: Stack, path: str = "/", head: str = "", **data: str) -> str:
    s.site.pages[path] = customer_page(s.service, s.key, head=head, **data)
    return s.customer + path


async def replies(frame: Any, count: int) -> str:
    """Wait until the lite renderer shows `count` finished replies and is idle; return the last one."""
    await frame.wait_for_function(
        "n => document.querySelectorAll('.pl-assistant[data-id]').length >= n"
        " && !document.querySelector('.pl-streaming') && !document.querySelector('.pl-busy')",
        arg=count,
        timeout=TIMEOUT_MS,
    )
    reply: str = await frame.locator(".pl-assistant[data-id]").last.inner_text()
    return reply


async def send_and_wait_reply(frame: Any, text: str) -> str:
    """Type a message in the lite composer and wait for the streamed reply to finish."""
    before = await frame.locator(".pl-assistant[data-id]").count()
    await frame.fill(".pl-input", text)
    await frame.press(".pl-input", "Enter")
    return await replies(frame, before + 1)


async def test_snippet_opens_streams_a_reply_and_remembers_the_conversation(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(page_for(s))
        button = await launcher(page)
        assert button["aria-label"] == "Chat with Acme Assistant"
        assert button["aria-expanded"] == "false"
        assert "/embed/" not in " ".join(s.recorder.paths()), "the iframe waits for the first open"
        await screenshot(page, "launcher.png")

        await click_launcher(page)
        await expanded(page, "true")
        frame = await embed_frame(page)
        await lite_ready(frame)
        assert await frame.locator(".pl-greeting").inner_text() == BRANDING.greeting
        assert await frame.locator(".pl-prompt").all_inner_texts() == ["Return policy", "Sizes"]
        await frame.wait_for_function("() => document.activeElement.classList.contains('pl-input')", timeout=TIMEOUT_MS)

        await frame.fill(".pl-input", "Hello there")
        await frame.press(".pl-input", "Enter")
        await frame.wait_for_selector(".pl-assistant.pl-streaming", timeout=TIMEOUT_MS)
        await frame.wait_for_function(
            "() => document.querySelector('.pl-assistant[data-id]') && !document.querySelector('.pl-busy')",
            timeout=TIMEOUT_MS,
        )
        reply = await frame.locator(".pl-assistant").last.inner_text()
        assert "You said: “Hello there”" in reply
        assert await frame.locator("strong", has_text="openai").count() == 1, "markdown is rendered"
        announced = await frame.locator("[aria-live=polite]").inner_text()
        assert "Hello there" in announced
        assert "openai" in announced and "*" not in announced, "screen readers hear the text, not markdown marks"
        await screenshot(page, "chat-light.png")

        stored = await page.evaluate("localStorage.getItem('perch:dk_acme_test')")
        assert stored is not None and json.loads(stored)["thread"].startswith("thr_")
        assert await page.evaluate("document.cookie") == ""
        assert await page.context.cookies() == []
        assert not any("token=" in path for path in s.recorder.paths())

        await page.reload()
        await click_launcher(page)
        frame = await embed_frame(page)
        await frame.wait_for_selector(".pl-user[data-id]", timeout=TIMEOUT_MS)
        assert await frame.locator(".pl-user").all_inner_texts() == ["Hello there"]
        assert "You said" in await frame.locator(".pl-assistant").last.inner_text()

        second = await send_and_wait_reply(frame, "And again")
        assert "And again" in second
        await frame.click(".pl-icon[aria-label='Past conversations']")
        await frame.wait_for_selector(".pl-thread", timeout=TIMEOUT_MS)
        assert await frame.locator(".pl-thread-title").all_inner_texts() == ["Hello there"]


async def test_host_api_sends_messages_reports_events_and_leaks_nothing(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await browser.new_page()
        twice = f'<script async src="{s.service}/widget.js" data-key="{s.key}"></script>'
        await page.goto(page_for(s, head=HOST_EVENTS + twice))
        await page.wait_for_function("() => window.__events.some(e => e.name === 'ready')", timeout=TIMEOUT_MS)
        assert await page.evaluate("document.querySelectorAll('perch-widget').length") == 1, "loading twice is a no-op"

        await page.evaluate("Perch('setContext', {page: 'tents', cart_items: 2})")
        await page.evaluate("Perch('sendMessage', 'Do you ship to Norway?')")
        await expanded(page, "true")
        await page.wait_for_function(
            "() => window.__events.some(e => e.name === 'message' && e.detail.role === 'assistant')", timeout=TIMEOUT_MS
        )
        messages = await host_events(page, "message")
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["text"] == "Do you ship to Norway?"
        assert "Do you ship to Norway?" in messages[1]["text"]
        assert messages[1]["thread_id"].startswith("thr_")
        assert len(await host_events(page, "open")) == 1

        bodies = s.recorder.chatkit_bodies()
        assert bodies[-1]["type"] == "threads.create"
        assert bodies[-1]["metadata"]["perch_context"] == {"page": "tents", "cart_items": 2}
        chat_requests = [r for r in s.recorder.requests if r["path"] == "/t/acme/chatkit"]
        assert all(r["headers"]["authorization"].startswith("Bearer ") for r in chat_requests)

        await page.evaluate("Perch('close')")
        await expanded(page, "false")
        assert len(await host_events(page, "close")) == 1

        leaked = await page.evaluate(
            "Object.getOwnPropertyNames(window).filter(name => !window.__before.includes(name))"
        )
        assert set(leaked) <= {"__before", "__events", "Perch"}
        assert await page.evaluate("document.querySelector('meta[name=viewport]').content") == (
            "width=device-width, initial-scale=1"
        )

        await page.evaluate("Perch('shutdown')")
        assert await page.evaluate("document.querySelectorAll('perch-widget').length") == 0
        assert await page.evaluate("localStorage.getItem('perch:dk_acme_test')") is None


async def test_snippet_attributes_place_open_and_colour_the_launcher(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(page_for(s, position="bottom-left", z_index="5000", open="true"))
        await expanded(page, "true")
        await lite_ready(await embed_frame(page))
        button = await launcher_node(page)
        assert button["center"][0] < 640, "bottom-left puts the launcher on the left"
        assert button["style"]["background-color"] == "rgb(15, 118, 110)", "the tenant's accent"
        assert button["style"]["color"] == "rgb(255, 255, 255)", "the text colour the server chose for the accent"
        assert await page.evaluate("document.querySelector('perch-widget').style.zIndex") == "5000"
        assert await page.evaluate("document.querySelector('perch-widget').shadowRoot") is None, "closed shadow root"


@pytest.mark.parametrize(
    ("data", "warning"),
    [
        pytest.param({"position": "top-left"}, "data-position", id="position"),
        pytest.param({"z_index": "high"}, "data-z-index", id="z-index"),
    ],
)
async def test_bad_snippet_attributes_are_reported(redis: Redis, data: dict[str, str], warning: str) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await browser.new_page()
        said = console_warnings(page)
        await page.goto(page_for(s, **data))
        await launcher(page)
        assert any(warning in text for text in said), said


QUEUED_CALLS = """<script>
window.Perch = window.Perch || function () { (Perch.q = Perch.q || []).push(arguments); };
Perch("setContext", {page: "checkout", cart_total: 120});
Perch("sendMessage", "Queued before the loader arrived");
Perch("frobnicate");
Perch("on", "nonsense", function () {});
Perch("sendMessage", 42);
Perch("setContext", ["not", "an", "object"]);
Perch("setContext", {blob: "x".repeat(3000)});
</script>"""


async def test_calls_queued_before_load_run_and_bad_calls_are_reported(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await browser.new_page()
        said = console_warnings(page)
        await page.goto(page_for(s, head=QUEUED_CALLS + HOST_EVENTS))
        await expanded(page, "true")
        frame = await embed_frame(page)
        await replies(frame, 1)
        assert await frame.locator(".pl-user").all_inner_texts() == ["Queued before the loader arrived"]
        reported = sorted(text.split(" ")[1] for text in said)
        assert reported == ["on", "sendMessage", "setContext", "setContext", "unknown"]

        first = s.recorder.chatkit_bodies()[-1]
        assert first["type"] == "threads.create"
        assert first["metadata"] == {"perch_context": {"page": "checkout", "cart_total": 120}}
        await page.evaluate("Perch('setContext', {page: 'receipt'})")
        await send_and_wait_reply(frame, "Where is my receipt?")
        second = s.recorder.chatkit_bodies()[-1]
        assert second["type"] == "threads.add_user_message"
        assert second["metadata"] == {"perch_context": {"page": "receipt"}}
        await page.evaluate("Perch('setContext', null)")
        await send_and_wait_reply(frame, "Thanks")
        assert "metadata" not in s.recorder.chatkit_bodies()[-1], "null forgets the context"

        await page.evaluate("Perch('toggle')")
        await expanded(page, "false")
        await page.evaluate("Perch('toggle')")
        await expanded(page, "true")
        await page.evaluate("Perch('shutdown')")
        await page.wait_for_function("() => window.__events.some(e => e.name === 'shutdown')", timeout=TIMEOUT_MS)
        assert await page.evaluate("document.querySelectorAll('perch-widget').length") == 0


PAGE_DIALOG = """<script>
document.addEventListener("keydown", function (event) {
  if (event.key === "Escape" && window.__dialogOpen) { event.preventDefault(); window.__dialogOpen = false; }
}, true);
</script>"""


async def test_escape_closes_and_focus_moves_in_and_back(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await browser.new_page()
        await page.goto(page_for(s, head=PAGE_DIALOG))
        await click_launcher(page)
        frame = await embed_frame(page)
        await lite_ready(frame)
        await frame.wait_for_function("() => document.activeElement.classList.contains('pl-input')", timeout=TIMEOUT_MS)

        await page.keyboard.press("Escape")
        await expanded(page, "false")
        # Focus is back on the launcher (inside the closed shadow root, so the page sees only its host)…
        assert await page.evaluate("document.activeElement.tagName") == "PERCH-WIDGET"
        # …which a keyboard user can press to open the chat again.
        await page.keyboard.press("Enter")
        await expanded(page, "true")
        await frame.wait_for_function("() => document.activeElement.classList.contains('pl-input')", timeout=TIMEOUT_MS)

        await page.click("#page-button")
        await page.evaluate("window.__dialogOpen = true")
        await page.keyboard.press("Escape")
        assert await page.evaluate("window.__dialogOpen") is False, "the page's own dialog took that Escape"
        assert (await launcher(page))["aria-expanded"] == "true"
        await page.keyboard.press("Escape")
        await expanded(page, "false")


async def test_disallowed_origin_shows_no_chat_and_sends_no_chat_request(redis: Redis) -> None:
    async with stack(redis, allow_customer=False) as s, chromium() as browser:
        page = await browser.new_page()
        async with page.expect_console_message(lambda m: m.text.startswith("Perch:"), timeout=TIMEOUT_MS):
            await page.goto(page_for(s, head=HOST_EVENTS))
        await page.wait_for_function("() => window.__events.some(e => e.name === 'error')", timeout=TIMEOUT_MS)
        [error] = await host_events(page, "error")
        assert error == {"code": "unavailable", "message": f"no chat: is this site allowed to use {s.key}?"}
        assert await host_events(page, "ready") == []
        assert await page.evaluate("document.querySelectorAll('perch-widget').length") == 0
        assert await page.evaluate("localStorage.length") == 0
        assert s.recorder.paths("/t/") == []
        assert s.recorder.paths("/embed/") == []
        assert [p for p in s.recorder.paths() if p.endswith("/session")] == []


async def test_consent_mode_stores_and_asks_nothing_before_the_visitor_opens(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await browser.new_page()
        await page.goto(page_for(s, head=HOST_EVENTS, consent="required", open="true"))
        await page.wait_for_function("() => window.__events.some(e => e.name === 'ready')", timeout=TIMEOUT_MS)
        assert (await launcher(page))["aria-expanded"] == "false", "data-open waits for the visitor to open it"
        assert s.recorder.paths("/embed/") == []
        assert s.recorder.sessions() == []
        assert await page.evaluate("localStorage.length") == 0

        await click_launcher(page)
        await lite_ready(await embed_frame(page))
        await page.wait_for_function("() => localStorage.getItem('perch:dk_acme_test') !== null", timeout=TIMEOUT_MS)
        assert len(s.recorder.sessions()) == 1


STAND_IN_CHATKIT = """
customElements.define("openai-chatkit", class extends HTMLElement {
  setOptions(options) {
    window.__chatkitOptions = JSON.parse(JSON.stringify(options));
    window.__chatkitFetchIsFunction = typeof options.api.fetch === "function";
    this.api = options.api;
    this.textContent = "stand-in ChatKit";
    this.dispatchEvent(new CustomEvent("chatkit.ready"));
  }
  sendUserMessage(message) {
    const input = {content: [{type: "input_text", text: message.text}], attachments: [], inference_options: {}};
    const body = JSON.stringify({type: "threads.create", params: {input}});
    this.api.fetch(this.api.url, {method: "POST", headers: {"Content-Type": "application/json"}, body})
      .then(r => r.text().then(text => { window.__chatkitReply = {status: r.status, text}; }));
  }
  focusComposer() { window.__chatkitFocused = true; }
});
"""


async def test_chatkit_receives_the_tenant_branding_and_a_fetch_that_carries_the_token(redis: Redis) -> None:
    branding = BRANDING.model_copy(
        update={
            "renderer": "auto",
            "locale": "fr",
            "theme": Theme(
                color_scheme="dark", accent="#7c3aed", radius="pill", density="compact", font_family="Inter"
            ),
        }
    )
    async with stack(redis, branding=branding, chatkit_js=STAND_IN_CHATKIT) as s, chromium() as browser:
        page = await browser.new_page()
        await page.goto(page_for(s, head=HOST_EVENTS))
        await page.wait_for_function("() => window.__events.some(e => e.name === 'ready')", timeout=TIMEOUT_MS)
        await page.evaluate("Perch('setContext', {plan: 'pro'})")
        await click_launcher(page)
        frame = await embed_frame(page)
        await frame.wait_for_function("() => window.__chatkitFocused", timeout=TIMEOUT_MS)

        options = await frame.evaluate("window.__chatkitOptions")
        assert options["api"] == {"url": "/t/acme/chatkit", "domainKey": "domain_pk_localhost_dev"}
        assert await frame.evaluate("window.__chatkitFetchIsFunction")
        assert options["theme"] == {
            "colorScheme": "dark",
            "radius": "pill",
            "density": "compact",
            "color": {"accent": {"primary": "#7c3aed", "level": 1}},
            "typography": {"fontFamily": "Inter"},
        }
        assert options["startScreen"]["greeting"] == BRANDING.greeting
        assert [(p["label"], p["prompt"]) for p in options["startScreen"]["prompts"]] == [
            ("Return policy", "What is your return policy?"),
            ("Sizes", "Help me pick a size"),
        ]
        assert options["composer"] == {"placeholder": "Ask Acme anything…"}
        assert options["disclaimer"] == {"text": BRANDING.disclaimer}
        assert options["header"]["title"] == {"text": "Acme Assistant"}
        assert options["locale"] == "fr"
        assert options["history"]["enabled"] is True
        assert options["threadItemActions"] == {"feedback": True, "retry": True}

        assert await frame.locator(".pl").count() == 0, "ChatKit loaded, so no lite renderer"

        await page.evaluate("Perch('sendMessage', 'Bonjour')")
        await frame.wait_for_function("() => window.__chatkitReply !== undefined", timeout=TIMEOUT_MS)
        reply = await frame.evaluate("window.__chatkitReply")
        assert reply["status"] == 200 and "Bonjour" in reply["text"]
        request = [r for r in s.recorder.requests if r["path"] == "/t/acme/chatkit"][-1]
        assert request["headers"]["authorization"].startswith("Bearer ")
        assert request["headers"]["origin"] == s.service, "framed mode: the embed page calls from Perch's origin"
        assert json.loads(request["body"])["metadata"] == {"perch_context": {"plan": "pro"}}
        await page.wait_for_function(
            "() => window.__events.some(e => e.name === 'message' && e.detail.role === 'assistant')", timeout=TIMEOUT_MS
        )
        assert [m["text"] for m in await host_events(page, "message")][0] == "Bonjour"


FAILING_CHATKIT = """
customElements.define("openai-chatkit", class extends HTMLElement {
  setOptions() {
    const error = new Error("This domain is not registered for ChatKit.");
    setTimeout(() => this.dispatchEvent(new CustomEvent("chatkit.error", {detail: {error}})));
  }
});
"""


@pytest.mark.parametrize(
    ("chatkit_js", "renderer"),
    [
        pytest.param(None, "auto", id="script-unreachable"),
        pytest.param("/* loads, but never defines openai-chatkit */", "auto", id="script-times-out"),
        pytest.param(FAILING_CHATKIT, "auto", id="chatkit-fails-to-start"),
        pytest.param(STAND_IN_CHATKIT, "lite", id="tenant-chose-lite"),
    ],
)
async def test_lite_renderer_takes_over_when_chatkit_cannot_run(
    redis: Redis, chatkit_js: str | None, renderer: str
) -> None:
    branding = BRANDING.model_copy(update={"renderer": renderer})
    async with stack(redis, branding=branding, chatkit_js=chatkit_js) as s, chromium() as browser:
        page = await browser.new_page()
        await page.goto(page_for(s, head=HOST_EVENTS))
        await click_launcher(page)
        frame = await embed_frame(page)
        await lite_ready(frame)
        reply = await send_and_wait_reply(frame, "Still there?")
        assert "Still there?" in reply
        assert await frame.locator("openai-chatkit").count() == 0
        if chatkit_js == FAILING_CHATKIT:
            errors = await host_events(page, "error")
            assert errors[0]["code"] == "chatkit" and "not registered" in errors[0]["message"]
        if renderer == "lite":
            assert "/chatkit.js" not in s.site.served, "a tenant on the lite renderer never loads ChatKit"


async def test_lite_renderer_takes_over_when_chatkit_cdn_never_answers(redis: Redis) -> None:
    branding = BRANDING.model_copy(update={"renderer": "auto"})
    async with (
        black_hole() as cdn,
        stack(redis, branding=branding, chatkit_url=f"{cdn}/chatkit.js") as s,
        chromium() as browser,
    ):
        page = await browser.new_page()
        await page.goto(page_for(s))
        await click_launcher(page)
        frame = await embed_frame(page)
        await lite_ready(frame)
        assert "Still there?" in await send_and_wait_reply(frame, "Still there?")


MALFORMED_STREAM = "".join(
    f"data: {json.dumps(event)}\n\n"
    for event in [
        {"type": "thread.created", "thread": {"id": "thr_stream"}},
        {"type": "thread.item.done", "item": {"type": "user_message", "id": "msg_1", "content": "not a list"}},
        {
            "type": "thread.item.done",
            "item": {
                "type": "assistant_message",
                "id": "msg_2",
                "thread_id": "thr_stream",
                "content": [{"type": "output_text", "text": "Still streaming."}],
            },
        },
    ]
)


async def test_a_malformed_event_does_not_stop_the_host_hearing_about_messages(redis: Redis) -> None:
    branding = BRANDING.model_copy(update={"renderer": "auto"})
    async with stack(redis, branding=branding, chatkit_js=STAND_IN_CHATKIT) as s, chromium() as browser:
        page = await browser.new_page()

        async def malformed(route: Route) -> None:
            await route.fulfill(status=200, content_type="text/event-stream", body=MALFORMED_STREAM)

        await page.route(f"{s.service}/t/acme/chatkit", malformed)
        await page.goto(page_for(s, head=HOST_EVENTS))
        await click_launcher(page)
        frame = await embed_frame(page)
        await frame.wait_for_function("() => window.__chatkitFocused", timeout=TIMEOUT_MS)
        await page.evaluate("Perch('sendMessage', 'Hello')")
        await page.wait_for_function("() => window.__events.some(e => e.name === 'message')", timeout=TIMEOUT_MS)
        assert [m["text"] for m in await host_events(page, "message")] == ["Still streaming."]


XSS_CORPUS = """Here is a tricky answer.

<script>alert('script')</script>
<img src="CANARY/img-tag.png" onerror="alert('img')">
<svg onload=alert('svg')><iframe src="javascript:alert('iframe')"></iframe>
<a href="javascript:alert('html-link')">html link</a>
<style>@import url(CANARY/style.css)</style><link rel=stylesheet href=CANARY/link.css>
<object data="CANARY/object"></object><embed src="CANARY/embed">
[js link](javascript:alert('md-link'))
[mixed case](JaVaScRiPt:alert('case'))
[spaced](  javascript:alert('spaced'))
[entity](&#106;avascript:alert('entity'))
[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgnZGF0YScpPC9zY3JpcHQ+)
[vb](vbscript:msgbox('vb'))
[quote break](https://example.com/" onmouseover="alert('attr'))
<javascript:alert('autolink')>
![tracker](CANARY/tracker.png)
![titled](CANARY/titled.png "title")
**<img src=CANARY/bold.png onerror=alert('bold')>**
`<script>alert('code')</script>`

```html
<script>alert('fence')</script>
```

| col | link |
| --- | --- |
| <img src=CANARY/cell.png> | [cell](javascript:alert('cell')) |

<math><mtext><table><mglyph><style><img src=CANARY/mxss.png onerror=alert('mxss')>

[safe link](https://example.com/safe) and https://example.org/bare.
"""


async def test_model_output_cannot_run_script_or_load_remote_images(redis: Redis) -> None:
    fake = FakeUpstream()
    async with serve(fake.app) as upstream:
        ai = AISettings(provider="openai", model="gpt-test")
        async with stack(redis, ai=ai, upstream=upstream) as s, chromium() as browser:
            canary = f"{s.customer}/canary"
            fake.scenario = Scenario(reply=XSS_CORPUS.replace("CANARY", canary), chunk_size=7)
            page = await browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: dialogs.append(dialog.message))
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            await page.goto(page_for(s))
            await click_launcher(page)
            frame = await embed_frame(page)
            await lite_ready(frame)
            await send_and_wait_reply(frame, "Show me everything")

            message = frame.locator(".pl-assistant").last
            text = await message.inner_text()
            assert "<script>alert('script')</script>" in text, "raw HTML is shown as text"
            assert "Here is a tricky answer." in text
            dangerous = await message.evaluate(
                """m => [...m.querySelectorAll('*')].filter(e =>
                    /^(SCRIPT|IMG|SVG|IFRAME|OBJECT|EMBED|STYLE|LINK|MATH|FORM|INPUT|VIDEO|AUDIO|SOURCE)$/i.test(e.tagName)
                    || [...e.attributes].some(a => a.name.startsWith('on') || a.name === 'style' || a.name === 'src')
                ).map(e => e.outerHTML)"""
            )
            assert dangerous == []
            links = await message.evaluate(
                "m => [...m.querySelectorAll('a')].map(a => [a.protocol, a.rel, a.target, a.textContent])"
            )
            assert links, "safe links are still links"
            for protocol, rel, target, _ in links:
                assert protocol in ("http:", "https:", "mailto:")
                assert rel == "noopener noreferrer" and target == "_blank"
            hrefs = await message.evaluate("m => [...m.querySelectorAll('a')].map(a => a.href)")
            assert "https://example.com/safe" in hrefs and "https://example.org/bare" in hrefs
            assert f"{canary}/tracker.png" in hrefs, "images become links the visitor may open"
            await frame.evaluate("1")  # let any queued event handlers run before judging
            assert dialogs == []
            assert s.site.canary_hits == []
            assert not [url for url in requested if "/canary" in url]


RENDER = """text => {
  const box = document.createElement("div");
  window.PerchLite.markdown(text, box);
  return {html: box.innerHTML, text: box.textContent};
}"""
LONG = 100_000
SLOW_LINES = [
    pytest.param("# a" + " " * 7000 + "x", "a" + " " * 7000 + "x", id="heading-then-spaces"),
    pytest.param("# a" + " #" * 3500 + " x", "a" + " #" * 3500 + " x", id="heading-with-hashes"),
    pytest.param("a|b\n" + " " * 2 * LONG + "x", "a|bx", id="table-rule-of-spaces"),
    pytest.param("*a" * LONG, "*a" * LONG, id="unmatched-emphasis"),
    pytest.param("a_" * LONG, "a_" * LONG, id="snake-case"),
    pytest.param("a_" * 3_000, "a_" * 3_000, id="snake-case-within-the-line-limit"),
    pytest.param("[" * 2 * LONG, "[" * 2 * LONG, id="open-brackets"),
    pytest.param("![a](" * (LONG // 2), "![a](" * (LONG // 2), id="images-never-closed"),
]


async def _lite_page(s: Stack, browser: Browser) -> Page:
    """A page with only the lite renderer's script, to call its markdown renderer directly."""
    s.site.pages["/lite"] = f'<!doctype html><script src="{s.service}/widget/lite.js"></script>'
    page = await browser.new_page()
    await page.goto(s.customer + "/lite")
    await page.wait_for_function("() => window.PerchLite", timeout=TIMEOUT_MS)
    return page


@pytest.mark.parametrize(("text", "shown"), SLOW_LINES)
async def test_markdown_renders_pathological_lines_without_stalling(redis: Redis, text: str, shown: str) -> None:
    # Streaming re-renders the whole reply on each frame, so a slow pattern would freeze the chat.
    async with stack(redis) as s, chromium() as browser:
        page = await _lite_page(s, browser)
        async with asyncio.timeout(TIMEOUT_MS / 1000):
            rendered = await page.evaluate(RENDER, text)
        assert rendered["text"] == shown


async def test_markdown_tables_keep_escaped_pipes_and_links_never_nest(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await _lite_page(s, browser)
        table = await page.evaluate(RENDER, "| a | b |\n| --- | :-: |\n| x \\| y | z |\n| w | \\|\\| |")
        assert table["html"] == (
            '<div class="pl-table"><table><thead><tr><th>a</th><th>b</th></tr></thead>'
            "<tbody><tr><td>x | y</td><td>z</td></tr><tr><td>w</td><td>||</td></tr></tbody></table></div>"
        )
        linked = await page.evaluate(RENDER, "[![logo](https://example.com/logo.png)](https://example.com/)")
        assert linked["html"] == (
            '<p><a href="https://example.com/" target="_blank" rel="noopener noreferrer">'
            '<span class="pl-img">[Image: logo]</span></a></p>'
        )
        heading = await page.evaluate(RENDER, "## Returns ##\n# C# #")
        assert heading["html"] == '<h4 class="pl-h">Returns</h4><h3 class="pl-h">C#</h3>'


async def test_dark_theme_and_mobile_layout(redis: Redis) -> None:
    branding = BRANDING.model_copy(
        update={"theme": Theme(color_scheme="dark", accent="#f59e0b", radius="soft", density="compact")}
    )
    async with stack(redis, branding=branding) as s, chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(page_for(s))
        await click_launcher(page)
        frame = await embed_frame(page)
        await lite_ready(frame)
        assert await frame.locator(".pl").get_attribute("data-scheme") == "dark"
        await send_and_wait_reply(frame, "What stove do you recommend for winter camping?")
        await screenshot(page, "chat-dark.png")

        phone = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        await phone.goto(page_for(s, path="/phone", head=""))
        await click_launcher(phone)
        mobile_frame = await embed_frame(phone)
        await lite_ready(mobile_frame)
        element = await mobile_frame.frame_element()
        await wait_until(lambda: _fills(element, 390, 844))
        assert await phone.evaluate("document.querySelector('meta[name=viewport]').content") == (
            "width=device-width, initial-scale=1"
        )
        await send_and_wait_reply(mobile_frame, "Hello from my phone")
        await screenshot(phone, "mobile.png")


async def _fills(element: Any, width: int, height: int) -> bool:
    box = await element.bounding_box()
    return box is not None and round(box["width"]) == width and round(box["height"]) == height


async def test_lite_prompts_retries_and_recovers_from_errors(redis: Redis) -> None:
    fake = FakeUpstream()
    async with serve(fake.app) as upstream:
        ai = AISettings(provider="openai", model="gpt-test")
        async with stack(redis, ai=ai, upstream=upstream) as s, chromium() as browser:
            page, frame = await _open_lite(s, browser)

            fake.scenario = Scenario(reply="First answer.")
            await frame.click(".pl-prompt >> text=Return policy")
            assert "First answer." in await replies(frame, 1)
            assert await frame.locator(".pl-user").all_inner_texts() == ["What is your return policy?"]

            fake.scenario = Scenario(reply="Second answer.")
            await frame.click(".pl-actions .pl-retry")
            await frame.wait_for_selector(".pl-assistant[data-id] >> text=Second answer.", timeout=TIMEOUT_MS)
            assert "Second answer." in await replies(frame, 1)
            assert await frame.locator(".pl-assistant").count() == 1, "the retried reply replaces the old one"
            assert s.recorder.chatkit_bodies()[-1]["type"] == "threads.retry_after_item"

            fake.scenario = Scenario(fail_status=500)
            await frame.fill(".pl-input", "Are you there?")
            await frame.press(".pl-input", "Enter")
            error = frame.locator(".pl-error[role=alert]")
            await error.locator(".pl-retry").wait_for(timeout=TIMEOUT_MS)
            assert (await error.inner_text()).strip()
            fake.scenario = Scenario(reply="Back again.")
            await error.locator(".pl-retry").click()
            assert "Back again." in await replies(frame, 2)
            assert await frame.locator(".pl-error").count() == 0


async def _open_lite(s: Stack, browser: Browser) -> tuple[Page, Frame]:
    page = await browser.new_page()
    await page.goto(page_for(s, head=HOST_EVENTS))
    await click_launcher(page)
    frame = await embed_frame(page)
    await lite_ready(frame)
    return page, frame


async def test_a_visitor_over_the_message_rate_is_told_when_to_come_back(redis: Redis) -> None:
    fake = FakeUpstream()
    async with serve(fake.app) as upstream:
        ai = AISettings(provider="openai", model="gpt-test")
        limits = Limits(visitor_messages=RateSetting(count=1, per_seconds=3600, burst=1))
        async with stack(redis, ai=ai, upstream=upstream, limits=limits) as s, chromium() as browser:
            page, frame = await _open_lite(s, browser)
            assert DEFAULT_REPLY in await send_and_wait_reply(frame, "First question")

            await frame.fill(".pl-input", "Second question")
            await frame.press(".pl-input", "Enter")
            error = frame.locator(".pl-error[role=alert]")
            await error.wait_for(timeout=TIMEOUT_MS)
            assert await error.is_visible()
            assert "You're sending messages quickly — try again in 60 min." in await error.inner_text()
            assert await error.locator(".pl-retry").count() == 1, "a rate limit passes: the visitor may try again"
            assert len(fake.requests) == 1, "the refused message never reached the model"
            await page.wait_for_function("() => window.__events.some(e => e.name === 'error')", timeout=TIMEOUT_MS)
            [reported] = await host_events(page, "error")
            assert reported["message"].startswith("You're sending messages quickly") and reported["allow_retry"]


async def test_a_site_out_of_todays_tokens_says_so_and_offers_no_retry(redis: Redis) -> None:
    fake = FakeUpstream()
    async with serve(fake.app) as upstream:
        ai = AISettings(provider="openai", model="gpt-test")
        limits = Limits(tenant_daily_tokens=1000)
        async with stack(redis, ai=ai, upstream=upstream, limits=limits) as s, chromium() as browser:
            page, frame = await _open_lite(s, browser)
            await frame.fill(".pl-input", "Hello?")
            await frame.press(".pl-input", "Enter")
            error = frame.locator(".pl-error[role=alert]")
            await error.wait_for(timeout=TIMEOUT_MS)
            await frame.wait_for_function("() => !document.querySelector('.pl-busy')", timeout=TIMEOUT_MS)
            assert await error.is_visible()
            assert (await error.inner_text()).strip() == (
                "This chat has reached today's usage limit — please try again tomorrow."
            )
            assert await frame.locator(".pl-retry").count() == 0, "nothing changes until midnight UTC"
            assert fake.requests == []
            await page.wait_for_function("() => window.__events.some(e => e.name === 'error')", timeout=TIMEOUT_MS)
            assert [e["allow_retry"] for e in await host_events(page, "error")] == [False]


async def test_lite_stop_ends_a_reply_part_way(redis: Redis) -> None:
    fake = FakeUpstream()
    async with serve(fake.app) as upstream:
        ai = AISettings(provider="openai", model="gpt-test")
        async with stack(redis, ai=ai, upstream=upstream) as s, chromium() as browser:
            page, frame = await _open_lite(s, browser)

            long_story = "word " * 400
            fake.scenario = Scenario(reply=long_story, chunk_size=5, chunk_delay=0.02)
            await frame.fill(".pl-input", "Tell me a long story")
            await frame.press(".pl-input", "Enter")
            await frame.wait_for_selector(".pl-assistant.pl-streaming .pl-md p", timeout=TIMEOUT_MS)
            await frame.click(".pl-icon[aria-label='Stop reply']")
            await frame.wait_for_selector(".pl-notice >> text=Stopped.", timeout=TIMEOUT_MS)
            await frame.wait_for_function("() => !document.querySelector('.pl-busy')", timeout=TIMEOUT_MS)
            partial = await frame.locator(".pl-assistant").last.inner_text()
            assert 0 < len(partial.strip()) < len(long_story.strip()), "the reply stopped part way"


async def test_lite_follows_the_theme_and_reopens_past_conversations(redis: Redis) -> None:
    theme = Theme(accent="#b45309", radius="pill", density="compact", font_family="Georgia, serif")
    async with stack(redis, branding=BRANDING.model_copy(update={"theme": theme})) as s, chromium() as browser:
        page = await browser.new_page()
        await page.goto(page_for(s))
        await click_launcher(page)
        frame = await embed_frame(page)
        await lite_ready(frame)
        await send_and_wait_reply(frame, "First question")

        style = """([selector, name]) => getComputedStyle(document.querySelector(selector)).getPropertyValue(name)"""
        assert await frame.evaluate(style, [".pl-send", "background-color"]) == "rgb(180, 83, 9)"
        assert await frame.evaluate(style, [".pl-user", "border-top-left-radius"]) == "20px"
        assert await frame.evaluate(style, [".pl-log", "row-gap"]) == "6px"
        assert "Georgia" in await frame.evaluate(style, [".pl", "font-family"])
        assert await frame.evaluate(style, [".pl", "background-color"]) == "rgb(255, 255, 255)"

        await frame.click(".pl-icon[aria-label='New conversation']")
        await frame.wait_for_selector(".pl-greeting", timeout=TIMEOUT_MS)
        await send_and_wait_reply(frame, "Second question")
        await frame.click(".pl-icon[aria-label='Past conversations']")
        await frame.locator(".pl-thread", has_text="First question").click()
        await frame.wait_for_selector(".pl-user >> text=First question", timeout=TIMEOUT_MS)
        assert await frame.locator(".pl-user").all_inner_texts() == ["First question"]
        stored = json.loads(await page.evaluate(f"localStorage.getItem('perch:{s.key}')"))
        first_thread = [b for b in s.recorder.chatkit_bodies() if b["type"] == "items.list"][-1]["params"]["thread_id"]
        assert stored["thread"] == first_thread, "the page remembers the conversation the visitor went back to"


async def test_a_rejected_token_is_renewed_and_the_request_retried(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        context = await browser.new_context()
        stale = json.dumps({"token": "stale-token", "expires_at": "2999-01-01T00:00:00+00:00", "thread": None})
        seed = f"localStorage.setItem('perch:{s.key}', {json.dumps(stale)})"
        await context.add_init_script(f"if (location.origin === {json.dumps(s.customer)}) {seed}")
        page = await context.new_page()
        await page.goto(page_for(s))
        await click_launcher(page)
        frame = await embed_frame(page)
        await lite_ready(frame)
        assert "Hello again" in await send_and_wait_reply(frame, "Hello again")

        tokens = s.recorder.chatkit_tokens()
        assert tokens[0] == "stale-token" and tokens[1] != "stale-token"
        assert [json.loads(r["body"]) for r in s.recorder.sessions()] == [{"token": "stale-token"}]
        stored = json.loads(await page.evaluate(f"localStorage.getItem('perch:{s.key}')"))
        assert stored["token"] == tokens[-1]


@pytest.mark.parametrize(
    "clock_behind_seconds",
    [pytest.param(0, id="clock-right"), pytest.param(3600, id="visitor-clock-an-hour-slow")],
)
async def test_tokens_are_renewed_before_they_expire_and_the_visitor_keeps_the_conversation(
    redis: Redis, clock_behind_seconds: int
) -> None:
    # A three-second session: every chat request finds its token near expiry, and one lapses between messages.
    async with stack(redis, session_ttl_seconds=3) as s, chromium() as browser:
        context = await browser.new_context()
        await context.add_init_script(f"Date.now = (now => () => now() - {clock_behind_seconds * 1000})(Date.now)")
        page = await context.new_page()
        await page.goto(page_for(s))
        await click_launcher(page)
        frame = await embed_frame(page)
        await lite_ready(frame)
        assert "Before expiry" in await send_and_wait_reply(frame, "Before expiry")
        first_token = s.recorder.chatkit_tokens()[-1]
        decode = SessionTokens((SECRET,), 3).decode
        claims = decode(first_token)
        assert claims is not None
        await wait_until(lambda: time.time() > claims.expires_at + 0.5, timeout=10)

        assert "After expiry" in await send_and_wait_reply(frame, "After expiry")
        tokens = s.recorder.chatkit_tokens()
        assert tokens[-1] != first_token
        assert [r["status"] for r in s.recorder.chatkit_posts()] == [200] * len(tokens), "renewed before, not after"
        handed_in = [json.loads(r["body"])["token"] for r in s.recorder.sessions()]
        assert len(handed_in) > 2 and None not in handed_in[1:], "each renewal hands in the token before it"
        visitors = {claims.visitor_id for claims in map(decode, tokens) if claims is not None}
        assert len(visitors) == 1, "one visitor throughout"
        assert s.recorder.chatkit_bodies()[-1]["type"] == "threads.add_user_message", "the same conversation"
        assert await frame.locator(".pl-user").all_inner_texts() == ["Before expiry", "After expiry"]
        assert await frame.locator(".pl-error").count() == 0


SESSION_LIMIT = "Too many new chats from your network — try again in 5 min."


@pytest.mark.parametrize(
    ("failure", "shown"),
    [
        pytest.param("network", "The chat could not renew its session.", id="network-error"),
        pytest.param("limit", SESSION_LIMIT, id="session-limit"),
    ],
)
async def test_a_failed_renewal_keeps_the_conversation_and_can_be_retried(
    redis: Redis, failure: str, shown: str
) -> None:
    # A twenty-second session is always near expiry, so each message renews the token first.
    async with stack(redis, session_ttl_seconds=20) as s, chromium() as browser:
        page, frame = await _open_lite(s, browser)
        assert "First" in await send_and_wait_reply(frame, "First")

        async def refuse(route: Route) -> None:
            if failure == "network":
                await route.abort()
                return
            error = {"error": {"code": "rate_limited", "message": SESSION_LIMIT}}
            headers = {"Access-Control-Allow-Origin": s.customer}
            await route.fulfill(status=429, headers=headers, json=error)

        session_url = f"{s.service}/v1/widget/{s.key}/session"
        await page.route(session_url, refuse)
        await frame.fill(".pl-input", "Second")
        await frame.press(".pl-input", "Enter")
        error = frame.locator(".pl-error[role=alert]")
        await error.wait_for(timeout=TIMEOUT_MS)
        assert shown in await error.inner_text()
        assert await frame.locator(".pl-user").all_inner_texts() == ["First", "Second"]
        assert await frame.locator(".perch-status").count() == 0, "the chat stays in place"

        await page.unroute(session_url)
        await error.locator(".pl-retry").click()
        assert "Second" in await replies(frame, 2)
        assert await frame.locator(".pl-error").count() == 0


async def test_shutdown_during_a_renewal_stores_nothing(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await browser.new_page()
        asked, answer = asyncio.Event(), asyncio.Event()

        async def hold(route: Route) -> None:
            asked.set()
            await answer.wait()
            await route.continue_()

        await page.route(f"{s.service}/v1/widget/{s.key}/session", hold)
        await page.goto(page_for(s))
        await wait_until(asked.is_set)
        await page.evaluate("Perch('shutdown')")
        answer.set()
        await page.wait_for_function(
            "() => performance.getEntriesByType('resource').some(e => e.name.endsWith('/session'))",
            timeout=TIMEOUT_MS,
        )
        await page.evaluate("new Promise(resolve => setTimeout(resolve, 200))")
        assert s.recorder.sessions()[0]["status"] == 200
        assert await page.evaluate("localStorage.length") == 0


SPY = """<script>
window.__markers = 0;
addEventListener("message", function (event) { if (event.data === "marker") window.__markers++; });
</script>"""
FORGE = """() => {
  parent.postMessage({v: 1, ns: "perch", type: "close"}, "*");
  parent.postMessage({v: 1, ns: "perch", type: "event", payload: {name: "message", data: {text: "forged"}}}, "*");
  parent.postMessage("marker", "*");
}"""


async def test_forged_messages_are_ignored_and_tokens_stay_out_of_urls(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        other = s.customer.replace("localhost", "127.0.0.1")
        s.site.pages["/other"] = "<!doctype html><title>another site</title>"
        page = await browser.new_page()
        evil_frame = f'<iframe src="{other}/other" title="ad"></iframe>'
        await page.goto(page_for(s, head=HOST_EVENTS + SPY + evil_frame))
        await click_launcher(page)
        frame = await embed_frame(page)
        await lite_ready(frame)

        # Another frame on the page pretends to be the chat: the loader ignores it.
        evil = next(f for f in page.frames if f.url.startswith(other))
        await evil.evaluate(FORGE)
        await page.wait_for_function("() => window.__markers === 1", timeout=TIMEOUT_MS)
        assert (await launcher(page))["aria-expanded"] == "true"
        assert await host_events(page, "message") == []

        # The embed page opened outside its frame takes orders from nobody, even an allowed site.
        async with page.expect_popup() as popup_info:
            await page.evaluate(f"window.__popup = window.open('{s.service}/embed/{s.key}')")
        popup = await popup_info.value
        await popup.wait_for_load_state()
        await popup.evaluate(SPY.removeprefix("<script>").removesuffix("</script>"))
        forged_init = {
            "v": 1,
            "ns": "perch",
            "type": "init",
            "payload": {"token": "forged", "expires_at": "2999-01-01"},
        }
        await page.evaluate(
            "([init, origin]) => { __popup.postMessage(init, origin); __popup.postMessage('marker', origin); }",
            [forged_init, s.service],
        )
        await popup.wait_for_function("() => window.__markers === 1", timeout=TIMEOUT_MS)
        assert "does nothing on its own" in await popup.locator(".perch-status").inner_text()
        assert "forged" not in s.recorder.chatkit_tokens()

        await send_and_wait_reply(frame, "Is my token safe?")
        token = json.loads(await page.evaluate(f"localStorage.getItem('perch:{s.key}')"))["token"]
        assert token in s.recorder.chatkit_tokens()
        urls = [r["path"] + "?" + r["query"] for r in s.recorder.requests] + [f.url for f in page.frames]
        assert not [url for url in urls if token in url]


async def test_only_the_keys_sites_may_frame_the_chat(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        other = s.customer.replace("localhost", "127.0.0.1")
        s.site.pages["/framer"] = f'<!doctype html><iframe src="{s.service}/embed/{s.key}"></iframe>'
        page = await browser.new_page()
        await page.goto(f"{other}/framer")
        await wait_until(lambda: "/embed/" in " ".join(s.recorder.paths()))
        frame = page.frames[1]
        assert await frame.locator("#perch-root").count() == 0, "the browser refuses to show the chat"
        assert s.recorder.paths("/t/") == []


async def test_demo_page_chats_with_the_demo_tenant(redis: Redis) -> None:
    settings = Settings(secret_keys=(SECRET,), chatkit_js_url=UNREACHABLE_CHATKIT)
    recorder = Recorder(create_app(settings, redis=redis))
    async with serve(recorder) as service, chromium() as browser:
        await TenantRepository(redis).set_origins(DEMO_KEY, [service])
        page = await browser.new_page()
        await page.goto(f"{service}/demo")
        assert "Fernhill" in await page.title()
        assert (await launcher(page))["aria-label"] == "Chat with Perch demo"
        await page.click("#ask")
        await expanded(page, "true")
        frame = await embed_frame(page)
        await replies(frame, 1)
        assert await frame.locator(".pl-user").all_inner_texts() == [
            "Which grind size should I use for a French press?"
        ]
        created = recorder.chatkit_bodies()[-1]
        assert created["metadata"]["perch_context"]["store"] == "Fernhill Coffee"
