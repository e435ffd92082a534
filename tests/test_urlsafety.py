"""SSRF guard (webhooks/urlsafety.py): which endpoint URLs are refused, and why.

No network: host names resolve through a fake socket.getaddrinfo (a dictionary), literal
addresses are never resolved. Every test starts with no allowed CIDR and https-only off,
whatever tests/settings.py says; tests that need otherwise set them with `settings`.
"""

import importlib.util
import ipaddress
import socket
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from webhooks import urlsafety
from webhooks.urlsafety import UnsafeURL, check_url, forbidden_reason, is_public, parse_ipv4_loose, resolve_public

FAKE_DNS = {
    "public.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    "intranet.example": ["10.1.2.3"],
    "metadata.example": ["169.254.169.254"],
    "rebind.example": ["93.184.216.34", "127.0.0.1"],
    "v6private.example": ["2606:2800:220:1::1", "fd00::1"],
    "localhost": ["127.0.0.1", "::1"],
}


def fake_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    try:
        addresses = FAKE_DNS[host.lower().removesuffix(".")]
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
    result = []
    for a in addresses:
        if ":" in a:
            result.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)))
        else:
            result.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)))
    return result


@pytest.fixture(autouse=True, scope="module")
def no_real_dns_and_strict_settings():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", fake_getaddrinfo)
        with override_settings(WEBHOOK_ALLOWED_CIDRS=[], WEBHOOK_HTTPS_ONLY=False):
            yield


def refused(url: str) -> str:
    with pytest.raises(UnsafeURL) as exc:
        check_url(url)
    return str(exc.value)


# --- addresses --------------------------------------------------------------------------

FORBIDDEN_URLS = {
    # IPv4, by category
    "http://127.0.0.1/": "loopback",
    "http://127.255.255.254/": "loopback",
    "http://10.0.0.1/": "private",
    "http://172.16.5.4/": "private",
    "http://192.168.1.1/": "private",
    "http://169.254.169.254/latest/meta-data/": "link-local",
    "http://100.64.0.1/": "carrier-grade NAT",
    "http://100.127.255.255/": "carrier-grade NAT",
    "http://0.0.0.0/": "unspecified",
    "http://0.1.2.3/": "unspecified",
    "http://192.0.0.8/": "IETF",
    "http://192.0.2.1/": "documentation",
    "http://198.18.0.1/": "benchmarking",
    "http://224.0.0.1/": "multicast",
    "http://239.255.255.250/": "multicast",
    "http://240.0.0.1/": "reserved",
    "http://255.255.255.255/": "reserved",
    # odd IPv4 spellings of 127.0.0.1 (and friends)
    "http://2130706433/": "loopback",
    "http://0x7f000001/": "loopback",
    "http://0x7f.1/": "loopback",
    "http://0x7F.0.0.1/": "loopback",
    "http://0177.0.0.1/": "loopback",
    "http://0177.1/": "loopback",
    "http://127.1/": "loopback",
    "http://127.0.1/": "loopback",
    "http://127.0.0.1./": "loopback",
    "http://017700000001/": "loopback",
    "http://0/": "unspecified",
    "http://0xa9fea9fe/": "link-local",  # 169.254.169.254
    "http://3232235777/": "private",  # 192.168.1.1
    # IPv6
    "http://[::1]/": "loopback",
    "http://[::]/": "unspecified",
    "http://[::ffff:127.0.0.1]/": "loopback (embedded IPv4 127.0.0.1)",
    "http://[::ffff:7f00:1]/": "loopback (embedded IPv4 127.0.0.1)",
    "http://[::ffff:a9fe:a9fe]/": "link-local",
    "http://[::ffff:10.0.0.1]:8080/": "private",
    "http://[::127.0.0.1]/": "IPv4-compatible",
    "http://[64:ff9b::7f00:1]/": "loopback (embedded IPv4 127.0.0.1)",  # NAT64
    "http://[64:ff9b::a9fe:a9fe]/": "link-local",
    "http://[64:ff9b:1::1]/": "local-use NAT64",
    "http://[2002:7f00:1::1]/": "loopback (embedded IPv4 127.0.0.1)",  # 6to4
    "http://[2002:c0a8:101::]/": "private",
    "http://[fe80::1]/": "link-local",
    "http://[fd00::1]/": "unique-local",
    "http://[fc00::1]/": "unique-local",
    "http://[fec0::1]/": "site-local",
    "http://[ff02::1]/": "multicast",
    "http://[2001:db8::1]/": "documentation",
    "http://[2001::1]/": "Teredo",
    "http://[100::1]/": "discard-only",
    "http://[4000::1]/": "not global unicast",
    # names (fake DNS)
    "http://localhost/": "loopback",
    "http://LOCALHOST:8000/": "loopback",
    "http://intranet.example/": "private",
    "http://metadata.example/": "link-local",
    "http://rebind.example/": "loopback",  # public + private: refused
    "https://v6private.example/": "unique-local",
}


