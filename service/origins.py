"""Web origins (scheme://host[:port]): canonical forms for allowlists, and matching against them.

An Origin header is compared as a string, so every origin we store or receive is first put in
one canonical form: lowercase http(s) scheme, ASCII (punycode) host, no default port. Allowlist
entries may also be wildcards, `https://*.example.com`, which cover subdomains but never the apex.
Anything that could widen an allowlist by accident (a public suffix, a misplaced `*`, userinfo,
a path) is rejected with a sentence that says how to fix it.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from functools import cache

import idna
from publicsuffixlist import PublicSuffixList

MAX_INPUT_LENGTH = 2048
MAX_HOST_LENGTH = 253
DEFAULT_PORTS = {"http": 80, "https": 443}
EXAMPLE = "https://shop.example.com"

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
# Underscores are not valid in DNS host names but browsers accept them and some real sites use them.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A WHATWG URL parser reads a host whose last label is a number as IPv4 (`127.1`, `0x7f`), so such a
# host either is a plain dotted-quad or can never equal what a browser sends.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PORT = re.compile(r"[0-9]{1,5}")
_WILDCARD = re.compile(r"\*\.[^*]+")


class OriginError(ValueError):
    """An origin or allowed-origin entry is malformed; the message says how to fix it."""


def canonical_origin(value: str) -> str:
    """Return the canonical form of a concrete origin, or raise OriginError saying what is wrong."""
    return _exact(*_split(value, EXAMPLE))


def canonical_pattern(value: str) -> str:
    """Return the canonical form of an allowed-origin entry: an exact origin or `scheme://*.domain[:port]`."""
    scheme, host, port = _split(value, f"{EXAMPLE} or https://*.example.com")
    if "*" not in host:
        return _exact(scheme, host, port)
    if not _WILDCARD.fullmatch(host):
        raise OriginError(f"A wildcard must be the whole leftmost label, like https://*.example.com, not {value}.")
    base = _canonical_host(host[2:])
    _reject_wildcard_base(base, scheme)
    return _join(scheme, "*." + base, port)


def origin_matches(origin: str, patterns: Iterable[str]) -> bool:
    """Say whether a canonical origin is allowed by any of the canonical patterns."""
    return any(origin == pattern or _wildcard_matches(origin, pattern) for pattern in patterns)


def _wildcard_matches(origin: str, pattern: str) -> bool:
    scheme, wildcard, base = pattern.partition("://*.")
    if not wildcard:
        return False
    origin_scheme, _, rest = origin.partition("://")
    # `base` carries the port, so comparing suffixes compares the port too; the dot before it keeps
    # the match on a label boundary, and the label check keeps the apex and junk out.
    if origin_scheme != scheme or not rest.endswith("." + base):
        return False
    return _HOST.fullmatch(rest[: -len(base) - 1]) is not None


def _exact(scheme: str, host: str, port: int | None) -> str:
    if "*" in host:
        raise OriginError(f"A wildcard can't be used here: give an exact origin, like {EXAMPLE}.")
    host = _canonical_host(host)
    if not _is_ip(host):
        _reject_public_suffix(host, scheme)
    return _join(scheme, host, port)


def _split(value: str, example: str) -> tuple[str, str, int | None]:
    """Check the parts every origin shares and return its lowercase scheme, raw host and port."""
    _reject_special(value, example)
    match = _SCHEME.fullmatch(value)
    if match is None:
        hint = f"use https://{value}, not {value}" if "/" not in value and ":" not in value else f"like {EXAMPLE}"
        raise OriginError(f"Origins start with http:// or https://: {hint}.")
    scheme, rest = match[1].lower(), match[2]
    if scheme not in DEFAULT_PORTS:
        raise OriginError(f"Origins use http or https, not {scheme}: write one like {EXAMPLE}.")
    authority, tail = _cut_authority(rest)
    if tail not in ("", "/"):
        raise OriginError(f"Origins have no {_tail_name(tail)}: use {scheme}://{authority}, not {value}.")
    if "@" in authority:
        raise OriginError("Origins have no user name or password: remove everything up to and including the @.")
    host, port = _split_port(authority)
    if not host:
        raise OriginError(f"{value} has no host: write one like {EXAMPLE}.")
    return scheme, host, _port(port, scheme)


def _reject_special(value: str, example: str) -> None:
    if len(value) > MAX_INPUT_LENGTH:
        raise OriginError(f"Origin is too long: an origin is only scheme://host[:port], like {EXAMPLE}.")
    if not value:
        raise OriginError(f"Origin is empty: give one like {example}.")
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in value):
        raise OriginError("Origin contains a space or control character: remove it (a pasted line break is typical).")
    if value.lower() == "null":
        raise OriginError(
            f"null is what browsers send for sandboxed frames and local files, so it can't be allowed: "
            f"use the page's real origin, like {EXAMPLE}."
        )
    if value == "*":
        raise OriginError(f"* would allow every website: list each origin instead, like {example}.")


def _cut_authority(rest: str) -> tuple[str, str]:
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:end], rest[end:]


def _tail_name(tail: str) -> str:
    return {"?": "query", "#": "fragment"}.get(tail[0], "path")


def _split_port(authority: str) -> tuple[str, str | None]:
    if authority.startswith("["):
        host, bracket, after = authority.partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise OriginError(f"{authority} is not a valid IPv6 host: write it in brackets, like http://[::1]:8000.")
        return host + bracket, after[1:] if after else None
    host, colon, port = authority.rpartition(":")
    if not colon:
        return authority, None
    if ":" in host:
        raise OriginError(f"Put IPv6 addresses in brackets, like http://[::1]:8000, not {authority}.")
    return host, port


def _port(port: str | None, scheme: str) -> int | None:
    if port is None:
        return None
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise OriginError(f"Port {port!r} is not valid: use a number from 1 to 65535, or leave it out for the default.")
    number = int(port)
    return None if number == DEFAULT_PORTS[scheme] else number


def _canonical_host(host: str) -> str:
    """Return the host lowercased, in ASCII, with IP addresses in their standard spelling."""
    if host.startswith("["):
        return _ipv6(host[1:-1])
    ascii_host = host.lower() if host.isascii() else _to_ascii(host)
    if len(ascii_host) > MAX_HOST_LENGTH:
        raise OriginError(f"Host names are at most {MAX_HOST_LENGTH} characters; {host[:40]}… is longer.")
    if ascii_host.endswith("."):
        raise OriginError(f"Origins have no trailing dot: use {host.rstrip('.')}, not {host}.")
    if not _HOST.fullmatch(ascii_host):
        raise OriginError(
            f"{host} is not a valid host name: use letters, digits, hyphens and single dots, like shop.example.com."
        )
    for label in ascii_host.split("."):
        if label.startswith("xn--"):
            _check_punycode(label, host)
    if _NUMERIC_LABEL.fullmatch(ascii_host.rsplit(".", 1)[-1]):
        return _ipv4(ascii_host)
    return ascii_host


def _to_ascii(host: str) -> str:
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise OriginError(f"{host} is not a valid internationalised domain name ({exc}): check its spelling.") from None


def _check_punycode(label: str, host: str) -> None:
    try:
        idna.decode(label)
    except idna.IDNAError:
        raise OriginError(f"{host} has a malformed punycode label {label}: check its spelling.") from None


def _ipv4(host: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise OriginError(
            f"{host} looks like an IP address but isn't one: write IPv4 as four numbers from 0 to 255, like 127.0.0.1."
        ) from None


def _ipv6(address: str) -> str:
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        raise OriginError(f"[{address}] is not a valid IPv6 address: write one like [::1].") from None
    if parsed.scope_id is not None:
        raise OriginError(f"Origins can't carry an IPv6 zone: remove %{parsed.scope_id} from [{address}].")
    return f"[{parsed.compressed}]"


def _is_ip(host: str) -> bool:
    return host.startswith("[") or _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]) is not None


@cache
def _public_suffixes() -> PublicSuffixList:
    # The package bundles the list, so this reads a local file; private entries (github.io) count,
    # because sites under them belong to unrelated owners just as under .com.
    return PublicSuffixList(only_icann=False)


def _reject_public_suffix(host: str, scheme: str) -> None:
    # The list's default rule makes every unlisted single label a suffix; localhost is the one we mean.
    if host != "localhost" and _public_suffixes().is_public(host):
        raise OriginError(
            f"{host} is a public suffix shared by unrelated sites, not one website: "
            f"use your own domain, like {scheme}://shop.example.{host}."
        )


def _reject_wildcard_base(base: str, scheme: str) -> None:
    if _is_ip(base):
        raise OriginError("A wildcard needs a domain name, not an IP address: list the exact origin instead.")
    if base == "localhost":
        raise OriginError("A wildcard can't cover localhost: list each origin instead, like http://localhost:8000.")
    if _public_suffixes().is_public(base):
        raise OriginError(
            f"{scheme}://*.{base} would allow every site under the public suffix {base}: "
            f"narrow it to your own domain, like {scheme}://*.example.{base}."
        )


def _join(scheme: str, host: str, port: int | None) -> str:
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"
