from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.fake_upstream import DEFAULT_REPLY, FakeUpstream, Scenario
from tests.live import serve

API_KEY = "sk-tenant-test"
MODEL = "gpt-fake"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the shop"}]


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def url(upstream: FakeUpstream) -> AsyncIterator[str]:
    async with serve(upstream.app) as base_url:
        yield base_url


@pytest.fixture
async def client(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=5.0) as client:
        yield client


async def stream_chunks(client: openai.AsyncOpenAI, include_usage: bool = False) -> list[ChatCompletionChunk]:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": include_usage}
    )
    return [chunk async for chunk in stream]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)


async def test_stream_reassembles_the_reply_and_records_the_request(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    chunks = await stream_chunks(client)

    assert text_of(chunks) == DEFAULT_REPLY
    assert len(chunks) > 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)
    assert upstream.requests == [
        {"model": MODEL, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": False}}
    ]
    assert upstream.bearer() == API_KEY


async def test_stream_sends_the_exact_chunks_asked_for(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.scenario.chunks = ["Bon", "jour", "!"]

    chunks = await stream_chunks(client)

    assert [chunk.choices[0].delta.content for chunk in chunks[1:-1]] == ["Bon", "jour", "!"]


async def test_usage_chunk_comes_last_when_asked_for(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.scenario.completion_tokens = 42

    chunks = await stream_chunks(client, include_usage=True)

    assert text_of(chunks) == DEFAULT_REPLY
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 42)
    assert chunks[-1].usage.total_tokens == 47


async def test_non_streaming_answer_carries_reply_and_usage(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.scenario.reply = "Two words"

    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert completion.choices[0].message.content == "Two words"
    assert completion.model == MODEL
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 2)


async def test_server_error_without_retries_raises(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(fail_status=500, fail_times=1)

    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_server_error_is_retried_then_succeeds(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(fail_status=500, fail_times=1, retry_after=0.01)

    chunks = await stream_chunks(client.with_options(max_retries=1))

    assert text_of(chunks) == DEFAULT_REPLY
    assert len(upstream.requests) == 2


async def test_rate_limit_raises_with_retry_after(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(fail_status=429, retry_after=7)

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


async def test_dropped_stream_raises_after_the_chunks_sent(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(chunks=["one ", "two ", "three"], drop_after_chunks=2)
    received: list[ChatCompletionChunk] = []

    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk)

    assert text_of(received) == "one two "


@pytest.mark.parametrize("stream", [pytest.param(False, id="whole"), pytest.param(True, id="stream")])
async def test_slow_first_token_times_out(client: openai.AsyncOpenAI, upstream: FakeUpstream, stream: bool) -> None:
    upstream.scenario.first_token_delay = 0.25

    with pytest.raises(openai.APITimeoutError):
        if stream:
            await stream_chunks(client.with_options(timeout=0.05))
        else:
            await client.with_options(timeout=0.05).chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_hang_times_out_before_any_response(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.scenario.hang = True

    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.05).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"messages": [{"role": "user", "content": "hi"}]}, id="no-model"),
        pytest.param({"model": MODEL}, id="no-messages"),
        pytest.param({"model": MODEL, "messages": []}, id="empty-messages"),
    ],
)
async def test_incomplete_request_is_refused(url: str, body: dict[str, object]) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_models_lists_the_fake_model(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()

    assert MODEL in [model.id for model in models.data]


async def test_reset_forgets_requests_and_scenario(client: openai.AsyncOpenAI, upstream: FakeUpstream) -> None:
    upstream.scenario.reply = "changed"
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)

    upstream.reset()

    assert upstream.requests == [] and upstream.headers == []
    assert upstream.scenario == Scenario()


async def test_serve_stops_listening_on_exit(upstream: FakeUpstream) -> None:
    async with serve(upstream.app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/v1/models")).status_code == 200

    async with httpx.AsyncClient(base_url=url) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/v1/models")
