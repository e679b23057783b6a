from __future__ import annotations

import pytest

from service.origins import OriginError, canonical_origin, canonical_pattern, origin_matches


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("https://shop.example.com", "https://shop.example.com", id="already-canonical"),
        pytest.param("HTTPS://Shop.EXAMPLE.com", "https://shop.example.com", id="case"),
        pytest.param("https://BÜCHER.example", "https://xn--bcher-kva.example", id="idn-to-punycode"),
        pytest.param("https://xn--bcher-kva.example", "https://xn--bcher-kva.example", id="punycode-kept"),
        pytest.param("https://Straße.de", "https://xn--strae-oqa.de", id="idna2008-keeps-sharp-s"),
        pytest.param("https://shop.example.com:443", "https://shop.example.com", id="https-default-port"),
        pytest.param("http://shop.example.com:80", "http://shop.example.com", id="http-default-port"),
        pytest.param("https://shop.example.com:80", "https://shop.example.com:80", id="http-port-on-https-kept"),
        pytest.param("http://shop.example.com:8080", "http://shop.example.com:8080", id="other-port-kept"),
        pytest.param("https://shop.example.com/", "https://shop.example.com", id="trailing-slash"),
        pytest.param("https://shop.example.com:443/", "https://shop.example.com", id="port-and-slash"),
        pytest.param("http://localhost:8000", "http://localhost:8000", id="localhost"),
        pytest.param("http://app.localhost:8000", "http://app.localhost:8000", id="localhost-subdomain"),
        pytest.param("http://127.0.0.1:8000", "http://127.0.0.1:8000", id="ipv4"),
        pytest.param("http://[::1]:8000", "http://[::1]:8000", id="ipv6"),
        pytest.param("http://[0:0:0:0:0:0:0:1]", "http://[::1]", id="ipv6-compressed"),
        pytest.param("https://foo.github.io", "https://foo.github.io", id="site-under-private-suffix"),
        pytest.param("https://shop.example.co.uk", "https://shop.example.co.uk", id="site-under-two-label-suffix"),
    ],
)
def test_canonical_origin(value: str, expected: str) -> None:
    assert canonical_origin(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("null", "sandboxed", id="null"),
        pytest.param("NULL", "sandboxed", id="null-uppercase"),
        pytest.param("*", "every website", id="star"),
        pytest.param("https://shop.example.com/cart", "no path: use https://shop.example.com, not", id="path"),
        pytest.param("https://shop.example.com//", "no path", id="double-slash"),
        pytest.param("https://shop.example.com?a=1", "no query", id="query"),
        pytest.param("https://shop.example.com/?a=1", "no path", id="slash-query"),
        pytest.param("https://shop.example.com#top", "no fragment", id="fragment"),
        pytest.param("https://user@shop.example.com", "user name or password", id="userinfo"),
        pytest.param("https://user:pw@shop.example.com", "user name or password", id="userinfo-password"),
        pytest.param("https://evil.com@shop.example.com", "user name or password", id="userinfo-trick"),
        pytest.param("https://shop.example.com\r\nSet-Cookie: a=b", "control character", id="crlf"),
        pytest.param("https://shop.example.com\n", "control character", id="trailing-newline"),
        pytest.param(" https://shop.example.com", "space", id="leading-space"),
        pytest.param("https://shop.exa mple.com", "space", id="inner-space"),
        pytest.param("https://shop.example.com\t", "control character", id="tab"),
        pytest.param("https://shop.example.com\x00", "control character", id="nul"),
        pytest.param("https://shop\u00a0example.com", "space", id="nbsp"),
        pytest.param("ftp://shop.example.com", "not ftp", id="ftp"),
        pytest.param("javascript://shop.example.com", "not javascript", id="javascript"),
        pytest.param("shop.example.com", "use https://shop.example.com", id="no-scheme"),
        pytest.param("//shop.example.com", "start with http:// or https://", id="scheme-relative"),
        pytest.param("https:shop.example.com", "start with http:// or https://", id="no-slashes"),
        pytest.param("https://", "no host", id="no-host"),
        pytest.param("https://:443", "no host", id="port-only"),
        pytest.param("https://shop.example.com:", "Port", id="empty-port"),
        pytest.param("https://shop.example.com:0", "Port", id="port-zero"),
        pytest.param("https://shop.example.com:65536", "Port", id="port-too-big"),
        pytest.param("https://shop.example.com:8o", "Port", id="port-not-number"),
        pytest.param("https://shop.example.com:-1", "Port", id="port-negative"),
        pytest.param("https://shop.example.com:\u0664\u0664\u0663", "Port", id="port-non-ascii-digits"),
        pytest.param("https://com", "public suffix", id="suffix-com"),
        pytest.param("https://co.uk", "public suffix", id="suffix-co-uk"),
        pytest.param("https://github.io", "public suffix", id="suffix-private-github-io"),
        pytest.param("https://COM:8443", "public suffix", id="suffix-with-port"),
        pytest.param("https://*.example.com", "exact origin", id="wildcard"),
        pytest.param("https://example.com.", "trailing dot", id="trailing-dot"),
        pytest.param("https://shop..example.com", "not a valid host", id="empty-label"),
        pytest.param("https://-shop.example.com", "not a valid host", id="leading-hyphen"),
        pytest.param("https://shop.example.com\\evil.com", "not a valid host", id="backslash"),
        pytest.param("https://shop%2eexample.com", "not a valid host", id="percent-encoded"),
        pytest.param("https://xn--abc.com", "punycode", id="bad-punycode"),
        pytest.param("https://☃.net", "internationalised", id="idna2008-disallowed-symbol"),
        pytest.param("https://" + "a" * 64 + ".com", "not a valid host", id="label-too-long"),
        pytest.param("https://" + "a." * 130 + "com", "at most 253", id="host-too-long"),
        pytest.param("https://shop.example.com" + "/" * 2048, "too long", id="input-too-long"),
        pytest.param("http://127.1", "IP address", id="short-ipv4"),
        pytest.param("http://127.0.0.256", "IP address", id="ipv4-out-of-range"),
        pytest.param("http://0x7f.0.0.1", "IP address", id="hex-ipv4"),
        pytest.param("http://::1", "brackets", id="ipv6-unbracketed"),
        pytest.param("http://[::1", "IPv6", id="ipv6-unclosed"),
        pytest.param("http://[::g]", "IPv6", id="ipv6-invalid"),
        pytest.param("http://[fe80::1%eth0]", "zone", id="ipv6-zone"),
    ],
)
def test_canonical_origin_rejects(value: str, message: str) -> None:
    with pytest.raises(OriginError, match=message):
        canonical_origin(value)


