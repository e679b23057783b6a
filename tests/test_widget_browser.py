"""The widget end to end in headless Chromium: a customer page on one origin, Perch on another."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from service.app import create_app
from service.settings import Settings
from service.tenants import AISettings, Branding, Prompt, Tenant, TenantRepository, Theme
from tests.browser import (
    HOST_EVENTS,
    TIMEOUT_MS,
    CustomerSite,
    Recorder,
    chromium,
    click_launcher,
    customer_page,
    embed_frame,
    expanded,
    host_events,
    launcher,
    lite_ready,
    screenshot,
    wait_until,
)
from tests.fake_upstream import FakeUpstream, Scenario
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
    upstream: str | None = None,
) -> AsyncIterator[Stack]:
    """Serve a customer site on localhost:P2 and Perch on 127.0.0.1:P1, with a key for the customer's origin."""
    site = CustomerSite()
    async with serve(site.app()) as site_url:
        customer = site_url.replace("127.0.0.1", "localhost")
        repo = TenantRepository(redis)
        await repo.save(Tenant(id="acme", name="Acme", branding=branding, ai=ai or AISettings()))
        origins = [customer] if allow_customer else ["https://shop.example.com"]
        key = await repo.create_key("acme", origins, key_id="dk_acme_test")
        chatkit_url = UNREACHABLE_CHATKIT
        if chatkit_js is not None:
            site.files["/chatkit.js"] = (chatkit_js, "application/javascript")
            chatkit_url = f"{customer}/chatkit.js"
        settings = Settings(
            secret_keys=(SECRET,),
            chatkit_js_url=chatkit_url,
            openai_api_key="test" if upstream else None,
            openai_base_url=f"{upstream}/v1" if upstream else None,
        )
        recorder = Recorder(create_app(settings, redis=redis))
        async with serve(recorder) as service:
            yield Stack(service, customer, site, recorder, key.id)


def page_for(s: Stack, path: str = "/", head: str = "", **data: str) -> str:
    s.site.pages[path] = customer_page(s.service, s.key, head=head, **data)
    return s.customer + path


async def send_and_wait_reply(frame: Any, text: str) -> str:
    """Type a message in the lite composer and wait for the streamed reply to finish."""
    before = await frame.locator(".pl-assistant[data-id]").count()
    await frame.fill(".pl-input", text)
    await frame.press(".pl-input", "Enter")
    await frame.wait_for_function(
        "n => document.querySelectorAll('.pl-assistant[data-id]').length > n"
        " && !document.querySelector('.pl-streaming') && !document.querySelector('.pl-busy')",
        arg=before,
        timeout=TIMEOUT_MS,
    )
    reply: str = await frame.locator(".pl-assistant[data-id]").last.inner_text()
    return reply


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


async def test_escape_closes_and_focus_moves_in_and_back(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await browser.new_page()
        await page.goto(page_for(s))
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
        await page.keyboard.press("Escape")
        await expanded(page, "false")


async def test_disallowed_origin_shows_no_chat_and_sends_no_chat_request(redis: Redis) -> None:
    async with stack(redis, allow_customer=False) as s, chromium() as browser:
        page = await browser.new_page()
        async with page.expect_console_message(lambda m: m.text.startswith("Perch:"), timeout=TIMEOUT_MS):
            await page.goto(page_for(s))
        assert await page.evaluate("document.querySelectorAll('perch-widget').length") == 0
        assert await page.evaluate("localStorage.length") == 0
        assert s.recorder.paths("/t/") == []
        assert s.recorder.paths("/embed/") == []
        assert [p for p in s.recorder.paths() if p.endswith("/session")] == []


async def test_consent_mode_stores_and_asks_nothing_before_the_visitor_opens(redis: Redis) -> None:
    async with stack(redis) as s, chromium() as browser:
        page = await browser.new_page()
        await page.goto(page_for(s, head=HOST_EVENTS, consent="required"))
        await page.wait_for_function("() => window.__events.some(e => e.name === 'ready')", timeout=TIMEOUT_MS)
        await launcher(page)
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
    this.textContent = "stand-in ChatKit";
    const body = JSON.stringify({type: "threads.list", params: {limit: 5, order: "desc"}});
    options.api.fetch(options.api.url, {method: "POST", headers: {"Content-Type": "application/json"}, body})
      .then(r => r.json().then(data => { window.__chatkitFetch = {status: r.status, data}; }));
    this.dispatchEvent(new CustomEvent("chatkit.ready"));
  }
  sendUserMessage(message) { window.__chatkitSent = message; }
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
        await frame.wait_for_function("() => window.__chatkitFetch !== undefined", timeout=TIMEOUT_MS)

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

        result = await frame.evaluate("window.__chatkitFetch")
        assert result["status"] == 200 and result["data"]["data"] == []
        request = [r for r in s.recorder.requests if r["path"] == "/t/acme/chatkit"][-1]
        assert request["headers"]["authorization"].startswith("Bearer ")
        assert request["headers"]["origin"] == s.service, "framed mode: the embed page calls from Perch's origin"
        assert json.loads(request["body"])["metadata"] == {"perch_context": {"plan": "pro"}}
        assert await frame.locator(".pl").count() == 0, "ChatKit loaded, so no lite renderer"

        await page.evaluate("Perch('sendMessage', 'Bonjour')")
        await frame.wait_for_function("() => window.__chatkitSent !== undefined", timeout=TIMEOUT_MS)
        assert await frame.evaluate("window.__chatkitSent") == {"text": "Bonjour"}


async def test_lite_renderer_takes_over_when_chatkit_cannot_load(redis: Redis) -> None:
    branding = BRANDING.model_copy(update={"renderer": "auto"})
    async with stack(redis, branding=branding) as s, chromium() as browser:
        page = await browser.new_page()
        await page.goto(page_for(s))
        await click_launcher(page)
        frame = await embed_frame(page)
        await lite_ready(frame)
        reply = await send_and_wait_reply(frame, "Still there?")
        assert "Still there?" in reply


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
