from __future__ import annotations

import pytest

from service.errors import Unauthorized
from service.tokens import SessionTokens

OLD, NEW = "o" * 32, "n" * 32
CLAIMS = {"tenant_id": "acme", "key_id": "dk_x", "origin": "https://shop.example.com", "visitor_id": "v_1"}


def test_issued_token_verifies_with_its_claims() -> None:
    tokens = SessionTokens([NEW], ttl_seconds=60, clock=lambda: 1000.0)
    token, claims = tokens.issue(**CLAIMS)
    assert tokens.verify(token) == claims
    assert claims.expires_at == 1060


def test_rotation_accepts_tokens_signed_with_an_older_key() -> None:
    before = SessionTokens([OLD], ttl_seconds=60, clock=lambda: 1000.0)
    after = SessionTokens([OLD, NEW], ttl_seconds=60, clock=lambda: 1000.0)
    retired = SessionTokens([NEW], ttl_seconds=60, clock=lambda: 1000.0)
    token, _ = before.issue(**CLAIMS)
    assert after.verify(token).visitor_id == "v_1"
    with pytest.raises(Unauthorized):
        retired.verify(token)


def test_expired_token_is_refused_but_still_decodes_for_renewal() -> None:
    token, _ = SessionTokens([NEW], ttl_seconds=60, clock=lambda: 1000.0).issue(**CLAIMS)
    later = SessionTokens([NEW], ttl_seconds=60, clock=lambda: 1061.0)
    with pytest.raises(Unauthorized, match="expired"):
        later.verify(token)
    decoded = later.decode(token)
    assert decoded is not None and decoded.visitor_id == "v_1"


@pytest.mark.parametrize(
    "token",
    [pytest.param("", id="empty"), pytest.param("x" * 5000, id="huge"), pytest.param("abc.def", id="garbage")],
)
def test_junk_is_not_a_token(token: str) -> None:
    assert SessionTokens([NEW], ttl_seconds=60).decode(token) is None
