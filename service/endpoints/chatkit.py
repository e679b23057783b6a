"""`POST /t/{tenant}/chatkit`: the ChatKit protocol for a visitor holding a session token."""

from __future__ import annotations

from chatkit.types import is_streaming_req
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Scope

from service.chat import ChatServer, parse_request
from service.context import RequestContext
from service.errors import Forbidden, Unauthorized
from service.origins import canonical_origin, origin_matches
from service.services import Services, own_origin
from service.tokens import SessionToken

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


async def tenant_allows_origin(scope: Scope, origin: str) -> bool:
    """Say whether an origin may call a tenant's endpoint: Perch's own page, or any active key's site."""
    services = Services.of_scope(scope)
    if origin == own_origin(Request(scope), services.settings):
        return True
    return origin_matches(origin, await services.tenants.allowed_origins(scope["path_params"]["tenant"]))


async def chatkit(request: Request) -> Response:
    """Process one ChatKit request: JSON for reads and edits, an SSE stream for turns."""
    services = Services.of(request)
    claims = await _authorize(request, services)
    tenant = await services.tenants.get(claims.tenant_id)
    chat_request = parse_request(await request.body())
    context = RequestContext(tenant.id, claims.visitor_id, claims.origin, tenant.retention_seconds)
    server = ChatServer(services.store, tenant, services.llm, tracing=services.llm.tracing)
    if is_streaming_req(chat_request):
        await server.check(chat_request, context)
        return StreamingResponse(
            server.stream(chat_request, context), media_type="text/event-stream", headers=SSE_HEADERS
        )
    return Response(await server.answer(chat_request, context), media_type="application/json")


async def _authorize(request: Request, services: Services) -> SessionToken:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("A session token is required: send it as 'Authorization: Bearer <token>'.")
    claims = services.tokens.verify(token.strip())
    if claims.tenant_id != request.path_params["tenant"]:
        raise Forbidden("This session token belongs to another assistant.")
    origin = request.headers.get("origin")
    if origin is not None and canonical_origin(origin) not in (claims.origin, own_origin(request, services.settings)):
        raise Forbidden("This session token was issued to another website.")
    key = await services.tenants.get_key(claims.key_id)
    if not key.active or key.tenant_id != claims.tenant_id or not origin_matches(claims.origin, key.origins):
        raise Forbidden("This website's chat access has been withdrawn. Reload the page or contact the site owner.")
    return claims
