"""A redis-server of the test's own, to stop, hang and bring back while the service runs."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

STARTUP_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A redis-server on a free port that keeps its data on disk across restarts (append-only file)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server).")
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        async with asyncio.timeout(STARTUP_SECONDS):
            while True:
                client = Redis.from_url(self.url, socket_timeout=0.2)
                try:
                    if await client.ping():
                        return
                except (OSError, RedisError):
                    pass
                finally:
                    await client.aclose()
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Stop the server the hard way, as a crash or a failover would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def hang(self) -> None:
        """Freeze the server: the kernel still accepts connections, but nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def wake(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@asynccontextmanager
async def redis_process(directory: Path) -> AsyncIterator[RedisProcess]:
    server = RedisProcess(directory)
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.wake()
        server.stop()
