"""Session tokens: signed, short-lived, bound to tenant, domain key, origin and visitor."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from itsdangerous import BadSignature, URLSafeSerializer
from pydantic import BaseModel, ConfigDict, ValidationError

from service.errors import Unauthorized

SESSION_SALT = "perch.session.v1"
MAX_TOKEN_LENGTH = 2048


class SessionToken(BaseModel):
    """What a session token vouches for."""

    model_config = ConfigDict(frozen=True)

    tenant_id: str
    key_id: str
    origin: str
    visitor_id: str
    issued_at: int
    expires_at: int


class SessionTokens:
    """Issue and verify session tokens; sign with the newest secret key, accept any listed one."""

    def __init__(self, secret_keys: Sequence[str], ttl_seconds: int, clock: Callable[[], float] = time.time) -> None:
        # itsdangerous signs with the last key and verifies against all, which is what rotation needs.
        self._serializer = URLSafeSerializer(list(secret_keys), salt=SESSION_SALT)
        self.ttl_seconds = ttl_seconds
        self.clock = clock

    def issue(self, *, tenant_id: str, key_id: str, origin: str, visitor_id: str) -> tuple[str, SessionToken]:
        """Sign a new token for a visitor on an origin."""
        now = int(self.clock())
        claims = SessionToken(
            tenant_id=tenant_id,
            key_id=key_id,
            origin=origin,
            visitor_id=visitor_id,
            issued_at=now,
            expires_at=now + self.ttl_seconds,
        )
        return self._serializer.dumps(claims.model_dump()), claims

    def verify(self, token: str) -> SessionToken:
        """Return the claims of a valid, unexpired token."""
        claims = self.decode(token)
        if claims is None:
            raise Unauthorized("This chat session is not valid. Reload the page to start a new one.")
        if claims.expires_at <= self.clock():
            raise Unauthorized("This chat session has expired. Reload the page to continue.")
        return claims

    def decode(self, token: str) -> SessionToken | None:
        """Return the claims of a genuine token, expired or not; None when it was not signed by us."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        try:
            return SessionToken.model_validate(self._serializer.loads(token))
        except (BadSignature, ValidationError):
            return None
