"""Every Redis key Perch uses, built here and nowhere else.

Keys of one visitor share the hash tag ``{t:<tenant>:v:<visitor>}`` and keys of one tenant's
limits share ``{t:<tenant>}``, so the scripts and transactions that touch several of them
work on Redis Cluster.
"""

from __future__ import annotations

PREFIX = "perch"


def tenant(tenant_id: str) -> str:
    return f"{PREFIX}:tenant:{tenant_id}"


def tenant_index() -> str:
    return f"{PREFIX}:tenants"


def domain_key(key_id: str) -> str:
    return f"{PREFIX}:dk:{key_id}"


def tenant_domain_keys(tenant_id: str) -> str:
    return f"{PREFIX}:tenant:{tenant_id}:dks"


def _visitor_tag(tenant_id: str, visitor_id: str) -> str:
    return f"{PREFIX}:{{t:{tenant_id}:v:{visitor_id}}}"


def visitor_threads(tenant_id: str, visitor_id: str) -> str:
    """Sorted set of the visitor's thread ids, scored by creation sequence."""
    return f"{_visitor_tag(tenant_id, visitor_id)}:threads"


def visitor_sequence(tenant_id: str, visitor_id: str) -> str:
    """Counter that orders the visitor's threads."""
    return f"{_visitor_tag(tenant_id, visitor_id)}:seq"


def thread(tenant_id: str, visitor_id: str, thread_id: str) -> str:
    return f"{_visitor_tag(tenant_id, visitor_id)}:thread:{thread_id}"


def thread_items(tenant_id: str, visitor_id: str, thread_id: str) -> str:
    """Sorted set of a thread's item ids, scored by the thread's item sequence."""
    return f"{_visitor_tag(tenant_id, visitor_id)}:thread:{thread_id}:items"


def thread_item_data(tenant_id: str, visitor_id: str, thread_id: str) -> str:
    """Hash of item id to the item's JSON."""
    return f"{_visitor_tag(tenant_id, visitor_id)}:thread:{thread_id}:data"


def thread_sequence(tenant_id: str, visitor_id: str, thread_id: str) -> str:
    return f"{_visitor_tag(tenant_id, visitor_id)}:thread:{thread_id}:seq"


def attachment(tenant_id: str, visitor_id: str, attachment_id: str) -> str:
    return f"{_visitor_tag(tenant_id, visitor_id)}:att:{attachment_id}"


def visitor_streams(tenant_id: str, visitor_id: str) -> str:
    """Sorted set of the visitor's open stream slots, scored by expiry time."""
    return f"{_visitor_tag(tenant_id, visitor_id)}:streams"


def _tenant_tag(tenant_id: str) -> str:
    return f"{PREFIX}:{{t:{tenant_id}}}"


def visitor_message_rate(tenant_id: str, visitor_id: str) -> str:
    return f"{_tenant_tag(tenant_id)}:rl:visitor:{visitor_id}"


def visitor_request_rate(tenant_id: str, visitor_id: str) -> str:
    return f"{_tenant_tag(tenant_id)}:rl:visitor-requests:{visitor_id}"


def tenant_message_rate(tenant_id: str) -> str:
    return f"{_tenant_tag(tenant_id)}:rl:tenant"


def tenant_budget(tenant_id: str, day: str) -> str:
    """Tokens reserved or spent by the tenant on one UTC day (YYYY-MM-DD)."""
    return f"{_tenant_tag(tenant_id)}:budget:{day}"


def visitor_budget(tenant_id: str, visitor_id: str, day: str) -> str:
    return f"{_tenant_tag(tenant_id)}:budget:{day}:v:{visitor_id}"


def tenant_usage(tenant_id: str, day: str) -> str:
    """Hash of messages, input and output tokens for one tenant and UTC day."""
    return f"{_tenant_tag(tenant_id)}:usage:{day}"


def session_rate(tenant_id: str, client_network: str) -> str:
    """New sessions on one tenant's sites from one client address (an IPv6 /64 counts as one)."""
    return f"{_tenant_tag(tenant_id)}:rl:sessions:{client_network}"
