"""The demo tenant a fresh checkout starts with, so `make run` shows a working chat."""

from __future__ import annotations

import logging

from service.settings import Settings
from service.tenants import Branding, Prompt, Tenant, TenantRepository

log = logging.getLogger("perch")

DEMO_TENANT = "demo"
DEMO_KEY = "dk_demo"


def demo_origins(settings: Settings) -> list[str]:
    local = [f"http://localhost:{settings.port}", f"http://127.0.0.1:{settings.port}"]
    return local + list(settings.demo_origins)


async def seed_demo(tenants: TenantRepository, settings: Settings) -> None:
    """Create the demo tenant and key on a first development start; never in production."""
    if settings.production or await tenants.all():
        return
    branding = Branding(
        title="Perch demo",
        greeting="Hi! I'm the Perch demo assistant. Ask me anything.",
        prompts=[
            Prompt(label="What is Perch?", prompt="What is Perch and how do I add it to my site?"),
            Prompt(label="Say hello", prompt="Say hello in three languages."),
        ],
        disclaimer="Demo mode: replies come from a built-in responder, not an AI model.",
    )
    await tenants.save(Tenant(id=DEMO_TENANT, name="Perch demo", branding=branding))
    await tenants.create_key(DEMO_TENANT, demo_origins(settings), label="demo", key_id=DEMO_KEY)
    log.warning("Created the demo tenant %r with domain key %r for %s.", DEMO_TENANT, DEMO_KEY, demo_origins(settings))
