"""`POST /t/{tenant}/chatkit`: the ChatKit protocol for a visitor holding a session token."""

from __future__ import annotations

import math

from chatkit.types import is_streaming_req
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from service.chat import ChatServer, page_context, parse_request
from service.context import RequestContext
from service.errors import Forbidden, Unauthorized
from service.origins import canonical_origin, origin_matches
from service.services import Services, own_origin
from service.sse import EventStream, error_events
from service.tokens import SessionToken
from service.turns import TurnRefused


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
    turn = services.guards.turn(tenant, context)
    server = ChatServer(
        services.store, tenant, services.llm, turn, page=page_context(chat_request), tracing=services.llm.tracing
    )
    if not is_streaming_req(chat_request):
        await services.guards.check_request(tenant, context)
        return Response(await server.answer(chat_request, context), media_type="application/json")
    await server.check(chat_request, context)
    heartbeat, streams = services.settings.heartbeat_seconds, services.open_streams
    try:
        await turn.admit()
    except TurnRefused as refused:
        # ChatKit shows an error event's message in the conversation; a 429 would be a generic failure.
        headers = {} if refused.retry_after is None else {"Retry-After": str(math.ceil(refused.retry_after))}
        events = error_events(refused.message, allow_retry=refused.allow_retry)
        return EventStream(events, heartbeat_seconds=heartbeat, streams=streams, headers=headers)
    events = server.stream(chat_request, context)
    return EventStream(events, heartbeat_seconds=heartbeat, streams=streams, on_close=turn.close)


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