def test_rejection_says_how_to_fix() -> None:
    with pytest.raises(OriginError) as caught:
        canonical_origin("https://shop.example.com/cart")
    assert str(caught.value) == "Origins have no path: use https://shop.example.com, not https://shop.example.com/cart."


def test_origin_error_is_a_value_error() -> None:
    # pydantic turns ValueError raised in validators into a 422 with the message, so admins see it.
    assert issubclass(OriginError, ValueError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("https://shop.example.com", "https://shop.example.com", id="exact"),
        pytest.param("HTTPS://Shop.Example.com:443/", "https://shop.example.com", id="exact-canonicalised"),
        pytest.param("https://*.example.com", "https://*.example.com", id="wildcard"),
        pytest.param("https://*.EXAMPLE.com:443/", "https://*.example.com", id="wildcard-canonicalised"),
        pytest.param("http://*.example.com:8080", "http://*.example.com:8080", id="wildcard-port"),
        pytest.param("https://*.BÜCHER.example", "https://*.xn--bcher-kva.example", id="wildcard-idn"),
        pytest.param("https://*.example.co.uk", "https://*.example.co.uk", id="wildcard-under-two-label-suffix"),
        pytest.param("https://*.foo.github.io", "https://*.foo.github.io", id="wildcard-under-private-suffix"),
        pytest.param("http://localhost:8000", "http://localhost:8000", id="localhost"),
    ],
)
def test_canonical_pattern(value: str, expected: str) -> None:
    assert canonical_pattern(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("*", "every website", id="star"),
        pytest.param("https://*", "leftmost label", id="star-host"),
        pytest.param("https://*.", "leftmost label", id="star-dot"),
        pytest.param("https://*example.com", "leftmost label", id="star-glued"),
        pytest.param("https://foo.*.com", "leftmost label", id="star-middle"),
        pytest.param("https://ex*.com", "leftmost label", id="star-in-label"),
        pytest.param("https://example.*", "leftmost label", id="star-tld"),
        pytest.param("https://*.*.example.com", "leftmost label", id="two-stars"),
        pytest.param("*://shop.example.com", "start with http:// or https://", id="star-scheme"),
        pytest.param("https://*.com", "public suffix com", id="suffix-com"),
        pytest.param("https://*.co.uk", "public suffix co.uk", id="suffix-co-uk"),
        pytest.param("https://*.github.io", "public suffix github.io", id="suffix-github-io"),
        pytest.param("http://*.127.0.0.1", "IP address", id="ip"),
        pytest.param("http://*.localhost:8000", "localhost", id="localhost"),
        pytest.param("https://*.example.com/app", "no path", id="path"),
        pytest.param("https://user@*.example.com", "user name or password", id="userinfo"),
        pytest.param("https://*.example.com\n", "control character", id="newline"),
        pytest.param("ftp://*.example.com", "not ftp", id="ftp"),
        pytest.param("https://*.example.com:99999", "Port", id="bad-port"),
        pytest.param("https://com", "public suffix", id="exact-suffix"),
        pytest.param("null", "sandboxed", id="null"),
    ],
)
def test_canonical_pattern_rejects(value: str, message: str) -> None:
    with pytest.raises(OriginError, match=message):
        canonical_pattern(value)


