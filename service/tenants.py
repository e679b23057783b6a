"""Tenants and their domain keys: the models, and the repository that keeps them in Redis."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from redis.asyncio import Redis

from service import keys
from service.errors import BadRequest, NotFound
from service.ids import new_id
from service.origins import OriginError, canonical_pattern
from service.ratelimit import Rate

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")]
HexColor = Annotated[str, StringConstraints(pattern=r"^#[0-9a-fA-F]{6}$")]
ShortText = Annotated[str, StringConstraints(max_length=200, strip_whitespace=True)]
Provider = Literal["demo", "openai", "gemini", "compatible"]
KEY_ID = re.compile(r"^dk_[A-Za-z0-9_]{1,64}$")
MAX_ORIGINS_PER_KEY = 50


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Theme(Model):
    color_scheme: Literal["light", "dark"] = "light"
    accent: HexColor = "#2563eb"
    radius: Literal["pill", "round", "soft", "sharp"] = "round"
    density: Literal["compact", "normal", "spacious"] = "normal"
    font_family: Annotated[str, StringConstraints(max_length=120, pattern=r"^[\w \-,'\"]*$")] = ""

    def accent_ink(self) -> str:
        """Return the text colour to put on the accent: near-black or white, whichever contrasts more (WCAG)."""
        # Black and white contrast equally with a colour of relative luminance ~0.179.
        return "#111111" if _luminance(self.accent) > 0.179 else "#ffffff"


def _luminance(hex_color: str) -> float:
    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    red, green, blue = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * linear(red) + 0.7152 * linear(green) + 0.0722 * linear(blue)


class Prompt(Model):
    label: Annotated[str, StringConstraints(min_length=1, max_length=60, strip_whitespace=True)]
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True)]


class Branding(Model):
    title: ShortText = "Assistant"
    theme: Theme = Theme()
    greeting: Annotated[str, StringConstraints(max_length=500, strip_whitespace=True)] = "Hi! How can I help?"
    prompts: Annotated[list[Prompt], Field(max_length=8)] = []
    placeholder: ShortText = "Ask anything…"
    disclaimer: Annotated[str, StringConstraints(max_length=500, strip_whitespace=True)] = ""
    locale: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "en"
    renderer: Literal["auto", "chatkit", "lite"] = "auto"


class AISettings(Model):
    provider: Provider = "demo"
    model: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[\w.:/\-]+$")] = "demo"
    instructions: Annotated[str, StringConstraints(max_length=8000)] = "You are a helpful, concise assistant."
    history_window: Annotated[int, Field(ge=1, le=100)] = 20
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    max_output_tokens: Annotated[int, Field(ge=16, le=8192)] = 1024


class RateSetting(Model):
    """``count`` per ``per_seconds`` on average, with up to ``burst`` back to back."""

    count: Annotated[int, Field(ge=1, le=1_000_000)]
    per_seconds: Annotated[int, Field(ge=1, le=86_400)]
    burst: Annotated[int, Field(ge=1, le=10_000)]

    def rate(self) -> Rate:
        return Rate(self.count, self.per_seconds, self.burst)


class Limits(Model):
    """What one site's visitors may spend. The defaults suit a busy shop; docs/architecture.md says why."""

    # A session lasts an hour and survives reloads, so a person needs about one an hour; an office
    # behind one NAT address still fits, a script minting visitors to dodge per-visitor limits does not.
    sessions_per_ip: RateSetting = RateSetting(count=30, per_seconds=3600, burst=10)
    # People write a message every few seconds at most; a burst covers quick follow-ups and prompts.
    visitor_messages: RateSetting = RateSetting(count=6, per_seconds=60, burst=4)
    # Opening the chat lists threads and items: a few reads per open, far below this.
    visitor_requests: RateSetting = RateSetting(count=120, per_seconds=60, burst=60)
    # The site as a whole: ten turns a second sustained caps what a distributed abuser can spend.
    tenant_messages: RateSetting = RateSetting(count=600, per_seconds=60, burst=100)
    # One reply at a time per tab; two covers a second tab.
    concurrent_streams: Annotated[int, Field(ge=1, le=20)] = 2
    # Tokens per UTC day, None for no cap: ~2M tokens is a few dollars on small models.
    tenant_daily_tokens: Annotated[int, Field(ge=1_000, le=10_000_000_000)] | None = 2_000_000
    # About forty turns with history; a single visitor can't eat the whole site's budget.
    visitor_daily_tokens: Annotated[int, Field(ge=1_000, le=100_000_000)] | None = 100_000


