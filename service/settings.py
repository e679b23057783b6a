"""Service configuration: one frozen `Settings`, built once from the environment."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from service.origins import OriginError, canonical_origin

DEFAULT_CHATKIT_JS_URL = "https://cdn.platform.openai.com/deployments/chatkit/chatkit.js"
DEFAULT_GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta/openai/"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A setting is missing or malformed; the message says how to fix it."""


@dataclass(frozen=True)
class Settings:
    env: Literal["development", "production"] = "development"
    port: int = 8000
    redis_url: str | None = None
    secret_keys: tuple[str, ...] = field(default_factory=lambda: (secrets.token_urlsafe(32),))
    secret_keys_generated: bool = False
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    gemini_api_key: str | None = None
    gemini_base_url: str = DEFAULT_GEMINI_BASE_URL
    compatible_base_url: str | None = None
    compatible_api_key: str | None = None
    chatkit_js_url: str = DEFAULT_CHATKIT_JS_URL
    chatkit_domain_key: str = "domain_pk_localhost_dev"
    public_url: str | None = None
    demo_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    session_ttl_seconds: int = 3600
    max_body_bytes: int = 256 * 1024
    redis_timeout_seconds: float = 0.5
    redis_pool_size: int = 64
    llm_connect_timeout_seconds: float = 5.0
    llm_first_token_timeout_seconds: float = 30.0
    llm_total_timeout_seconds: float = 120.0
    llm_max_retries: int = 2
    shutdown_grace_seconds: int = 10
    heartbeat_seconds: float = 15.0
    admin_token: str | None = None

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from environment variables, failing with a sentence that says how to fix them."""
        env = _choice(environ, "PERCH_ENV", ("development", "production"), "development")
        keys = _csv(environ.get("PERCH_SECRET_KEYS", ""))
        if not keys and env == "production":
            raise SettingsError(
                "PERCH_SECRET_KEYS is required when PERCH_ENV=production: set it to one or more "
                "comma-separated random strings of at least 32 characters (newest last)."
            )
        if any(len(key) < 32 for key in keys):
            raise SettingsError("Each key in PERCH_SECRET_KEYS must be at least 32 characters long.")
        return cls(
            env=env,
            port=_integer(environ, "PORT", 8000, 1, 65535),
            redis_url=_redis_url(environ.get("REDIS_URL") or None, env),
            secret_keys=keys or (secrets.token_urlsafe(32),),
            secret_keys_generated=not keys,
            openai_api_key=environ.get("OPENAI_API_KEY") or None,
            openai_base_url=_http_url(environ, "OPENAI_BASE_URL"),
            gemini_api_key=environ.get("GEMINI_API_KEY") or None,
            gemini_base_url=_http_url(environ, "GEMINI_BASE_URL") or DEFAULT_GEMINI_BASE_URL,
            compatible_base_url=_http_url(environ, "LLM_BASE_URL"),
            compatible_api_key=environ.get("LLM_API_KEY") or None,
            chatkit_js_url=_http_url(environ, "CHATKIT_JS_URL") or DEFAULT_CHATKIT_JS_URL,
            chatkit_domain_key=environ.get("CHATKIT_DOMAIN_KEY") or "domain_pk_localhost_dev",
            public_url=_public_url(environ.get("PERCH_PUBLIC_URL") or None),
            demo_origins=tuple(_origin(o, "PERCH_DEMO_ORIGINS") for o in _csv(environ.get("PERCH_DEMO_ORIGINS", ""))),
            trusted_proxies=_networks(environ.get("PERCH_TRUSTED_PROXIES", "")),
            session_ttl_seconds=_integer(environ, "PERCH_SESSION_TTL_SECONDS", 3600, 60, 86400),
            max_body_bytes=_integer(environ, "PERCH_MAX_BODY_BYTES", 256 * 1024, 1024, 16 * 1024 * 1024),
            redis_timeout_seconds=_number(environ, "PERCH_REDIS_TIMEOUT_SECONDS", 0.5, 0.05, 30.0),
            redis_pool_size=_integer(environ, "PERCH_REDIS_POOL_SIZE", 64, 2, 10_000),
            llm_connect_timeout_seconds=_number(environ, "PERCH_LLM_CONNECT_TIMEOUT_SECONDS", 5.0, 0.1, 60.0),
            llm_first_token_timeout_seconds=_number(environ, "PERCH_LLM_FIRST_TOKEN_TIMEOUT_SECONDS", 30.0, 0.1, 600),
            llm_total_timeout_seconds=_number(environ, "PERCH_LLM_TOTAL_TIMEOUT_SECONDS", 120.0, 1.0, 3600),
            llm_max_retries=_integer(environ, "PERCH_LLM_MAX_RETRIES", 2, 0, 5),
            shutdown_grace_seconds=_integer(environ, "PERCH_SHUTDOWN_GRACE_SECONDS", 10, 1, 600),
            heartbeat_seconds=_number(environ, "PERCH_SSE_HEARTBEAT_SECONDS", 15.0, 1.0, 300.0),
            admin_token=environ.get("PERCH_ADMIN_TOKEN") or None,
        )


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _choice(
    environ: Mapping[str, str], name: str, options: tuple[str, ...], default: str
) -> Literal["development", "production"]:
    value = environ.get(name) or default
    if value not in options:
        raise SettingsError(f"{name} must be one of {', '.join(options)}; got {value!r}.")
    return value  # type: ignore[return-value]


def _integer(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number between {low} and {high}; got {raw!r}.") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}; got {value}.")
    return value


def _number(environ: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds between {low} and {high}; got {raw!r}.") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}; got {value}.")
    return value


def _redis_url(value: str | None, env: str) -> str | None:
    if value is None:
        if env == "production":
            raise SettingsError("REDIS_URL is required when PERCH_ENV=production, e.g. redis://redis:6379/0.")
        return None
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"REDIS_URL must start with redis://, rediss:// or unix://; got {value!r}.")
    return value


def _http_url(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name) or None
    if value is not None and not value.startswith(("http://", "https://")):
        raise SettingsError(f"{name} must be an http:// or https:// URL; got {value!r}.")
    return value


def _origin(value: str, name: str) -> str:
    try:
        return canonical_origin(value)
    except OriginError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _public_url(value: str | None) -> str | None:
    return None if value is None else _origin(value.rstrip("/"), "PERCH_PUBLIC_URL")


def _networks(value: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in _csv(value))
    except ValueError as exc:
        raise SettingsError(
            f"PERCH_TRUSTED_PROXIES must be comma-separated IP addresses or CIDR ranges: {exc}."
        ) from None
