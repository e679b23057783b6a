"""A small OpenAI-compatible Chat Completions server, so tests fake the LLM at the HTTP boundary.

Serve ``FakeUpstream().app`` with ``tests.live.serve`` and point a real ``openai.AsyncOpenAI`` at
``f"{url}/v1"``. Change ``upstream.scenario`` to make the next requests slow, fail, break or hang.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_REPLY = "Hello from the fake upstream."
MODELS = ("gpt-fake", "gpt-fake-mini")


class UpstreamDropped(Exception):
    """Raised inside a stream so uvicorn closes the connection without finishing the response."""


@dataclass
class Scenario:
    """How the fake answers the next requests; tests assign fields freely."""

    reply: str = DEFAULT_REPLY
    chunk_size: int = 5
    # Exact pieces to stream; when set it replaces `reply` split by `chunk_size`.
    chunks: list[str] | None = None
    # Streaming: after the headers, before the first chunk. Non-streaming: before the response.
    first_token_delay: float = 0.0
    chunk_delay: float = 0.0
    fail_status: int | None = None
    # How many requests fail with `fail_status` before the fake succeeds; None fails every request.
    fail_times: int | None = None
    # Sent as retry-after and retry-after-ms on failures; the openai client waits this long to retry.
    retry_after: float | None = None
    # Break the stream after this many content chunks (the role chunk is not counted), without [DONE].
    drop_after_chunks: int | None = None
    # Send nothing at all, not even headers, until the client gives up and disconnects.
    hang: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def pieces(self) -> list[str]:
        """The content chunks this scenario streams, in order."""
        if self.chunks is not None:
            return list(self.chunks)
        if self.chunk_size < 1:
            raise ValueError("Scenario.chunk_size must be at least 1 character.")
        return [self.reply[i : i + self.chunk_size] for i in range(0, len(self.reply), self.chunk_size)]


@dataclass
class FakeUpstream:
    """An OpenAI-compatible server whose behaviour a test scripts and whose requests it inspects."""

    scenario: Scenario = field(default_factory=Scenario)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    failures_sent: int = 0
    app: Starlette = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def reset(self) -> None:
        """Forget recorded requests and go back to the default scenario."""
        self.scenario = Scenario()
        self.requests.clear()
        self.headers.clear()
        self.failures_sent = 0

    def bearer(self, index: int = -1) -> str | None:
        """The API key a recorded request carried in its Authorization header."""
        scheme, _, token = self.headers[index].get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" else None

    async def _chat_completions(self, request: Request) -> Response:
        # Snapshot the scenario so a test changing it mid-stream cannot tear a response in half.
        scenario = replace(self.scenario)
        body = await _json_body(request)
        self.requests.append(body if body is not None else {})
        self.headers.append(dict(request.headers))
        invalid = _validate(body)
        if invalid is not None:
            return invalid
        assert body is not None
        if self._should_fail(scenario):
            return _failure(scenario)
        if scenario.hang:
            await _wait_for_disconnect(request)
            return Response(status_code=499)
        completion = _Completion.start(len(self.requests), body, scenario)
        if body.get("stream") is True:
            return _stream(completion, scenario)
        await asyncio.sleep(scenario.first_token_delay)
        return JSONResponse(completion.whole(), headers=completion.response_headers())

    def _should_fail(self, scenario: Scenario) -> bool:
        if scenario.fail_status is None:
            return False
        if scenario.fail_times is not None and self.failures_sent >= scenario.fail_times:
            return False
        self.failures_sent += 1
        return True

    async def _models(self, request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "perch-tests"} for name in MODELS]
        return JSONResponse({"object": "list", "data": data})


@dataclass(frozen=True)
class _Completion:
    id: str
    request_id: str
    created: int
    model: str
    content: str
    pieces: list[str]
    include_usage: bool
    usage: dict[str, Any]

    @classmethod
    def start(cls, number: int, body: dict[str, Any], scenario: Scenario) -> _Completion:
        pieces = scenario.pieces()
        content = "".join(pieces)
        options = body.get("stream_options")
        return cls(
            id=f"chatcmpl-fake{number}",
            request_id=f"req_fake{number}",
            created=int(time.time()),
            model=str(body["model"]),
            content=content,
            pieces=pieces,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            usage=_usage(body["messages"], content, scenario),
        )

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": self.request_id}

    def whole(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None, "annotations": []}
        return {
            **self._envelope("chat.completion"),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": self.usage,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk = {
            **self._envelope("chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        # The real API adds a null usage to every chunk once the client asks for the usage chunk.
        return {**chunk, "usage": None} if self.include_usage else chunk

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._envelope("chat.completion.chunk"), "choices": [], "usage": self.usage}

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
        }


def _stream(completion: _Completion, scenario: Scenario) -> StreamingResponse:
    headers = {**completion.response_headers(), "cache-control": "no-cache"}
    return StreamingResponse(_events(completion, scenario), media_type="text/event-stream", headers=headers)


async def _events(completion: _Completion, scenario: Scenario) -> AsyncIterator[str]:
    await asyncio.sleep(scenario.first_token_delay)
    yield _sse(completion.chunk({"role": "assistant", "content": "", "refusal": None}))
    for sent, piece in enumerate(completion.pieces):
        if sent == scenario.drop_after_chunks:
            raise UpstreamDropped(f"fake upstream dropped the stream after {sent} chunks")
        if sent:
            await asyncio.sleep(scenario.chunk_delay)
        yield _sse(completion.chunk({"content": piece}))
    if scenario.drop_after_chunks is not None:
        raise UpstreamDropped("fake upstream dropped the stream before finishing it")
    yield _sse(completion.chunk({}, finish_reason="stop"))
    if completion.include_usage:
        yield _sse(completion.usage_chunk())
    yield "data: [DONE]\n\n"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _usage(messages: list[Any], content: str, scenario: Scenario) -> dict[str, Any]:
    # Whitespace-separated words stand in for tokens: deterministic, and easy to predict in a test.
    prompt = scenario.prompt_tokens
    if prompt is None:
        prompt = sum(len(_message_text(message).split()) for message in messages)
    completion = scenario.completion_tokens
    if completion is None:
        completion = len(content.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


async def _json_body(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _validate(body: dict[str, Any] | None) -> Response | None:
    if body is None:
        return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _error(400, "you must provide a model parameter", "invalid_request_error")
    messages = body.get("messages")
    if not isinstance(messages, list):
        message = "Missing required parameter: 'messages'."
        return _error(400, message, "invalid_request_error", "messages", "missing_required_parameter")
    if not messages:
        return _error(400, "Invalid 'messages': empty array.", "invalid_request_error", "messages", "empty_array")
    return None


def _failure(scenario: Scenario) -> Response:
    status = scenario.fail_status or 500
    headers: dict[str, str] = {}
    if scenario.retry_after is not None:
        headers = {"retry-after": f"{scenario.retry_after:g}", "retry-after-ms": f"{scenario.retry_after * 1000:g}"}
    if status == 429:
        message = "Rate limit reached for requests. Please try again later."
        return _error(status, message, "requests", code="rate_limit_exceeded", headers=headers)
    if status >= 500:
        message = "The server had an error while processing your request."
        return _error(status, message, "server_error", headers=headers)
    message = f"The fake upstream was told to fail with {status}."
    return _error(status, message, "invalid_request_error", headers=headers)


def _error(
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


async def _wait_for_disconnect(request: Request) -> None:
    # The body is already read, so the next receive() blocks until the client goes away.
    while (await request.receive())["type"] != "http.disconnect":
        pass