@pytest.mark.parametrize(
    ("origin", "patterns"),
    [
        pytest.param("https://example.com", ["https://example.com"], id="exact"),
        pytest.param("https://example.com", ["https://other.com", "https://example.com"], id="any-of-several"),
        pytest.param("https://a.example.com", ["https://*.example.com"], id="wildcard-subdomain"),
        pytest.param("https://a.b.example.com", ["https://*.example.com"], id="wildcard-deep-subdomain"),
        pytest.param("https://a.example.com:8443", ["https://*.example.com:8443"], id="wildcard-same-port"),
        pytest.param("http://localhost:8000", ["http://localhost:8000"], id="localhost"),
        pytest.param("http://[::1]:8000", ["http://[::1]:8000"], id="ipv6"),
    ],
)
def test_origin_matches(origin: str, patterns: list[str]) -> None:
    assert origin_matches(origin, patterns)


@pytest.mark.parametrize(
    ("origin", "patterns"),
    [
        pytest.param("https://example.com", [], id="empty-allowlist"),
        pytest.param("https://evil-example.com", ["https://example.com"], id="lookalike-exact"),
        pytest.param("https://evil-example.com", ["https://*.example.com"], id="lookalike-wildcard"),
        pytest.param("https://evilexample.com", ["https://*.example.com"], id="no-label-boundary"),
        pytest.param("https://example.com", ["https://*.example.com"], id="wildcard-not-apex"),
        pytest.param("https://example.com.evil.com", ["https://example.com"], id="suffix-trick-exact"),
        pytest.param("https://example.com.evil.com", ["https://*.example.com"], id="suffix-trick-wildcard"),
        pytest.param("https://a.example.com.evil.com", ["https://*.example.com"], id="suffix-trick-deep"),
        pytest.param("http://example.com", ["https://example.com"], id="http-vs-https"),
        pytest.param("http://a.example.com", ["https://*.example.com"], id="wildcard-http-vs-https"),
        pytest.param("https://example.com:8443", ["https://example.com"], id="port-mismatch"),
        pytest.param("https://a.example.com:8443", ["https://*.example.com"], id="wildcard-extra-port"),
        pytest.param("https://a.example.com", ["https://*.example.com:8443"], id="wildcard-missing-port"),
        pytest.param("https://a.example.com:8443", ["https://*.example.com:443"], id="wildcard-other-port"),
        pytest.param("https://sub.example.com", ["https://example.com"], id="exact-is-not-wildcard"),
        pytest.param("https://a.example.org", ["https://*.example.com"], id="other-domain"),
        pytest.param("https://x/.example.com", ["https://*.example.com"], id="non-canonical-origin-not-trusted"),
    ],
)
def test_origin_does_not_match(origin: str, patterns: list[str]) -> None:
    assert not origin_matches(origin, patterns)


def test_matching_after_canonicalising_both_sides() -> None:
    patterns = [canonical_pattern("https://*.BÜCHER.example"), canonical_pattern("HTTP://LOCALHOST:8000/")]
    assert origin_matches(canonical_origin("https://Shop.Bücher.example:443"), patterns)
    assert origin_matches(canonical_origin("http://localhost:8000"), patterns)
    assert not origin_matches(canonical_origin("https://bücher.example"), patterns)


def test_origin_matches_accepts_any_iterable() -> None:
    assert origin_matches("https://a.example.com", (p for p in ["https://*.example.com"]))
