"""The widget's own files: `/widget.js` for customer pages, `/embed/{key}` for the chat iframe, and its assets.

The embed page is same-origin with the API, so it needs no CORS; its CSP `frame-ancestors` lets
only the key's sites frame it, and its scripts come only from Perch and ChatKit's script origin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from service.endpoints.cache import etag_of, revalidated
from service.endpoints.widget import public_config
from service.errors import Forbidden, NotFound
from service.services import Services
from service.tenants import DomainKey

WIDGET_DIR = Path(__file__).resolve().parents[2] / "widget"
ASSETS = {
    "embed.js": "application/javascript; charset=utf-8",
    "lite.js": "application/javascript; charset=utf-8",
    "embed.css": "text/css; charset=utf-8",
}
# Short enough that a fixed loader reaches every page within minutes, long enough to spare the origin.
ASSET_CACHE = "public, max-age=300"


@dataclass(frozen=True)
class Asset:
    body: bytes
    etag: str
    mtime_ns: int


_assets: dict[str, Asset] = {}


def load_asset(name: str) -> Asset:
    """Read a widget file once per change on disk, with its ETag."""
    path = WIDGET_DIR / name
    mtime_ns = path.stat().st_mtime_ns
    cached = _assets.get(name)
    if cached is None or cached.mtime_ns != mtime_ns:
        body = path.read_bytes()
        cached = Asset(body, etag_of(body), mtime_ns)
        _assets[name] = cached
    return cached


def asset_response(request: Request, name: str, media_type: str) -> Response:
    asset = load_asset(name)
    return revalidated(request, asset.body, media_type=media_type, cache_control=ASSET_CACHE, etag=asset.etag)


async def widget_js(request: Request) -> Response:
    """Serve the loader that customer pages include with one script tag."""
    return asset_response(request, "loader.js", "application/javascript; charset=utf-8")


async def widget_asset(request: Request) -> Response:
    """Serve one of the embed page's scripts or styles; any other name is 404."""
    name = request.path_params["name"]
    if name not in ASSETS:
        raise NotFound("No such widget file.")
    return asset_response(request, name, ASSETS[name])


async def embed_page(request: Request) -> Response:
    """Serve the chat page the loader frames: only the key's sites may frame it."""
    services = Services.of(request)
    key = await services.tenants.get_key(request.path_params["key"])
    if not key.active:
        raise Forbidden("This domain key has been revoked. Ask the site owner for a new snippet.")
    tenant = await services.tenants.get(key.tenant_id)
    config = {**public_config(tenant, key, services), "origins": key.origins}
    headers = {
        "Content-Security-Policy": content_security_policy(key, services.settings.chatkit_js_url),
        "Cache-Control": "no-cache",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }
    return Response(
        page(config, tenant.branding.title, tenant.branding.locale), media_type="text/html", headers=headers
    )


def content_security_policy(key: DomainKey, chatkit_js_url: str) -> str:
    """Return the embed page's CSP: Perch and ChatKit only, framed only by the key's origins."""
    parts = urlsplit(chatkit_js_url)
    chatkit = f"{parts.scheme}://{parts.netloc}"
    ancestors = " ".join(key.origins) or "'none'"
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' {chatkit}",
            "style-src 'self' 'unsafe-inline'",
            f"connect-src 'self' {chatkit}",
            # ChatKit draws its UI in a frame of its own, served from its script's origin.
            f"frame-src {chatkit}",
            "img-src 'self' data:",
            "font-src 'self' data:",
            f"frame-ancestors {ancestors}",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


def page(config: dict[str, object], title: str, locale: str) -> str:
    """Return the embed page's HTML, with the public config as an inert JSON block."""
    # Inside <script> only "</" could end the block early; "\u003c" keeps JSON valid and the HTML inert.
    data = json.dumps(config, separators=(",", ":"), sort_keys=True).replace("<", "\\u003c")
    return (
        "<!doctype html>\n"
        f'<html lang="{escape(locale)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        '<link rel="stylesheet" href="/widget/embed.css">'
        f'<script type="application/json" id="perch-config">{data}</script>'
        '<script src="/widget/embed.js" defer></script>'
        '</head><body><div id="perch-root"></div></body></html>\n'
    )
