"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.services import Services


async def healthz(request: Request) -> JSONResponse:
    """Say the process is alive."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Say whether Redis answers, so traffic only reaches replicas that can serve it."""
    try:
        await Services.of(request).redis.ping()
    except (RedisError, OSError, TimeoutError):
        return JSONResponse({"status": "unavailable", "redis": "down"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ok", "redis": "up"})
