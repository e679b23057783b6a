"""Errors with a status code and a public detail, mapped to JSON by one handler.

ServiceError
├── BadRequest          400
├── Unauthorized        401
├── Forbidden           403
├── NotFound            404
├── PayloadTooLarge     413
├── TooManyRequests     429  (Retry-After)
└── ServiceUnavailable  503  (Retry-After)
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def response(self) -> JSONResponse:
        body = {"error": {"code": self.code, "message": self.detail}}
        return JSONResponse(body, status_code=self.status_code, headers=self.headers())


class BadRequest(ServiceError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class TooManyRequests(ServiceError):
    status_code = 429
    code = "rate_limited"


class ServiceUnavailable(ServiceError):
    status_code = 503
    code = "unavailable"


async def handle_service_error(request: Request, exc: Exception) -> Response:
    """Render a ServiceError as JSON."""
    assert isinstance(exc, ServiceError)
    return exc.response()
