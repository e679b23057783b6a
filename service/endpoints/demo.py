"""`GET /demo`: a page on Perch's own origin that chats with the demo tenant (development only)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse

from service.errors import NotFound
from service.services import Services

DEMO_PAGE = Path(__file__).resolve().parents[2] / "widget" / "demo.html"


async def demo(request: Request) -> HTMLResponse:
    """Serve the demo page."""
    if Services.of(request).settings.production:
        raise NotFound("The demo page is not served in production.")
    return HTMLResponse(DEMO_PAGE.read_text(encoding="utf-8"))