@pytest.mark.parametrize("url,reason", FORBIDDEN_URLS.items())
def test_forbidden_addresses_are_refused(url, reason):
    message = refused(url)
    assert reason in message
    assert message.startswith(f"{url} resolves to ")


def test_message_is_for_a_human():
    assert refused("http://10.0.0.1/") == "http://10.0.0.1/ resolves to 10.0.0.1, a private address"
    assert refused("http://0x7f.1/") == "http://0x7f.1/ resolves to 127.0.0.1, a loopback address"


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/",
        "https://8.8.8.8:8443/hook?x=1#frag",
        "http://134744072/",  # 8.8.8.8 as an integer: odd but public
        "http://0x8.0x8.0x8.0x8/",
        "http://[2606:4700:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
        "http://[64:ff9b::808:808]/",  # NAT64 of 8.8.8.8
        "http://[2002:808:808::1]/",  # 6to4 of 8.8.8.8
        "http://public.example/hook",
        "HTTPS://Public.Example:443/hook",
        "http://public.example./",
        "http://100.128.0.1/",  # just past carrier-grade NAT
        "http://172.32.0.1/",  # just past 172.16.0.0/12
    ],
)
def test_public_urls_are_accepted(url):
    check_url(url)


@pytest.mark.parametrize(
    "url,reason",
    [
        ("ftp://93.184.216.34/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("gopher://93.184.216.34:70/", "scheme"),
        ("//93.184.216.34/", "scheme"),
        ("93.184.216.34", "scheme"),
        ("", "scheme"),
        ("http://", "no host"),
        ("http:///path", "no host"),
        ("http:93.184.216.34", "no host"),
        ("http://:80/", "no host"),
        ("http://[]/", "not a valid URL"),
        ("http://user:pass@93.184.216.34/", "credentials"),
        ("http://user@93.184.216.34/", "credentials"),
        ("http://@93.184.216.34/", "credentials"),
        ("http://93.184.216.34@127.0.0.1/", "credentials"),
        ("http://93.184.216.34:0/", "port"),
        ("http://93.184.216.34:65536/", "port"),
        ("http://93.184.216.34:+80/", "port"),
        ("http://93.184.216.34:80:80/", "port"),
        ("http://93.184.216.34:/", "port"),
        ("http://93.184.216.34:8o/", "port"),
        ("http://9 3.184.216.34/", "whitespace"),
        ("http://public.example\n/", "whitespace"),
        ("http://public.example\t.evil/", "whitespace"),
        (" http://public.example/", "whitespace"),
        ("http://127.0.0.%31/", "not allowed in a host"),
        ("http://public.example\\@127.0.0.1/", "credentials"),
        ("http://[fe80::1%25eth0]/", "not allowed in a host"),
        ("http://[v1.abc]/", "not a valid IPv6"),
        ("http://[::1/", "not a valid URL"),
        ("http://1.2.3.256/", "not a valid IPv4"),
        ("http://1.2.3.4.5/", "not a valid IPv4"),
        ("http://09.1.1.1/", "not a valid IPv4"),
        ("http://example.0x1/", "not a valid IPv4"),
        ("http://nope.example/", "does not resolve"),
        ("http://bad_-.example..com/", "not a valid hostname"),
        ("http://-foo.example/", "not a valid hostname"),
    ],
)
def test_malformed_urls_are_refused(url, reason):
    assert reason in refused(url)


def test_allowed_cidrs_let_loopback_through(settings):
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8", "::1/128"]
    for url in ("http://127.0.0.1:8000/hook", "http://localhost:8000/", "http://[::1]/", "http://0x7f.1/"):
        check_url(url)
    # An IPv4-mapped address is the IPv4 host it maps to.
    check_url("http://[::ffff:127.0.0.1]/")
    # Other private space stays refused.
    assert "private" in refused("http://10.0.0.1/")
    assert "link-local" in refused("http://169.254.169.254/")
    # A 6to4 or NAT64 wrapper is a different route, not the allowed host: still refused.
    assert "loopback" in refused("http://[2002:7f00:1::1]/")


def test_allowed_cidr_is_a_network_not_a_prefix_match(settings):
    settings.WEBHOOK_ALLOWED_CIDRS = ["10.1.0.0/16"]
    check_url("http://10.1.2.3/")
    check_url("http://intranet.example/")  # 10.1.2.3
    assert "private" in refused("http://10.2.0.1/")


def test_https_only(settings):
    settings.WEBHOOK_HTTPS_ONLY = True
    assert "scheme must be https" in refused("http://93.184.216.34/")
    check_url("https://93.184.216.34/")


def test_resolve_public_returns_the_addresses_to_connect_to():
    assert resolve_public("public.example", 443) == ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    assert resolve_public("0x8.0x8.0x8.0x8", 80) == ["8.8.8.8"]
    assert resolve_public("[2606:4700:4700::1111]", 80) == ["2606:4700:4700::1111"]
    assert resolve_public("2606:4700:4700::1111", 80) == ["2606:4700:4700::1111"]


@pytest.mark.parametrize(
    "host",
    ["rebind.example", "localhost", "intranet.example", "127.0.0.1", "0x7f.1", "[::ffff:127.0.0.1]", "nope.example"],
)
def test_resolve_public_refuses_if_any_address_is_forbidden(host):
    with pytest.raises(UnsafeURL):
        resolve_public(host, 80)


def test_resolve_public_sees_dns_change_after_create(monkeypatch):
    """DNS rebinding: the name was public at create time, is loopback at send time."""
    check_url("http://public.example/")
    monkeypatch.setitem(FAKE_DNS, "public.example", ["127.0.0.1"])
    with pytest.raises(UnsafeURL, match="loopback"):
        resolve_public("public.example", 80)


def test_resolve_public_with_allowed_cidrs(settings):
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8", "::1/128"]
    assert resolve_public("localhost", 8000) == ["127.0.0.1", "::1"]


def test_getaddrinfo_is_only_asked_about_names(monkeypatch):
    asked = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: asked.append(host) or fake_getaddrinfo(host, *a))
    check_url("http://93.184.216.34/")
    check_url("http://[2606:4700:4700::1111]/")
    check_url("http://public.example:8080/")
    assert asked == ["public.example"]


