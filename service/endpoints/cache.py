"""Responses that browsers can revalidate with an ETag, so unchanged content costs one round trip."""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def revalidated(
    request: Request, body: bytes, *, media_type: str, cache_control: str, etag: str | None = None
) -> Response:
    """Answer 304 when the client already has this body (its `If-None-Match` names the ETag), else the body."""
    tag = etag or etag_of(body)
    headers = {"ETag": tag, "Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"}
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)
