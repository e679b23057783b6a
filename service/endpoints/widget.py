"""The public widget API: a key's branding, and sessions for visitors on allowed sites."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from service.endpoints.cache import revalidated
from service.errors import BadRequest, Forbidden
from service.ids import new_id
from service.origins import canonical_origin, origin_matches
from service.services import Services
from service.tenants import DomainKey, Tenant
from service.tokens import MAX_TOKEN_LENGTH


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Annotated[str, StringConstraints(max_length=MAX_TOKEN_LENGTH)] | None = None


async def key_allows_origin(scope: Scope, origin: str) -> bool:
    """Say whether the path's domain key is active and lists this origin (for the origin gate)."""
    key = await _active_key(scope)
    return origin_matches(origin, key.origins)


async def _active_key(scope: Scope) -> DomainKey:
    # The gate and the handler both need the key: load it once per request.
    state = scope.setdefault("state", {})
    if "domain_key" not in state:
        key = await Services.of_scope(scope).tenants.get_key(scope["path_params"]["key"])
        if not key.active:
            raise Forbidden("This domain key has been revoked. Ask the site owner for a new snippet.")
        state["domain_key"] = key
    found: DomainKey = state["domain_key"]
    return found


def public_config(tenant: Tenant, key: DomainKey, services: Services) -> dict[str, object]:
    """Return what a page needs to draw the widget: branding and where to talk."""
    branding = tenant.branding.model_dump(mode="json")
    # Worked out here once, so the launcher and the lite renderer put the same readable text on the accent.
    branding["theme"]["accent_ink"] = tenant.branding.theme.accent_ink()
    return {
        "tenant": tenant.id,
        "key": key.id,
        "branding": branding,
        "chatkit": {
            "api_url": f"/t/{tenant.id}/chatkit",
            "domain_key": services.settings.chatkit_domain_key,
            "script_url": services.settings.chatkit_js_url,
        },
        "embed_url": f"/embed/{key.id}",
    }


async def config(request: Request) -> Response:
    """Return a key's public branding, with an ETag so unchanged config costs one round trip."""
    services = Services.of(request)
    key = await _active_key(request.scope)
    tenant = await services.tenants.get(key.tenant_id)
    body = json.dumps(public_config(tenant, key, services), separators=(",", ":"), sort_keys=True).encode()
    # no-cache: always revalidate, so branding changes show on the next page load.
    return revalidated(request, body, media_type="application/json", cache_control="no-cache")


async def session(request: Request) -> JSONResponse:
    """Start or renew a visitor's session; a previous token on the same site keeps its visitor id."""
    services = Services.of(request)
    key = await _active_key(request.scope)
    if "origin" not in request.headers:
        raise Forbidden("Sessions can only be started from a web page on an allowed site.")
    origin = canonical_origin(request.headers["origin"])
    tenant = await services.tenants.get(key.tenant_id)
    previous = await _session_request(request)
    await services.guards.check_session(tenant, client_network(request))
    visitor_id = _returning_visitor(services, previous.token, tenant, origin) or new_id("v")
    token, claims = services.tokens.issue(tenant_id=tenant.id, key_id=key.id, origin=origin, visitor_id=visitor_id)
    expires_at = datetime.fromtimestamp(claims.expires_at, UTC).isoformat()
    # expires_in lets a browser whose clock is off still renew on time: it counts from when the reply arrives.
    expires_in = claims.expires_at - claims.issued_at
    body = {"token": token, "expires_at": expires_at, "expires_in": expires_in, "visitor_id": visitor_id}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def client_network(connection: HTTPConnection) -> str:
    """Return the caller's address as limits count it: an IPv4 address, or an IPv6 /64 (one subscriber's)."""
    host = connection.client.host if connection.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(getattr(address, "ipv4_mapped", None) or address)


async def _session_request(request: Request) -> SessionRequest:
    raw = await request.body()
    if not raw.strip():
        return SessionRequest()
    try:
        return SessionRequest.model_validate_json(raw)
    except ValidationError:
        raise BadRequest('The session body must be JSON like {"token": "<previous token>"} or empty.') from None


def _returning_visitor(services: Services, token: str | None, tenant: Tenant, origin: str) -> str | None:
    claims = services.tokens.decode(token) if token else None
    if claims is None or claims.tenant_id != tenant.id or claims.origin != origin:
        return None
    if claims.expires_at + tenant.retention_seconds < services.tokens.clock():
        return None
    return claims.visitor_id