def test_is_public_on_python_tables_gaps():
    """The cases ipaddress gets wrong (for us) on Python 3.11."""
    assert not ipaddress.ip_address("100.64.0.1").is_private and not is_public("100.64.0.1")
    assert ipaddress.ip_address("fec0::1").is_global and not is_public("fec0::1")
    assert ipaddress.ip_address("224.0.0.1").is_global and not is_public("224.0.0.1")
    assert forbidden_reason("::ffff:127.0.0.1") == "loopback (embedded IPv4 127.0.0.1)"
    assert is_public("8.8.8.8") and is_public("2606:4700:4700::1111")
    assert is_public(ipaddress.ip_address("1.1.1.1"))


@pytest.mark.parametrize(
    "value,ok",
    [("", True), ("127.0.0.0/8, ::1/128", True), ("10.0.0.1", True), ("nope", False), ("10.0.0.1/8", False)],
)
def test_allowed_cidrs_setting_is_validated(monkeypatch, value, ok):
    monkeypatch.setenv("WEBHOOK_ALLOWED_CIDRS", value)
    path = Path(__file__).resolve().parent.parent / "webhooks_project" / "settings.py"
    spec = importlib.util.spec_from_file_location("_settings_under_test", path)
    module = importlib.util.module_from_spec(spec)
    if ok:
        spec.loader.exec_module(module)
        assert module.WEBHOOK_ALLOWED_CIDRS == [c.strip() for c in value.split(",") if c.strip()]
    else:
        with pytest.raises(ImproperlyConfigured, match="WEBHOOK_ALLOWED_CIDRS"):
            spec.loader.exec_module(module)


# --- properties ---------------------------------------------------------------------------

PROPS = hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

V4_FORBIDDEN = [n for n, _ in urlsafety.FORBIDDEN_NETWORKS if n.version == 4]
V6_FORBIDDEN = [n for n, _ in urlsafety.FORBIDDEN_NETWORKS if n.version == 6]


def _in(net_strategy):
    return net_strategy.flatmap(
        lambda net: st.integers(int(net.network_address), int(net.broadcast_address)).map(ipaddress.ip_address)
    )


