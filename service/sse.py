"""Server-sent event responses that keep proxies patient and clean up however they end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager

import anyio
from chatkit.types import ErrorEvent
from starlette.responses import StreamingResponse
from starlette.types import Send

# An SSE comment: clients ignore it, proxies see traffic and keep the connection open.
HEARTBEAT = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class OpenStreams:
    """Count the streams in flight, so shutdown can wait for them to save their work."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def track(self) -> Iterator[None]:
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self, timeout_seconds: float) -> bool:
        """Wait until no stream is open, at most ``timeout_seconds``; say whether they all ended."""
        with anyio.move_on_after(timeout_seconds):
            await self._idle.wait()
        return self.count == 0


class EventStream(StreamingResponse):
    """A `text/event-stream` response with a heartbeat while the source is silent and a cleanup at the end.

    ``on_close`` runs once the stream is over: finished, failed, or cancelled by a disconnect or
    shutdown; it must protect its own awaits from that cancellation.
    """

    media_type = "text/event-stream"

    body_iterator: AsyncIterable[bytes]

    def __init__(
        self,
        events: AsyncIterable[bytes],
        *,
        heartbeat_seconds: float,
        streams: OpenStreams,
        on_close: Callable[[], Awaitable[None]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(events, headers={**SSE_HEADERS, **(headers or {})})
        self.heartbeat_seconds = heartbeat_seconds
        self.streams = streams
        self.on_close = on_close

    async def stream_response(self, send: Send) -> None:
        with self.streams.track():
            try:
                await self._stream(send)
            finally:
                if self.on_close is not None:
                    await self.on_close()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        sending = anyio.Lock()
        last_sent = anyio.current_time()

        async def heartbeat() -> None:
            while True:
                await anyio.sleep(max(0.0, last_sent + self.heartbeat_seconds - anyio.current_time()))
                if anyio.current_time() - last_sent >= self.heartbeat_seconds:
                    await body(HEARTBEAT)

        async def body(chunk: bytes) -> None:
            nonlocal last_sent
            async with sending:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                last_sent = anyio.current_time()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(heartbeat)
            async for chunk in self.body_iterator:
                await body(chunk)
            tasks.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def error_events(message: str, *, allow_retry: bool) -> AsyncIterable[bytes]:
    """Return a stream of one ChatKit `error` event, for a turn refused before it starts."""

    async def events() -> AsyncIterable[bytes]:
        event = ErrorEvent(code="custom", message=message, allow_retry=allow_retry)
        yield b"data: " + event.model_dump_json().encode() + b"\n\n"

    return events()
