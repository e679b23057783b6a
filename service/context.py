"""The per-request scope every store read and write is bound to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    """Who is asking: the ChatKit `TContext`."""

    tenant_id: str
    visitor_id: str
    origin: str