forbidden_v4 = _in(st.sampled_from(V4_FORBIDDEN))
forbidden_v6 = _in(st.sampled_from(V6_FORBIDDEN))


def _independently_public_v4(a: ipaddress.IPv4Address) -> bool:
    """An oracle not built from our table: Python's is_global, less what 3.11 gets wrong."""
    return a.is_global and not a.is_multicast and a not in ipaddress.ip_network("192.88.99.0/24")


public_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address).filter(_independently_public_v4)
public_v6 = (
    st.integers(int(ipaddress.IPv6Address("2000::")), int(ipaddress.IPv6Address("3fff:ffff::")))
    .map(ipaddress.IPv6Address)
    .filter(lambda a: a.is_global and a.sixtofour is None and a not in ipaddress.ip_network("3fff::/20"))
)


def spellings(a: ipaddress.IPv4Address) -> list[str]:
    """Every way a URL host can name `a` that libc or a browser resolves to `a`."""
    n = int(a)
    o = a.packed
    return [
        str(a),
        f"{a}.",
        str(n),
        hex(n),
        f"0X{n:08X}",
        oct(n).replace("0o", "0"),
        ".".join(f"0x{b:x}" for b in o),
        ".".join(f"0{b:o}" for b in o),
        f"{o[0]}.{o[1]}.{n & 0xFFFF}",
        f"{o[0]}.{n & 0xFFFFFF}",
        f"0x{o[0]:x}.{n & 0xFFFFFF}",
        f"[::ffff:{a}]",
        f"[::ffff:{n >> 16:x}:{n & 0xFFFF:x}]",
        f"[0:0:0:0:0:ffff:{a}]",
        f"[64:ff9b::{a}]",
        f"[2002:{n >> 16:x}:{n & 0xFFFF:x}::1]",
    ]


@PROPS
@given(
    forbidden_v4, st.sampled_from(["http", "https"]), st.one_of(st.just(""), st.integers(1, 65535).map(":{}".format))
)
def test_every_spelling_of_a_forbidden_ipv4_is_refused(address, scheme, port):
    for host in spellings(address):
        url = f"{scheme}://{host}{port}/hook"
        with pytest.raises(UnsafeURL, match=str(address).replace(".", r"\.")):
            check_url(url)


@PROPS
@given(public_v4)
def test_every_spelling_of_a_public_ipv4_is_accepted(address):
    for host in spellings(address):
        check_url(f"https://{host}/hook")
        assert resolve_public(host, 443) == [str(ipaddress.ip_address(host.strip("[]")) if ":" in host else address)]


@PROPS
@given(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address))
def test_loose_ipv4_parser_agrees_with_inet_aton(address):
    for host in spellings(address)[2:11]:
        assert parse_ipv4_loose(host) == address == ipaddress.IPv4Address(socket.inet_aton(host))


@PROPS
@given(forbidden_v6)
def test_forbidden_ipv6_is_refused(address):
    with pytest.raises(UnsafeURL):
        check_url(f"http://[{address}]/")
    with pytest.raises(UnsafeURL):
        check_url(f"http://[{address.exploded}]:8080/")


@PROPS
@given(public_v6)
def test_public_ipv6_is_accepted(address):
    check_url(f"https://[{address}]/")
    check_url(f"http://[{address.exploded.upper()}]:8443/x")


def _url_ish():
    hosts = st.one_of(
        st.sampled_from(list(FAKE_DNS) + ["127.0.0.1", "[::1]", "0x7f.1", "[::ffff:7f00:1]", "93.184.216.34"]),
        st.text(alphabet="0123456789abcdefxX.:[]%@_-", max_size=30),
        st.text(max_size=20),
    )
    return st.builds(
        lambda scheme, userinfo, host, port, path: f"{scheme}{userinfo}{host}{port}{path}",
        st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "http:", "", "javascript:", "http:///"]),
        st.sampled_from(["", "u@", "u:p@", "@", ":@"]),
        hosts,
        st.one_of(st.just(""), st.text(alphabet=":0123456789+-", max_size=8)),
        st.one_of(st.just("/"), st.text(max_size=20)),
    )


@PROPS
@given(st.one_of(st.text(), _url_ish(), urls()))
def test_check_url_only_ever_raises_unsafe_url(url):
    try:
        check_url(url)
    except UnsafeURL as exc:
        assert str(exc)
    else:
        # Accepted: the send-time check agrees, and the host has only allowed addresses.
        _, host, port = urlsafety.split_host_port(url)
        assert all(is_public(a) for a in resolve_public(host, port))
