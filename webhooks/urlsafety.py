"""SSRF guard: endpoint URLs may only reach the public internet.

An endpoint URL is chosen by a customer and fetched by our workers, from inside our network.
Without this guard it could point the worker at a database on 10.x, a Redis on 127.0.0.1, or
the cloud metadata service on 169.254.169.254. So:

* `check_url` runs when an endpoint is created or its URL changed (the API answers 400): the
  scheme, the shape of the URL, and every address its host resolves to today.
* `resolve_public` runs before every POST: the name is resolved again and the transport connects
  to the address returned, not to the name. DNS can change between the two checks (or between
  a check and urllib3's own lookup: "DNS rebinding"), so only the address actually connected to
  counts.

An address is refused when it is not public (`forbidden_reason`), unless it lies in one of the
networks of settings.WEBHOOK_ALLOWED_CIDRS (development and tests: receivers on 127.0.0.1).
IPv6 addresses that carry an IPv4 address (IPv4-mapped, 6to4, NAT64) are judged by it.

No network I/O other than DNS (socket.getaddrinfo) happens here.
"""

import functools
import ipaddress
import re
import socket
from urllib.parse import urlsplit

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeURL(ValueError):
    """The URL may not be used as a webhook endpoint; the message says why, for a human."""


class Unresolvable(UnsafeURL):
    """The host does not resolve now: refused at create time, but worth retrying at send time
    (DNS outages pass; a private address does not become public)."""


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), label) for net, label in pairs)


# Spelled out rather than left to ipaddress' is_private / is_global: those tables differ between
# Python versions, and on 3.11 miss some (100.64.0.0/10 is not is_private, fec0::/10 and
# multicast 224.0.0.0/4 are is_global). First match names the reason. The ipaddress properties
# are still consulted afterwards, so a newer Python's tables can only refuse more.
FORBIDDEN_NETWORKS = _nets(
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # includes the 255.255.255.255 broadcast
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("::/8", "reserved (incl. IPv4-compatible)"),  # ::a.b.c.d is deprecated: refused outright
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignment (incl. Teredo)"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique-local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
# The only IPv6 space allocated for global unicast; anything outside it is not public.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _plain(ip: IPAddress) -> IPAddress:
    """The address without an IPv6 zone (`%eth0`), which only confuses network membership."""
    return ipaddress.IPv6Address(int(ip)) if isinstance(ip, ipaddress.IPv6Address) else ip


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, 6to4, NAT64), if any:
    connecting to the IPv6 form reaches that IPv4 host, so it is what must be judged."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden_reason(ip: str | IPAddress) -> str | None:
    """Why `ip` is not a public address ("loopback", "private"...), or None if it is public.

    Ignores WEBHOOK_ALLOWED_CIDRS: this is the fact, `is_allowed` the policy."""
    ip = _plain(ipaddress.ip_address(ip))
    inner = embedded_ipv4(ip)
    if inner is not None:
        reason = forbidden_reason(inner)
        return f"{reason} (embedded IPv4 {inner})" if reason else None
    for net, label in FORBIDDEN_NETWORKS:
        if ip in net:
            return label
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return "not global unicast"
    for prop in ("is_private", "is_loopback", "is_link_local", "is_multicast", "is_reserved", "is_unspecified"):
        if getattr(ip, prop):
            return prop.removeprefix("is_").replace("_", "-")
    if not ip.is_global:
        return "non-public"
    return None


def is_public(ip: str | IPAddress) -> bool:
    """True when `ip` is a public internet address (allowed CIDRs not considered)."""
    return forbidden_reason(ip) is None


@functools.lru_cache(maxsize=8)
def _parse_cidrs(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())


def allowed_networks() -> tuple[IPNetwork, ...]:
    """settings.WEBHOOK_ALLOWED_CIDRS, parsed (settings.py has already refused bad ones)."""
    return _parse_cidrs(tuple(getattr(settings, "WEBHOOK_ALLOWED_CIDRS", ()) or ()))


def is_allowed(ip: str | IPAddress) -> bool:
    """May we connect to `ip`: public, or inside an allowed CIDR (an IPv4-mapped address
    counts as its IPv4 address, since that is the host a dual-stack socket reaches)."""
    ip = _plain(ipaddress.ip_address(ip))
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    nets = allowed_networks()
    if any(c in net for c in candidates for net in nets if c.version == net.version):
        return True
    return is_public(ip)


# --- host parsing -------------------------------------------------------------------------

_HEX = re.compile(r"0[xX][0-9a-fA-F]*\Z")
_OCT = re.compile(r"0[0-7]+\Z")
_DEC = re.compile(r"(0|[1-9][0-9]*)\Z")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?\Z")


