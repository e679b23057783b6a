"""Run an ASGI app on a real socket inside the running event loop, for tests and benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import uvicorn
from starlette.types import ASGIApp

STARTUP_TIMEOUT = 10.0
# Uvicorn waits this long for in-flight responses (a hung stream, say) before cancelling them.
GRACEFUL_SHUTDOWN = 1
# Beyond the graceful period: uvicorn polls its exit flag every 0.1 s and sleeps 0.1 s while closing.
EXIT_TIMEOUT = GRACEFUL_SHUTDOWN + 4.0


@asynccontextmanager
async def serve(app: ASGIApp, *, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free port and yield its base URL, e.g. ``http://127.0.0.1:54321``."""
    server = uvicorn.Server(_config(app, host))
    task = asyncio.create_task(_run(server), name=f"uvicorn {host}")
    try:
        await _wait_started(server, task)
        yield _base_url(server, host)
    finally:
        await _stop(server, task)


def _config(app: ASGIApp, host: str) -> uvicorn.Config:
    # log_config=None keeps uvicorn from replacing the host process's logging setup (pytest's capture,
    # a benchmark's handlers); ws="none" skips importing websockets, whose deprecations would fail tests.
    return uvicorn.Config(
        app,
        host=host,
        port=0,
        lifespan="on",
        log_level="warning",
        log_config=None,
        access_log=False,
        ws="none",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )


async def _run(server: uvicorn.Server) -> None:
    # Uvicorn reports a failed start-up with sys.exit; a SystemExit escaping a task would stop the
    # whole event loop (and pytest with it), so turn it into an ordinary error for the caller.
    try:
        await server.serve()
    except SystemExit as exc:
        raise RuntimeError(f"uvicorn failed to start (exit code {exc.code})") from exc


async def _wait_started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started serving")
            await asyncio.sleep(0.005)


def _base_url(server: uvicorn.Server, host: str) -> str:
    # Port 0 lets the kernel pick a free port atomically; read back which one it chose.
    sockets = server.servers[0].sockets
    port: int = sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    done, _ = await asyncio.wait({task}, timeout=EXIT_TIMEOUT)
    if not done:
        server.force_exit = True
        done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        return
    task.result()
