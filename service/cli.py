"""`python -m service …`: run the server, and manage tenants and domain keys from a shell."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import uvicorn
from pydantic import BaseModel, TypeAdapter, ValidationError
from redis.exceptions import RedisError

from service.app import create_app
from service.budget import USAGE_RETENTION, DailyUsage, TokenBudget
from service.errors import NotFound, ServiceError
from service.origins import OriginError, canonical_pattern
from service.redis_client import open_redis
from service.settings import Settings, SettingsError
from service.tenants import DomainKey, Limits, RateSetting, Slug, Tenant, TenantRepository

Command = Callable[[TenantRepository, argparse.Namespace], Awaitable[Any]]
SLUG: TypeAdapter[str] = TypeAdapter(Slug)
# How each of a tenant's limits is written on the command line; a test keeps this in step with `Limits`.
LIMIT_KINDS: dict[str, Literal["rate", "count", "tokens"]] = {
    "sessions_per_ip": "rate",
    "visitor_messages": "rate",
    "visitor_requests": "rate",
    "tenant_messages": "rate",
    "concurrent_streams": "count",
    "tenant_daily_tokens": "tokens",
    "visitor_daily_tokens": "tokens",
}
METAVARS = {"rate": "N/SECONDS/BURST", "count": "N", "tokens": "N|none"}
LIMIT_HELP = {
    "rate": "N per SECONDS, with bursts of up to BURST",
    "count": "replies streaming at once per visitor",
    "tokens": "tokens per UTC day, or none for no cap",
}
RATE = re.compile(r"^(\d+)/(\d+)/(\d+)$")
RATE_PARTS = {"count": "N", "per_seconds": "SECONDS", "burst": "BURST"}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m service", description="Perch: embeddable AI chat for any site.")
    root.add_argument("--json", action="store_true", help="print machine-readable JSON")
    # `--json` is accepted after the command too (`keys list acme --json`); SUPPRESS keeps a
    # subcommand that didn't get it from resetting the value the root parser read.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print machine-readable JSON")
    groups = root.add_subparsers(dest="group", required=True)
    serve = groups.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")

    tenants = groups.add_parser("tenants", help="manage tenants").add_subparsers(dest="action", required=True)
    create = tenants.add_parser("create", help="create a tenant", parents=[common])
    create.add_argument("id", help="slug: lowercase letters, digits and dashes")
    create.add_argument("--name", required=True)
    create.add_argument("--provider", choices=["demo", "openai", "gemini", "compatible"], default="demo")
    create.add_argument("--model", default=None)
    tenants.add_parser("list", help="list tenants", parents=[common])
    tenants.add_parser("show", help="show one tenant", parents=[common]).add_argument("id")
    limits = tenants.add_parser(
        "limits",
        help="show or change a tenant's limits",
        description="Show a tenant's limits; with options, change only those. Token caps are per UTC day.",
        parents=[common],
    )
    limits.add_argument("tenant")
    for field, kind in LIMIT_KINDS.items():
        limits.add_argument(f"--{field.replace('_', '-')}", dest=field, metavar=METAVARS[kind], help=LIMIT_HELP[kind])
    usage = tenants.add_parser(
        "usage",
        help="show a tenant's daily usage",
        description="Show a tenant's messages, input and output tokens per UTC day, oldest first, today last.",
        parents=[common],
    )
    usage.add_argument("tenant")
    usage.add_argument("--days", default="7", help=f"how many days back, today included: 1 to {USAGE_RETENTION.days}")

    keys = groups.add_parser("keys", help="manage domain keys").add_subparsers(dest="action", required=True)
    key_create = keys.add_parser("create", help="issue a domain key", parents=[common])
    key_create.add_argument("tenant")
    key_create.add_argument("--origin", action="append", default=[], help="allowed origin (repeatable)")
    key_create.add_argument("--label", default="")
    keys.add_parser("list", help="list a tenant's keys", parents=[common]).add_argument("tenant")
    keys.add_parser("revoke", help="revoke a key", parents=[common]).add_argument("key")
    for name in ("add-origin", "remove-origin"):
        action = keys.add_parser(name, help=f"{name.split('-')[0]} an allowed origin", parents=[common])
        action.add_argument("key")
        action.add_argument("origin")
    return root


async def tenants_create(repo: TenantRepository, args: argparse.Namespace) -> Tenant:
    try:
        SLUG.validate_python(args.id)
    except ValidationError:
        raise ServiceError(
            f"{args.id!r} is not a valid tenant id: use 1 to 40 lowercase letters, digits and dashes, "
            "starting and ending with a letter or digit, like acme-shop."
        ) from None
    ai = {"provider": args.provider, "model": args.model or _default_model(args.provider)}
    tenant = Tenant.model_validate({"id": args.id, "name": args.name, "ai": ai})
    if await _exists(repo, args.id):
        raise ServiceError(f"Tenant {args.id!r} already exists: `tenants show {args.id}` prints it.")
    await repo.save(tenant)
    return tenant


async def tenants_limits(repo: TenantRepository, args: argparse.Namespace) -> Limits:
    tenant = await repo.get(args.tenant)
    changes = {field: getattr(args, field) for field in LIMIT_KINDS if getattr(args, field) is not None}
    if not changes:
        return tenant.limits
    values = {field: _limit_value(field, raw) for field, raw in changes.items()}
    try:
        limits = Limits.model_validate({**tenant.limits.model_dump(), **values})
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        problems = ", ".join(_problem(e) for e in exc.errors() if e["loc"][0] == field)
        raise ServiceError(f"{_option(field)} {changes[field]}: {problems} ({_expected(field)}).") from None
    # The repository saves whole records, so an edit to this tenant saved since the get above is lost;
    # limits are changed rarely and by hand, so that race is accepted rather than locked against.
    await repo.save(tenant.model_copy(update={"limits": limits}))
    return limits


async def tenants_usage(repo: TenantRepository, args: argparse.Namespace) -> list[DailyUsage]:
    most = USAGE_RETENTION.days
    if not re.fullmatch(r"\d+", args.days) or not 1 <= int(args.days) <= most:
        raise ServiceError(f"--days {args.days}: expected a whole number from 1 to {most}; usage is kept {most} days.")
    await repo.get(args.tenant)
    return await TokenBudget(repo.redis).usage(args.tenant, int(args.days))


async def keys_add_origin(repo: TenantRepository, args: argparse.Namespace) -> DomainKey:
    key = await _key(repo, args.key)
    return await repo.set_origins(key.id, [*key.origins, args.origin])


async def keys_remove_origin(repo: TenantRepository, args: argparse.Namespace) -> DomainKey:
    key = await _key(repo, args.key)
    # Stored origins are canonical, so compare the canonical form: `https://Shop.example.com/` names
    # the same origin as `https://shop.example.com`.
    try:
        origin = canonical_pattern(args.origin)
    except OriginError as exc:
        raise ServiceError(str(exc)) from None
    if origin not in key.origins:
        raise ServiceError(f"{origin} is not one of {key.id}'s origins: {', '.join(key.origins) or 'none'}.")
    return await repo.set_origins(key.id, [o for o in key.origins if o != origin])


async def _tenants_list(repo: TenantRepository, args: argparse.Namespace) -> list[Tenant]:
    return await repo.all()


async def _tenants_show(repo: TenantRepository, args: argparse.Namespace) -> Tenant:
    return await repo.get(args.id)


async def _keys_create(repo: TenantRepository, args: argparse.Namespace) -> DomainKey:
    return await repo.create_key(args.tenant, args.origin, label=args.label)


async def _keys_list(repo: TenantRepository, args: argparse.Namespace) -> list[DomainKey]:
    await repo.get(args.tenant)
    return await repo.keys_of(args.tenant)


async def _keys_revoke(repo: TenantRepository, args: argparse.Namespace) -> DomainKey:
    await _key(repo, args.key)
    return await repo.revoke_key(args.key)


def _limit_value(field: str, raw: str) -> object:
    """Turn one option's text into what `Limits` validates, or say what the option expects."""
    kind = LIMIT_KINDS[field]
    if kind == "rate" and (match := RATE.match(raw)):
        return dict(zip(RATE_PARTS, map(int, match.groups()), strict=True))
    if kind == "tokens" and raw.lower() == "none":
        return None
    if kind != "rate" and re.fullmatch(r"\d+", raw):
        return int(raw)
    raise ServiceError(f"{_option(field)} {raw}: {_expected(field)}.")


def _option(field: str) -> str:
    return f"--{field.replace('_', '-')}"


def _expected(field: str) -> str:
    default = Limits.model_fields[field].default
    if isinstance(default, RateSetting):
        example = f"{default.count}/{default.per_seconds}/{default.burst}"
        return f"expected N/SECONDS/BURST, N per SECONDS with bursts of up to BURST, like {example}"
    if LIMIT_KINDS[field] == "tokens":
        return f"expected a number of tokens per UTC day, like {default}, or none for no cap"
    return f"expected a whole number, like {default}"


def _problem(error: Mapping[str, Any]) -> str:
    """Say what is wrong with one part of a value, in the terms of the option's format."""
    bounds = error.get("ctx", {})
    problem = str(error["msg"])
    if "ge" in bounds:
        problem = f"must be at least {bounds['ge']}"
    elif "le" in bounds:
        problem = f"must be at most {bounds['le']}"
    part = RATE_PARTS.get(str(error["loc"][-1]))
    return f"{part} {problem}" if part else problem


async def _exists(repo: TenantRepository, tenant_id: str) -> bool:
    try:
        await repo.get(tenant_id)
    except NotFound:
        return False
    return True


async def _key(repo: TenantRepository, key_id: str) -> DomainKey:
    # The repository's message is written for a site owner's snippet; an operator wants the id.
    try:
        return await repo.get_key(key_id)
    except NotFound:
        raise NotFound(f"No domain key {key_id!r}: `keys list <tenant>` shows a tenant's keys.") from None


COMMANDS: dict[tuple[str, str], Command] = {
    ("tenants", "create"): tenants_create,
    ("tenants", "list"): _tenants_list,
    ("tenants", "show"): _tenants_show,
    ("tenants", "limits"): tenants_limits,
    ("tenants", "usage"): tenants_usage,
    ("keys", "create"): _keys_create,
    ("keys", "list"): _keys_list,
    ("keys", "revoke"): _keys_revoke,
    ("keys", "add-origin"): keys_add_origin,
    ("keys", "remove-origin"): keys_remove_origin,
}


def _default_model(provider: str) -> str:
    return {"demo": "demo", "openai": "gpt-4.1-mini", "gemini": "gemini-2.5-flash"}.get(provider, "default")


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run one command; return the process exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage or help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        settings = Settings.from_env(environ)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.group == "serve":
        return serve(settings, args.host)
    if settings.redis_url is None:
        print(
            "error: set REDIS_URL to the service's Redis; without it there is no shared store to edit.", file=sys.stderr
        )
        return 2
    try:
        result = asyncio.run(_run(COMMANDS[(args.group, args.action)], settings, args))
    except (ServiceError, ValidationError) as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 1
    except (RedisError, OSError) as exc:
        print(f"error: cannot reach Redis at REDIS_URL: {exc}", file=sys.stderr)
        return 1
    _print(result, as_json=args.json)
    return 0


async def _run(command: Command, settings: Settings, args: argparse.Namespace) -> Any:
    redis = open_redis(settings)
    try:
        return await command(TenantRepository(redis), args)
    finally:
        await redis.aclose()  # the client owns its pool: this closes its sockets too


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _print(result: BaseModel | list[Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_plain(result), indent=2))
        return
    for line in _lines(result):
        print(line)


def _plain(result: object) -> Any:
    if isinstance(result, list):
        return [_plain(item) for item in result]
    if isinstance(result, DailyUsage):
        return dataclasses.asdict(result)
    assert isinstance(result, BaseModel)
    return result.model_dump(mode="json")


def _lines(result: BaseModel | list[Any]) -> Iterator[str]:
    if isinstance(result, Limits):
        yield from _limit_lines(result)
        return
    items = result if isinstance(result, list) else [result]
    if items and isinstance(items[0], DailyUsage):
        yield "day         messages  input_tokens  output_tokens"
    for item in items:
        if isinstance(item, DailyUsage):
            yield f"{item.day}  {item.messages:>8}  {item.input_tokens:>12}  {item.output_tokens:>13}"
        elif isinstance(item, DomainKey):
            state = "active" if item.active else "revoked"
            yield f"{item.id}\t{item.tenant_id}\t{state}\t{' '.join(item.origins) or '-'}"
        elif isinstance(item, Tenant):
            yield f"{item.id}\t{item.name}\t{item.ai.provider}:{item.ai.model}"


def _limit_lines(limits: Limits) -> Iterator[str]:
    width = max(map(len, LIMIT_KINDS))
    for field in LIMIT_KINDS:
        value = getattr(limits, field)
        if isinstance(value, RateSetting):
            text = f"{value.count} per {value.per_seconds} s, burst {value.burst}"
        elif LIMIT_KINDS[field] == "tokens":
            text = "no cap" if value is None else f"{value} tokens per UTC day"
        else:
            text = f"{value} at a time per visitor"
        yield f"{field:<{width}}  {text}"


def serve(settings: Settings, host: str) -> int:
    """Run the service under uvicorn."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=settings.port,
        # The app reads X-Forwarded-* itself, only from PERCH_TRUSTED_PROXIES; uvicorn's own reading
        # would also believe 127.0.0.1 when no proxy is configured.
        proxy_headers=False,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
    return 0