def _ipv4_number(part: str) -> int | None:
    if _HEX.match(part):
        return int(part[2:] or "0", 16)
    if _OCT.match(part):
        return int(part, 8)
    if _DEC.match(part):
        return int(part)
    return None


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """Read `host` as an IPv4 address the way browsers (WHATWG URL) and libc's inet_aton do:
    `2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`, a trailing dot... all mean 127.0.0.1, and
    the resolver connects to 127.0.0.1 for them, so they must be judged as such.

    None when `host` does not end in a number (a domain name). UnsafeURL when it does but is
    not a valid address (`1.2.3.256`, `09.1.1.1`): neither a name nor an address, refused.
    (socket.inet_aton is not used: glibc's accepts trailing garbage after a space.)
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not parts or _ipv4_number(parts[-1]) is None and not parts[-1].isdigit():
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise UnsafeURL(f"{host!r} is not a valid IPv4 address")
    *front, last = numbers
    if any(n > 255 for n in front) or last >= 256 ** (5 - len(numbers)):
        raise UnsafeURL(f"{host!r} is not a valid IPv4 address")
    value = last
    for i, n in enumerate(front):
        value |= n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _literal(host: str) -> IPAddress | None:
    """The address `host` spells, if it is an IP literal (IPv6 with or without brackets)."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if "%" in host:
            raise UnsafeURL(f"[{host}] has an IPv6 zone identifier, not allowed")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeURL(f"[{host}] is not a valid IPv6 address") from None
    if ":" in host:
        try:
            return _plain(ipaddress.IPv6Address(host))
        except ValueError:
            raise UnsafeURL(f"{host!r} is not a valid IPv6 address") from None
    return parse_ipv4_loose(host)


def is_ip_literal(host: str) -> bool:
    """Whether `host` is (or tries to be) an address rather than a name: no DNS involved."""
    try:
        return _literal(host) is not None
    except UnsafeURL:
        return True


def _check_hostname(host: str) -> None:
    """Refuse names no resolver would treat consistently: we and urllib3 must agree on them."""
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise UnsafeURL(f"{host!r} is not a valid hostname") from None
    labels = ascii_host.lower().removesuffix(".").split(".")
    if len(ascii_host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise UnsafeURL(f"{host!r} is not a valid hostname")


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` stands for: itself if a literal, else what DNS answers."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    _check_hostname(host)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError) as exc:
        raise Unresolvable(f"{host} does not resolve ({exc})") from None
    addresses: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = _plain(ipaddress.ip_address(sockaddr[0]))
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise Unresolvable(f"{host} does not resolve to any IP address")
    return addresses


def _refuse_forbidden(what: str, addresses: list[IPAddress]) -> None:
    for ip in addresses:
        if not is_allowed(ip):
            raise UnsafeURL(f"{what} resolves to {ip}, a {forbidden_reason(ip)} address")


def resolve_public(host: str, port: int) -> list[str]:
    """The addresses to connect to for `host` (a name, an IP literal in any spelling, IPv6 with
    or without brackets), resolved now: all of them, deduplicated, in resolver order.

    Raises UnsafeURL if the host does not resolve, or if ANY address is not allowed: a name
    answering public and private addresses at once is a rebinding attempt or a misconfiguration,
    and either way is not delivered to. The caller connects to one of the returned addresses
    (sending `host` as Host header and TLS server name), never to the name itself.
    """
    addresses = _resolve(host, port)
    _refuse_forbidden(host, addresses)
    return [str(ip) for ip in addresses]


# --- URLs ---------------------------------------------------------------------------------

_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f\s]")
_BAD_HOST_CHARS = re.compile(r"[%\\/?#@\[\]]")


def split_host_port(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an endpoint URL, checked for shape but not resolved.

    Refuses what is not plainly `http(s)://host[:port]/...`: other schemes, https-less URLs
    when WEBHOOK_HTTPS_ONLY, credentials (`user:pass@`, they would be sent in clear to
    anyone), a missing host, a port that is not 1-65535, whitespace or control characters
    (which parsers strip or keep differently, the classic way to make two of them disagree).
    No message repeats the URL: checked again before every POST, a refusal is logged and sent
    in operational events, and a URL's path and query may hold the receiver's token.
    """
    if not isinstance(url, str):
        raise UnsafeURL("the URL must be a string")
    if _CONTROL_OR_SPACE.search(url):
        raise UnsafeURL("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL ({exc})") from None
    schemes = ("https",) if getattr(settings, "WEBHOOK_HTTPS_ONLY", False) else ("http", "https")
    if parts.scheme not in schemes:
        raise UnsafeURL(f"the scheme must be {' or '.join(schemes)}, not {parts.scheme or 'missing'!r}")
    netloc = parts.netloc
    if "@" in netloc:
        # Not echoed back: the message must not repeat a password.
        raise UnsafeURL("credentials (user:password@) are not allowed in the URL")
    if netloc.startswith("["):
        host, bracket, rest = netloc.partition("]")
        host += bracket
    else:
        host, _, rest = netloc.partition(":")
        rest = ":" + rest if ":" in netloc else ""
    if not host or host == "[]":
        raise UnsafeURL("the URL has no host")
    if _BAD_HOST_CHARS.search(host.strip("[]")) or (host.startswith("[") and not host.endswith("]")):
        raise UnsafeURL(f"the host {host!r} contains characters not allowed in a host")
    if rest:
        port_text = rest.removeprefix(":")
        if not rest.startswith(":") or not (port_text.isascii() and port_text.isdigit()):
            raise UnsafeURL("the port must be a number")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise UnsafeURL("the port must be between 1 and 65535")
    else:
        port = 443 if parts.scheme == "https" else 80
    return parts.scheme, host.lower(), port


def check_url(url: str) -> None:
    """Refuse (UnsafeURL) an endpoint URL that is malformed or whose host resolves, now, to
    any address that is not public and not in WEBHOOK_ALLOWED_CIDRS. Run at create/update
    time; send time checks again with `resolve_public`, as DNS answers change."""
    _, host, port = split_host_port(url)
    _refuse_forbidden(url, _resolve(host, port))
