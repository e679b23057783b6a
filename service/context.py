"""The per-request scope every store read and write is bound to."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RETENTION_SECONDS = 30 * 86400


@dataclass(frozen=True)
class RequestContext:
    """Who is asking (the ChatKit `TContext`), and how long their data is kept after the last write."""

    tenant_id: str
    visitor_id: str
    origin: str
    retention_seconds: int = DEFAULT_RETENTION_SECONDS
