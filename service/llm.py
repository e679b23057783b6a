"""Model clients: one OpenAI-compatible client per provider, shared by every tenant.

The `demo` provider is the same mechanism with a built-in transport in place of the network,
so a fresh checkout streams replies through exactly the code path real providers use.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx2
from agents import OpenAIChatCompletionsModel, set_tracing_export_api_key
from openai import AsyncOpenAI

from service.settings import Settings
from service.tenants import AISettings, Provider

DEMO_NOTICE = "*Demo mode: this reply comes from Perch's built-in demo responder, not an AI model.*"


class ProviderNotConfigured(Exception):
    """The tenant picked a provider the operator has not set up."""

    def __init__(self, provider: str) -> None:
        super().__init__(f"The {provider} provider is not configured on this server.")
        self.provider = provider


class LLM:
    """The model clients, built from settings and closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        # Connect and first-token bounds are the HTTP client's; the whole reply's is the caller's to check.
        self.total_timeout_seconds = settings.llm_total_timeout_seconds
        timeout = httpx2.Timeout(
            connect=settings.llm_connect_timeout_seconds,
            read=settings.llm_first_token_timeout_seconds,
            write=settings.llm_connect_timeout_seconds,
            pool=settings.llm_connect_timeout_seconds,
        )
        self._clients: dict[Provider, AsyncOpenAI] = {
            "demo": AsyncOpenAI(
                api_key="demo",
                base_url="http://demo.invalid/v1",
                http_client=httpx2.AsyncClient(transport=DemoTransport()),
                max_retries=0,
            )
        }
        configured: list[tuple[Provider, str | None, str | None]] = [
            ("openai", settings.openai_api_key, settings.openai_base_url),
            ("gemini", settings.gemini_api_key, settings.gemini_base_url),
            ("compatible", settings.compatible_api_key or "none", settings.compatible_base_url),
        ]
        self._tracing = bool(settings.openai_api_key) and settings.openai_base_url is None
        if self._tracing:
            set_tracing_export_api_key(settings.openai_api_key or "")
        for provider, api_key, base_url in configured:
            if api_key and (base_url or provider == "openai"):
                self._clients[provider] = AsyncOpenAI(
                    api_key=api_key, base_url=base_url, timeout=timeout, max_retries=settings.llm_max_retries
                )

    @property
    def tracing(self) -> bool:
        """Trace runs to OpenAI only when we talk to OpenAI itself with our own key."""
        return self._tracing

    def model(self, ai: AISettings) -> OpenAIChatCompletionsModel:
        """Return the Agents SDK model for a tenant's AI settings."""
        client = self._clients.get(ai.provider)
        if client is None:
            raise ProviderNotConfigured(ai.provider)
        return OpenAIChatCompletionsModel(model=ai.model, openai_client=client)

    async def aclose(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients.values()))


class DemoTransport(httpx2.AsyncBaseTransport):
    """Answer chat completions in-process with a labelled, streamed demo reply."""

    def __init__(self, delay_seconds: float = 0.02) -> None:
        self.delay_seconds = delay_seconds

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(await request.aread())
        reply = demo_reply(body.get("messages", []))
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, headers=headers, stream=_ByteStream(self._chunks(reply, body.get("model", "demo"))))

    async def _chunks(self, reply: str, model: str) -> AsyncIterator[bytes]:
        words = reply.split(" ")
        base = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        for index, word in enumerate(words):
            await asyncio.sleep(self.delay_seconds)
            text = word if index == 0 else " " + word
            delta = {"role": "assistant", "content": text} if index == 0 else {"content": text}
            yield _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = {"prompt_tokens": 0, "completion_tokens": len(words), "total_tokens": len(words)}
        yield _sse({**base, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"


def demo_reply(messages: list[dict[str, object]]) -> str:
    """Compose the demo reply to the last user message."""
    said = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    said = " ".join(said.split())[:200] or "hello"
    return (
        f"{DEMO_NOTICE}\n\nYou said: “{said}”. Perch is working end to end: your message was stored, "
        "this answer streamed back token by token, and the conversation will be here when you return. "
        "Set the tenant's provider to **openai** or **gemini** for real answers."
    )


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _sse(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class _ByteStream(httpx2.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk
