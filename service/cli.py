"""`python -m service …`: run the server, and manage tenants and domain keys from a shell."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import uvicorn
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from service.app import create_app
from service.errors import ServiceError
from service.redis_client import open_redis
from service.settings import Settings, SettingsError
from service.tenants import DomainKey, Tenant, TenantRepository

Command = Callable[[TenantRepository, argparse.Namespace], Awaitable[Any]]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m service", description="Perch: embeddable AI chat for any site.")
    root.add_argument("--json", action="store_true", help="print machine-readable JSON")
    groups = root.add_subparsers(dest="group", required=True)
    serve = groups.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")

    tenants = groups.add_parser("tenants", help="manage tenants").add_subparsers(dest="action", required=True)
    create = tenants.add_parser("create", help="create a tenant")
    create.add_argument("id", help="slug: lowercase letters, digits and dashes")
    create.add_argument("--name", required=True)
    create.add_argument("--provider", choices=["demo", "openai", "gemini", "compatible"], default="demo")
    create.add_argument("--model", default=None)
    tenants.add_parser("list", help="list tenants")
    tenants.add_parser("show", help="show one tenant").add_argument("id")

    keys = groups.add_parser("keys", help="manage domain keys").add_subparsers(dest="action", required=True)
    key_create = keys.add_parser("create", help="issue a domain key")
    key_create.add_argument("tenant")
    key_create.add_argument("--origin", action="append", default=[], help="allowed origin (repeatable)")
    key_create.add_argument("--label", default="")
    keys.add_parser("list", help="list a tenant's keys").add_argument("tenant")
    keys.add_parser("revoke", help="revoke a key").add_argument("key")
    for name in ("add-origin", "remove-origin"):
        action = keys.add_parser(name, help=f"{name.split('-')[0]} an allowed origin")
        action.add_argument("key")
        action.add_argument("origin")
    return root


async def tenants_create(repo: TenantRepository, args: argparse.Namespace) -> Tenant:
    ai = {"provider": args.provider, "model": args.model or _default_model(args.provider)}
    tenant = Tenant.model_validate({"id": args.id, "name": args.name, "ai": ai})
    if args.id in {t.id for t in await repo.all()}:
        raise ServiceError(f"Tenant {args.id!r} already exists.")
    await repo.save(tenant)
    return tenant


async def keys_add_origin(repo: TenantRepository, args: argparse.Namespace) -> DomainKey:
    key = await repo.get_key(args.key)
    return await repo.set_origins(key.id, [*key.origins, args.origin])


async def keys_remove_origin(repo: TenantRepository, args: argparse.Namespace) -> DomainKey:
    key = await repo.get_key(args.key)
    if args.origin not in key.origins:
        raise ServiceError(f"{args.origin!r} is not one of {key.id}'s origins: {', '.join(key.origins) or 'none'}.")
    return await repo.set_origins(key.id, [o for o in key.origins if o != args.origin])


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
    return await repo.revoke_key(args.key)


COMMANDS: dict[tuple[str, str], Command] = {
    ("tenants", "create"): tenants_create,
    ("tenants", "list"): _tenants_list,
    ("tenants", "show"): _tenants_show,
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
    args = parser().parse_args(argv)
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
        await redis.aclose()


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _print(result: BaseModel | list[Any], *, as_json: bool) -> None:
    items = result if isinstance(result, list) else [result]
    if as_json:
        data = [item.model_dump(mode="json") for item in items]
        print(json.dumps(data if isinstance(result, list) else data[0], indent=2))
        return
    for item in items:
        if isinstance(item, DomainKey):
            state = "active" if item.active else "revoked"
            print(f"{item.id}\t{item.tenant_id}\t{state}\t{' '.join(item.origins) or '-'}")
        elif isinstance(item, Tenant):
            print(f"{item.id}\t{item.name}\t{item.ai.provider}:{item.ai.model}")


def serve(settings: Settings, host: str) -> int:
    """Run the service under uvicorn."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=settings.port,
        proxy_headers=True,
        forwarded_allow_ips=",".join(str(n) for n in settings.trusted_proxies) or "127.0.0.1",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
    )
    return 0