class Tenant(Model):
    id: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    branding: Branding = Branding()
    ai: AISettings = AISettings()
    limits: Limits = Limits()
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 30
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def retention_seconds(self) -> int:
        return self.retention_days * 86400


class DomainKey(Model):
    id: Annotated[str, StringConstraints(pattern=KEY_ID.pattern)]
    tenant_id: Slug
    origins: Annotated[list[str], Field(max_length=MAX_ORIGINS_PER_KEY)] = []
    label: ShortText = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    revoked_at: datetime | None = None

    @field_validator("origins")
    @classmethod
    def _canonical_origins(cls, origins: list[str]) -> list[str]:
        return sorted({canonical_pattern(origin) for origin in origins})

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def checked_origin(value: str) -> str:
    """Canonicalise an allowed-origin entry, turning a bad one into a 400 that says why."""
    try:
        return canonical_pattern(value)
    except OriginError as exc:
        raise BadRequest(str(exc)) from None


class TenantRepository:
    """Load and save tenants and domain keys."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def get(self, tenant_id: str) -> Tenant:
        """Load a tenant by id."""
        raw = await self.redis.get(keys.tenant(tenant_id))
        if raw is None:
            raise NotFound(f"No tenant {tenant_id!r}.")
        return Tenant.model_validate_json(raw)

    async def save(self, tenant: Tenant) -> None:
        """Create or replace a tenant."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.tenant(tenant.id), tenant.model_dump_json())
            pipe.sadd(keys.tenant_index(), tenant.id)
            await pipe.execute()

    async def all(self) -> list[Tenant]:
        """Return every tenant, ordered by id."""
        ids = sorted(map(str, await self.redis.smembers(keys.tenant_index())))
        raws = await self.redis.mget([keys.tenant(i) for i in ids]) if ids else []
        return [Tenant.model_validate_json(raw) for raw in raws if raw is not None]

    async def get_key(self, key_id: str) -> DomainKey:
        """Load a domain key by id."""
        raw = await self.redis.get(keys.domain_key(key_id)) if KEY_ID.match(key_id) else None
        if raw is None:
            raise NotFound("This domain key does not exist. Check the data-key in your snippet.")
        return DomainKey.model_validate_json(raw)

    async def save_key(self, key: DomainKey) -> None:
        """Create or replace a domain key."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.domain_key(key.id), key.model_dump_json())
            pipe.sadd(keys.tenant_domain_keys(key.tenant_id), key.id)
            await pipe.execute()

    async def create_key(
        self, tenant_id: str, origins: list[str], label: str = "", key_id: str | None = None
    ) -> DomainKey:
        """Issue a new domain key for a tenant, allowing the given origins."""
        await self.get(tenant_id)
        key = DomainKey(
            id=key_id or new_id("dk"), tenant_id=tenant_id, origins=[checked_origin(o) for o in origins], label=label
        )
        await self.save_key(key)
        return key

    async def keys_of(self, tenant_id: str) -> list[DomainKey]:
        """Return a tenant's domain keys, revoked ones included, oldest first."""
        ids = sorted(map(str, await self.redis.smembers(keys.tenant_domain_keys(tenant_id))))
        raws = await self.redis.mget([keys.domain_key(i) for i in ids]) if ids else []
        found = [DomainKey.model_validate_json(raw) for raw in raws if raw is not None]
        return sorted(found, key=lambda key: key.created_at)

    async def allowed_origins(self, tenant_id: str) -> list[str]:
        """Return the origin patterns of all the tenant's active keys."""
        return sorted({o for key in await self.keys_of(tenant_id) if key.active for o in key.origins})

    async def revoke_key(self, key_id: str) -> DomainKey:
        """Revoke a domain key; pages using it stop getting sessions at once."""
        key = await self.get_key(key_id)
        revoked = key.model_copy(update={"revoked_at": key.revoked_at or datetime.now(UTC)})
        await self.save_key(revoked)
        return revoked

    async def set_origins(self, key_id: str, origins: list[str]) -> DomainKey:
        """Replace a key's allowed origins."""
        key = await self.get_key(key_id)
        if len(origins) > MAX_ORIGINS_PER_KEY:
            raise BadRequest(f"A domain key allows at most {MAX_ORIGINS_PER_KEY} origins; add another key for more.")
        updated = key.model_copy(update={"origins": sorted({checked_origin(o) for o in origins})})
        await self.save_key(updated)
        return updated
