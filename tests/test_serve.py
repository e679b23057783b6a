"""What `make run` does on a fresh machine: `python -m service serve` with nothing configured."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness import chatkit_headers, reply_text, sse_events, user_input

ROOT = Path(__file__).resolve().parents[1]
# Bounds on waiting for the process, not timing goals: a slow machine still passes well inside them.
STARTUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0
# uvicorn re-raises the SIGTERM it handled once shutdown is done, so the parent sees "killed by
# SIGTERM" (exit status 143 in a shell), which Docker and systemd treat as a clean stop.
CLEAN_EXITS = (0, -signal.SIGTERM)


@dataclass(frozen=True)
class Server:
    process: asyncio.subprocess.Process
    url: str
    log: Path

    @property
    def origin(self) -> str:
        """The demo page's origin, which the demo key allows."""
        return self.url

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def bare_environment(**extra: str) -> dict[str, str]:
    """A fresh machine's environment: no Redis, no signing keys, no model API keys."""
    return {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serve(tmp_path: Path) -> AsyncIterator[Server]:
    """Start `python -m service serve` on a free port and yield it once /healthz answers."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "service", "serve"),
            cwd=ROOT,
            env=bare_environment(PORT=str(port)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        await wait_healthy(server)
        yield server
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def wait_healthy(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=2.0) as client:
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                while server.process.returncode is None:
                    with suppress(httpx.TransportError):
                        if (await client.get("/healthz")).status_code == 200:
                            return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
    raise AssertionError(f"the service never answered /healthz; it printed:\n{server.output()}")


async def stop(server: Server) -> int:
    server.process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(EXIT_TIMEOUT):
            return await server.process.wait()
    except TimeoutError:
        raise AssertionError(f"the service ignored SIGTERM; it printed:\n{server.output()}") from None


async def test_make_run_serves_the_demo_chat_with_nothing_configured(tmp_path: Path) -> None:
    async with serve(tmp_path) as server, httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
        announced = server.output()
        assert "in-process fakeredis" in announced
        assert "PERCH_SECRET_KEYS is not set" in announced
        assert "dk_demo" in announced

        page = await client.get("/demo")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<script async src="/widget.js" data-key="dk_demo"></script>' in page.text

        session = await client.post("/v1/widget/dk_demo/session", headers={"Origin": server.origin})
        assert session.status_code == 200, session.text
        assert session.headers["access-control-allow-origin"] == server.origin
        token = session.json()["token"]

        body = {"type": "threads.create", "params": {"input": user_input("Hello from a fresh checkout")}}
        reply = await client.post("/t/demo/chatkit", headers=chatkit_headers(token, server.origin), json=body)
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = sse_events(reply.text)
        assert events[0]["type"] == "thread.created"
        text = reply_text(events)
        assert text.startswith("*Demo mode")
        assert "You said: “Hello from a fresh checkout”" in text
        assert not [e for e in events if e["type"] == "error"]

        code = await stop(server)
    assert code in CLEAN_EXITS, server.output()
    assert "Application shutdown complete" in server.output()


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        pytest.param({"REDIS_URL": "redis://127.0.0.1:6379/15"}, "PERCH_SECRET_KEYS is required", id="no-secret-keys"),
        pytest.param({"PERCH_SECRET_KEYS": "k" * 32}, "REDIS_URL is required", id="no-redis-url"),
    ],
)
async def test_production_refuses_to_start_half_configured(
    tmp_path: Path, missing: dict[str, str], message: str
) -> None:
    port = free_port()
    env = bare_environment(PERCH_ENV="production", PORT=str(port), **missing)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "serve"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
    with socket.socket() as sock:  # nothing was left listening
        assert sock.connect_ex(("127.0.0.1", port)) != 0
