"""SPEC §13 Origin matching, pure: app.origin without any I/O, by table and by hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.origin import (
    DEFAULT_PORTS,
    Allowed,
    Entry,
    Origin,
    allow_hint,
    origin_allowed,
    parse_allowed,
    parse_entry,
    parse_origin,
)


def allowed(*items: str) -> Allowed:
    return parse_allowed(items)


SAME = None  # the default policy: same origin as Host


@pytest.mark.parametrize(
    ("origin", "host", "policy", "expected"),
    [
        # No Origin: not a browser page.
        (None, "localhost:9000", SAME, True),
        (None, None, allowed("https://example.com"), True),
        # Same origin: host and port as given.
        ("http://localhost:9000", "localhost:9000", SAME, True),
        ("http://LOCALHOST:9000", "localhost:9000", SAME, True),
        ("http://localhost:9000", "LocalHost:9000", SAME, True),
        ("http://localhost:9001", "localhost:9000", SAME, False),
        ("http://localhost", "localhost:9000", SAME, False),
        ("http://localhost:9000", "localhost", SAME, False),
        ("http://127.0.0.1:9000", "localhost:9000", SAME, False),  # no name resolution
        ("http://evil.example:9000", "localhost:9000", SAME, False),
        ("http://localhost.evil.example:9000", "localhost:9000", SAME, False),
        ("http://[::1]:9000", "[::1]:9000", SAME, True),
        ("http://[::1]:9000", "[::2]:9000", SAME, False),
        # A port that is the default for the Origin's scheme counts as absent on either side.
        ("https://example.com", "example.com", SAME, True),  # behind a TLS proxy
        ("https://example.com", "example.com:443", SAME, True),
        ("https://example.com:443", "example.com", SAME, True),
        ("http://example.com", "example.com:80", SAME, True),
        ("http://example.com:80", "example.com", SAME, True),
        ("https://example.com", "example.com:80", SAME, False),  # 80 is not https's default
        ("http://example.com", "example.com:443", SAME, False),
        ("https://example.com:8443", "example.com", SAME, False),
        # The scheme is not compared under same origin (the server cannot know it behind a proxy).
        ("https://localhost:9000", "localhost:9000", SAME, True),
        # No Host, a bad Host, null, or a malformed Origin: refused.
        ("http://localhost:9000", None, SAME, False),
        ("http://localhost:9000", "localhost:9000/x", SAME, False),
        ("null", "localhost:9000", SAME, False),
        ("localhost:9000", "localhost:9000", SAME, False),
        ("http://localhost:9000/", "localhost:9000", SAME, False),
        ("http://user@localhost:9000", "localhost:9000", SAME, False),
        ("http://localhost:99999", "localhost:99999", SAME, False),
        ("", "localhost:9000", SAME, False),
        # --origin: scheme where given, host case-insensitively, a port where given.
        ("https://example.com", None, allowed("https://example.com"), True),
        ("https://EXAMPLE.com", None, allowed("HTTPS://example.COM"), True),
        ("https://example.com:8443", None, allowed("https://example.com"), True),  # no port: any port
        ("http://example.com", None, allowed("https://example.com"), False),  # scheme given: compared
        ("https://www.example.com", None, allowed("https://example.com"), False),  # no subdomains
        ("https://example.com.evil.test", None, allowed("https://example.com"), False),
        ("https://example.com", None, allowed("example.com"), True),  # no scheme: any scheme
        ("http://example.com:1234", None, allowed("example.com"), True),
        ("https://example.com", None, allowed("example.com:443"), True),  # default port from the scheme
        ("http://example.com", None, allowed("example.com:443"), False),
        ("https://example.com:443", None, allowed("https://example.com:443"), True),
        ("https://example.com", None, allowed("https://example.com:443"), True),
        ("https://example.com:8443", None, allowed("https://example.com:443"), False),
        ("http://example.com", None, allowed("http://example.com:80"), True),
        ("chrome-extension://abcdef", None, allowed("chrome-extension://abcdef"), True),
        ("chrome-extension://abcdef", None, allowed("abcdef:443"), False),  # no default port for that scheme
        ("https://b.test", None, allowed("https://a.test", "https://b.test"), True),
        ("https://c.test", None, allowed("https://a.test", "https://b.test"), False),
        ("http://[::1]:9000", None, allowed("[::1]"), True),
        ("http://[::1]:9000", None, allowed("http://[::1]:9001"), False),
        # --origin never falls back to same origin.
        ("http://localhost:9000", "localhost:9000", allowed("https://example.com"), False),
        # null only if listed; * allows everything.
        ("null", None, allowed("https://example.com"), False),
        ("null", None, allowed("null"), True),
        ("NULL", None, allowed("null"), True),
        ("https://example.com", None, allowed("null"), False),
        ("null", None, allowed("*"), True),
        ("https://anything.test:1", None, allowed("*"), True),
        ("not an origin", None, allowed("*"), True),
        ("not an origin", None, allowed("https://example.com"), False),
    ],
)
def test_origin_table(origin: str | None, host: str | None, policy: Allowed | None, expected: bool) -> None:
    assert origin_allowed(origin, host, policy) is expected


@pytest.mark.parametrize(
    "entry",
    ["", "http://", "https://example.com//", "https://example.com/path", "a b", "example.com:x", "*.example.com"],
)
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_allowed([entry, "https://ok.test"] if entry else [entry])


def test_entries_parse() -> None:
    assert parse_entry("HTTPS://Example.COM:8443") == Entry("https", "example.com", 8443)
    assert parse_entry("example.com") == Entry(None, "example.com", None)
    assert parse_entry("https://example.com/") == Entry("https", "example.com", None)  # from an address bar
    assert parse_entry("[::1]:9000") == Entry(None, "[::1]", 9000)
    assert parse_allowed(["*"]) == Allowed((), anything=True)
    assert parse_allowed([" null ", ""]) == Allowed((), null=True)
    with pytest.raises(ValueError, match="port"):
        parse_entry("example.com:70000")


@pytest.mark.parametrize(
    ("origin", "hint"),
    [
        ("https://evil.test", "--origin https://evil.test"),
        ("http://Evil.test:8080", "--origin http://evil.test:8080"),
        ("null", "--origin null"),
        ("garbage", "--origin '*'"),
    ],
)
def test_the_hint_names_the_option_that_allows_it(origin: str, hint: str) -> None:
    assert allow_hint(origin) == hint
    assert origin_allowed(origin, None, parse_allowed([hint.removeprefix("--origin ").strip("'")]))


# --- properties -----------------------------------------------------------------------------------

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
names = st.lists(labels, min_size=1, max_size=3).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda parts: ".".join(map(str, parts)))
ipv6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
hosts = st.one_of(names, ipv4, ipv6)
schemes = st.sampled_from(["http", "https", "ws", "wss", "chrome-extension", "app"])
ports = st.none() | st.integers(1, 65535)


def serialize(scheme: str, host: str, port: int | None) -> str:
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def mixed_case(data: st.DataObject, text: str) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


@given(st.text(), st.none() | st.text(), st.none() | st.lists(st.text(), max_size=4))
def test_never_raises_and_no_origin_is_always_allowed(origin: str, host: str | None, items: list[str] | None) -> None:
    try:
        policy = parse_allowed(items) if items is not None else None
    except ValueError:
        return
    assert isinstance(origin_allowed(origin, host, policy), bool)
    assert origin_allowed(None, host, policy)
    assert origin_allowed(origin, host, Allowed(anything=True))


@given(schemes, hosts, ports)
def test_origins_parse_back(scheme: str, host: str, port: int | None) -> None:
    assert parse_origin(serialize(scheme, host, port)) == Origin(scheme, host.lower(), port)


@given(st.data(), schemes, hosts, ports)
def test_same_origin_matches_its_own_host_whatever_the_case(
    data: st.DataObject, scheme: str, host: str, port: int | None
) -> None:
    origin = serialize(scheme, mixed_case(data, host), port)
    host_header = mixed_case(data, host) + (f":{port}" if port is not None else "")
    assert origin_allowed(origin, host_header, None)


@given(schemes, hosts, ports, hosts, ports)
def test_same_origin_refuses_another_host_or_port(
    scheme: str, host: str, port: int | None, other: str, other_port: int | None
) -> None:
    default = DEFAULT_PORTS.get(scheme)
    assume(
        host.lower() != other.lower()
        or (port if port != default else None) != (other_port if other_port != default else None)
    )
    host_header = other + (f":{other_port}" if other_port is not None else "")
    assert not origin_allowed(serialize(scheme, host, port), host_header, None)


@given(st.sampled_from(sorted(DEFAULT_PORTS)), hosts)
def test_the_default_port_counts_as_absent_on_either_side(scheme: str, host: str) -> None:
    default = DEFAULT_PORTS[scheme]
    for origin in (serialize(scheme, host, None), serialize(scheme, host, default)):
        for host_header in (host, f"{host}:{default}"):
            assert origin_allowed(origin, host_header, None)


@given(schemes, hosts, ports, ports)
def test_an_entry_without_a_port_allows_any_port_one_with_a_port_only_that_one(
    scheme: str, host: str, port: int | None, entry_port: int | None
) -> None:
    origin = serialize(scheme, host, port)
    assert origin_allowed(origin, None, parse_allowed([host.upper()]))
    assert origin_allowed(origin, None, parse_allowed([serialize(scheme.upper(), host, None)]))
    effective = port if port is not None else DEFAULT_PORTS.get(scheme)
    listed = parse_allowed([serialize(scheme, host, entry_port)])
    assert origin_allowed(origin, None, listed) is (entry_port is None or entry_port == effective)


@given(schemes, hosts, ports, st.lists(st.tuples(schemes, hosts, ports), min_size=1, max_size=4))
def test_a_listed_origin_matches_only_a_listed_host(
    scheme: str, host: str, port: int | None, entries: list[tuple[str, str, int | None]]
) -> None:
    policy = parse_allowed([serialize(*entry) for entry in entries])
    if origin_allowed(serialize(scheme, host, port), None, policy):
        assert any(h.lower() == host.lower() and s == scheme for s, h, _ in entries)
    assert not origin_allowed("null", None, policy)
