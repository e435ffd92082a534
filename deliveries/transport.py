"""The one place that speaks HTTP: POST a body, report what happened, never raise.

A small HTTP/1.1 client on plain sockets rather than requests/urllib3: the benchmark showed
urllib3 + http.client spending ~400 µs of CPU per POST (two sends, an email-parser for the
headers), which on two cores is most of the budget for 1,000 deliveries a second. A webhook
POST needs little of HTTP: one request written in one `sendall`, a status line, a few
headers, and at most a few KiB of body. What it does need, this module does itself:

* Pinned addresses. The endpoint's host is resolved and checked by `urlsafety.resolve_public`
  before every POST (cached for DNS_CACHE_SECONDS) and the socket connects to a checked IP
  (every address is checked; they are tried in turn, IPv6 and IPv4 alternating, each with a
  share of the connect time left, so one dead record does not fail every attempt); the Host
  header and the TLS server name stay the endpoint's. DNS rebinding between the check and the
  connect cannot reach inside. The lookup counts against the connect deadline: a resolver
  that hangs costs a request its connect timeout, no more.
* An egress proxy. With WEBHOOK_PROXY_URL every POST goes through an HTTP CONNECT tunnel to
  that checked IP (not the name: the proxy's DNS is not ours to trust), HTTP or TLS inside.
* Bounded state. However many hosts a process POSTs to, at most MAX_IDLE_CONNECTIONS idle
  connections (closed after IDLE_SECONDS, whether their host is used again or not) and
  DNS_CACHE_SIZE names are kept.
* Verified TLS. The system's CAs plus WEBHOOK_CA_BUNDLE, the endpoint's name checked, TLS 1.2
  at least; the handshake gets the connect time left (a stalled one is a timeout). A refused
  certificate says why ("TLS certificate refused: certificate has expired") and is retried
  like any connection failure. An endpoint's client certificate (mutual TLS) is presented on
  its connections, pooled apart from connections that presented none or another.
* A real deadline. Every socket operation gets the time left until the request's deadline as
  its timeout, so a receiver that trickles a byte every few seconds is cut off at
  WEBHOOK_TIMEOUT in total, not per read.
* A bounded response. At most WEBHOOK_RESPONSE_BODY_LIMIT bytes of body are read; a longer
  body (or one whose end cannot be found within the limit) closes the connection.
* Keep-alive. Idle connections are kept per (scheme, addresses, port, host, proxy) and reused. Like
  urllib3, an idle connection is checked before reuse (readable means the receiver closed it:
  it is dropped) and a POST is never sent twice: urllib3 does not retry a POST by default. Only
  a request that could not be written at all goes again on a fresh connection; one written and
  then left unanswered is an attempt with a connection error, which the retry schedule owns.
* Strict framing. Status 100-599 only; chunk sizes are hex digits only; conflicting
  Content-Length values, headers over MAX_HEADER_BYTES and malformed chunks are a broken
  answer (the connection is closed, never reused). "Connection: keep-alive, close" closes.
  Bare-LF status and header lines are read, as most clients do. A body with neither length
  nor chunking runs to the close; if the deadline comes first, the status stands with a note.
  `_exchange` is fuzzed against h11 through a socket stand-in (tests/test_http_framing.py).

No redirects are followed (a 3xx is just the answer) and nothing is retried beyond that: the
task owns retrying.
"""

import base64
import email.utils
import functools
import itertools
import os
import re
import select
import socket
import ssl
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from django.conf import settings

from webhooks import urlsafety

VERSION = "0.1.0"
# Seed 004 names `Letta-Webhooks/1.0`; the product and its version follow it.
USER_AGENT = f"Letta-Webhooks/1.0 agent-webhooks/{VERSION}"
DNS_CACHE_SECONDS = 30.0
RESOLVER_THREADS = 16  # names whose DNS hangs can tie up this many lookups at once
MAX_HEADER_BYTES = 64 * 1024
_HEAD_END = re.compile(rb"\r?\n\r?\n")  # bare-LF answers are read as most clients read them
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,20}(?:;.*)?[ \t]*")  # hex digits only, as h11: int(x, 16) takes -2, 0x10
IDLE_SECONDS = 30.0  # close pooled connections idle longer than this (receivers close sooner)
MAX_TLS_CONTEXTS = 256  # one per client certificate in use (and one without)
# Bounds that hold however many distinct hosts a process POSTs to (callback URLs are many and
# mostly used once): idle connections across all targets, and names in the DNS cache.
MAX_IDLE_CONNECTIONS = 256
DNS_CACHE_SIZE = 4096


OUTCOME_CLASSES = ("2xx", "3xx", "4xx", "5xx", "timeout", "connection_error", "refused")


def outcome_class(status_code: int | None, error: str) -> str:
    """An attempt's outcome in one of OUTCOME_CLASSES: the status class, or why no answer
    came. It reads only what the attempt log keeps (status code, error text as written by
    `_post`), so metrics, stats and charts classify alike."""
    if status_code is not None:
        return f"{min(max(status_code // 100, 2), 5)}xx"  # a stray 1xx or 6xx counts with its neighbour
    if error.startswith("timeout"):
        return "timeout"
    if error.startswith("refused"):
        return "refused"
    return "connection_error"


@dataclass(slots=True)
class Response:
    status_code: int | None  # None when no HTTP answer came (timeout, refused, reset, refused URL)
    duration_ms: int
    body: str = ""  # the first WEBHOOK_RESPONSE_BODY_LIMIT bytes, decoded
    error: str = ""  # why there was no HTTP answer
    retry_after: float | None = None  # seconds, from a Retry-After header
    timed_out: bool = False
    refused: bool = False  # the URL is not allowed (urlsafety): retrying cannot help

    def __post_init__(self) -> None:
        # PostgreSQL text cannot hold NUL: one receiver answering "\0" would otherwise fail
        # the INSERT of its whole batch's attempt log.
        self.body = self.body.replace("\x00", "\ufffd")
        self.error = self.error.replace("\x00", "\ufffd")


class _Deadline(Exception):
    pass


class _Broken(Exception):
    """The connection failed; `answered` says whether any byte of a response had arrived."""

    def __init__(self, message: str, answered: bool):
        super().__init__(message)
        self.answered = answered


class _NotSent(_Broken):
    """The request could not be written: safe to send again on a fresh connection."""


class _Connection:
    __slots__ = ("sock", "buffer", "idle_since")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.idle_since = 0.0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Process:
    """Connection pool, TLS context and DNS cache of one process (made anew after a fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        # Targets in the order they last gave a connection back (dicts keep insertion order),
        # each target's connections oldest first: the oldest idle connection is at the front.
        self.idle: dict[tuple, list[_Connection]] = {}
        self.idle_count = 0
        self.next_sweep = 0.0
        # In insertion order, which with one lifetime for all is expiry order: the front
        # entry is the first to expire, and the one dropped when the cache is full.
        self.dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self.dns_lock = threading.Lock()
        # getaddrinfo cannot be interrupted: lookups run on a few threads of their own, and a
        # request waits for its answer only until its deadline. A hung resolver then ties up
        # these threads, not the delivery threads; one lookup per name is shared by all waiting.
        self.resolver = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="webhooks-dns")
        self.lookups: dict[tuple[str, int], Future] = {}
        # One TLS context per (CA bundle, client certificate): contexts are costly to make
        # (the system trust store is parsed each time) and hold session caches worth keeping.
        self.tls: dict[tuple, ssl.SSLContext] = {}

    def tls_context(self, client_cert: tuple[str, str] | None) -> ssl.SSLContext:
        key = (settings.WEBHOOK_CA_BUNDLE, client_cert)
        context = self.tls.get(key)
        if context is None:
            context = _tls_context(settings.WEBHOOK_CA_BUNDLE, client_cert)
            with self.lock:
                if len(self.tls) >= MAX_TLS_CONTEXTS:  # replaced certificates: start afresh
                    self.tls.clear()
                self.tls[key] = context
        return context

    def take(self, key: tuple) -> _Connection | None:
        now = time.monotonic()
        stale = []
        found = None
        with self.lock:
            idle = self.idle.get(key)
            while idle:
                conn = idle.pop()  # the newest: the likeliest to be still open
                self.idle_count -= 1
                if now - conn.idle_since < IDLE_SECONDS:
                    found = conn
                    break
                stale.append(conn)
            if idle is not None and not idle:
                del self.idle[key]
            stale += self._sweep(now)
        for conn in stale:
            conn.close()
        return found

    def give_back(self, key: tuple, conn: _Connection) -> None:
        now = conn.idle_since = time.monotonic()
        with self.lock:
            idle = self.idle.pop(key, [])
            self.idle[key] = idle  # to the back: the most recently used target
            if len(idle) < settings.WEBHOOK_HTTP_CONCURRENCY:
                idle.append(conn)
                self.idle_count += 1
                conn = None
            stale = self._sweep(now)
            while self.idle_count > MAX_IDLE_CONNECTIONS:  # the oldest of the least recent target
                oldest_key, oldest = next(iter(self.idle.items()))
                stale.append(oldest.pop(0))
                self.idle_count -= 1
                if not oldest:
                    del self.idle[oldest_key]
        if conn is not None:
            stale.append(conn)
        for conn in stale:
            conn.close()

    def _sweep(self, now: float) -> list[_Connection]:
        """Take out connections idle too long, of any target (also of hosts never POSTed to
        again); under `lock`. A full pass at most twice per IDLE_SECONDS, over at most
        MAX_IDLE_CONNECTIONS: amortised, a few steps per call."""
        if now < self.next_sweep:
            return []
        self.next_sweep = now + IDLE_SECONDS / 2
        stale = []
        for key in list(self.idle):
            idle = self.idle[key]
            fresh = [conn for conn in idle if now - conn.idle_since < IDLE_SECONDS]
            if len(fresh) < len(idle):
                stale += [conn for conn in idle if now - conn.idle_since >= IDLE_SECONDS]
                self.idle_count -= len(idle) - len(fresh)
                if fresh:
                    self.idle[key] = fresh
                else:
                    del self.idle[key]
        return stale


_state: _Process | None = None
_state_lock = threading.Lock()


def _process() -> _Process:
    global _state
    if _state is None or _state.pid != os.getpid():
        with _state_lock:
            if _state is None or _state.pid != os.getpid():
                _state = _Process()
    return _state


def _addresses(host: str, port: int, deadline: float) -> list[str]:
    state = _process()
    now = time.monotonic()
    cached = state.dns.get((host, port))
    if cached and cached[0] > now:
        return cached[1]
    if urlsafety.is_ip_literal(host):  # nothing to look up: never queued behind a slow name
        return urlsafety.resolve_public(host, port)
    with state.lock:
        lookup = state.lookups.get((host, port))
        if lookup is None or lookup.done():
            lookup = state.lookups[(host, port)] = state.resolver.submit(urlsafety.resolve_public, host, port)
            # Cached when it answers, even if every request waiting for it gave up: a
            # resolver slower than the connect timeout still gets the next request through.
            lookup.add_done_callback(lambda f, key=(host, port): _cache(state, key, f))
    try:
        return lookup.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        raise urlsafety.Unresolvable(f"{host} did not resolve in time") from None


def _cache(state: _Process, key: tuple[str, int], lookup: Future) -> None:
    # May run inside `state.lock` (a lookup already done when its callback is added): so no
    # `state.lock` here. A finished lookup is forgotten, or `lookups` would grow with every name.
    if state.lookups.get(key) is lookup:
        state.lookups.pop(key, None)
    if lookup.cancelled() or lookup.exception() is not None:
        return
    now = time.monotonic()
    with state.dns_lock:
        state.dns.pop(key, None)  # re-inserted at the back: expiry order stays insertion order
        state.dns[key] = (now + DNS_CACHE_SECONDS, lookup.result())
        while state.dns:
            oldest = next(iter(state.dns))
            if len(state.dns) <= DNS_CACHE_SIZE and state.dns[oldest][0] > now:
                break
            del state.dns[oldest]


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    connect_timeout: float,
    client_cert: tuple[str, str] | None = None,
) -> Response:
    """POST `body` to `url`; whatever happens, return a Response within `timeout` seconds.

    Never raises: a batch's outcomes are recorded together, so one odd answer must not cost
    the log of the others.
    """
    started = time.monotonic()
    try:
        return _post(url, body, headers, timeout, connect_timeout, started, client_cert)
    except Exception as exc:  # a parser case not foreseen: still an answerless attempt
        return Response(None, int((time.monotonic() - started) * 1000), error=f"{type(exc).__name__}: {exc}"[:500])


def _post(url, body, headers, timeout, connect_timeout, started, client_cert=None) -> Response:
    deadline = started + timeout

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        scheme, host, port = urlsafety.split_host_port(url)
        host = host.strip("[]")
        addresses = _addresses(host, port, min(deadline, started + connect_timeout))
    except urlsafety.Unresolvable as exc:
        return Response(None, elapsed_ms(), error=str(exc))
    except urlsafety.UnsafeURL as exc:
        return Response(None, elapsed_ms(), error=f"refused: {exc}", refused=True)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc if parts.netloc.isascii() else _idna(host) + (f":{parts.port}" if parts.port else "")
    try:
        request = _encode(quote(target, safe="/?&=%:@!$'()*+,;~-._"), host_header, headers, body)
    except UnicodeEncodeError as exc:  # sent as "?" it would be a different value: refuse, never mangle
        error = f"refused: a custom header is not Latin-1 ({exc.reason})"
        return Response(None, elapsed_ms(), error=error, refused=True)
    # A connection that presented a client certificate serves only requests presenting it.
    # Pooled per checked address set (in any order: round-robin DNS rotates it) and per proxy,
    # so through a proxy a kept-alive tunnel serves only its own target.
    key = (scheme, frozenset(addresses), port, host, client_cert, settings.WEBHOOK_PROXY_URL)
    state = _process()
    for reused in (True, False):
        conn = state.take(key) if reused else None
        if reused and conn is None:
            continue
        if reused and _closed_by_peer(conn):
            conn.close()  # the receiver closed it while idle (or sent what we never asked for)
            continue
        try:
            if conn is None:
                conn = _connect(
                    scheme, addresses, port, host, min(deadline, started + connect_timeout), state, client_cert
                )
            status, response_headers, excerpt, keep, note = _exchange(conn, request, deadline)
        except _Deadline:
            if conn:
                conn.close()
            return Response(None, elapsed_ms(), error=f"timeout after {timeout:g}s", timed_out=True)
        except _Broken as exc:
            conn.close()
            if reused and isinstance(exc, _NotSent):
                continue  # the POST was not written: once more on a fresh connection
            # Written but not answered: the receiver may have acted on it, so it is not sent
            # again here; the attempt is a connection error and the schedule decides.
            return Response(None, elapsed_ms(), error=str(exc) + (" (on a reused connection)" if reused else ""))
        except ssl.SSLError as exc:  # the handshake: a connection failure, retried like one
            if conn:
                conn.close()
            return Response(None, elapsed_ms(), error=_tls_error(exc))
        except OSError as exc:
            if conn:
                conn.close()
            return Response(None, elapsed_ms(), error=f"{type(exc).__name__}: {exc}")
        if keep:
            state.give_back(key, conn)
        else:
            conn.close()
        return Response(
            status,
            elapsed_ms(),
            body=excerpt,
            error=note,
            retry_after=_retry_after(response_headers.get("retry-after")),
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _idna(host: str) -> str:
    return host.encode("idna").decode("ascii")


def _encode(target: str, host_header: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}", f"Content-Length: {len(body)}"]
    lines += [
        f"{name}: {value}"
        for name, value in headers.items()
        # CR/LF would let a header value start a header (or a request) of its own.
        if name.lower() not in ("host", "content-length") and not any(c in f"{name}{value}" for c in "\r\n\0")
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _closed_by_peer(conn: _Connection) -> bool:
    """Whether an idle pooled connection is readable: EOF (the receiver closed it), a reset, or
    bytes nobody asked for. Checked before reuse, as urllib3 does, so a POST is not written
    into a connection that is already gone (and then never sent twice)."""
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return bool(poller.poll(0))


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Deadline()
    return left


class ProxyError(ConnectionError):
    """WEBHOOK_PROXY_URL did not open the tunnel (unreachable, or it answered CONNECT with a
    non-2xx status): a connection failure, retried like one."""


def _open(addresses: list[str], port: int, connect_deadline: float) -> socket.socket:
    """A TCP stream to the first of `addresses` (all checked by urlsafety) that answers, made
    directly or through a CONNECT tunnel of WEBHOOK_PROXY_URL.

    Tried in turn, IPv6 and IPv4 alternating (RFC 8305), each with a share of the time left
    and the last with all of it: a dead A or AAAA record costs its share, not every attempt.
    """
    proxy = _proxy(settings.WEBHOOK_PROXY_URL) if settings.WEBHOOK_PROXY_URL else None
    ordered = _interleaved(addresses)
    error: OSError | None = None
    for tried, address in enumerate(ordered):
        share_deadline = time.monotonic() + _remaining(connect_deadline) / (len(ordered) - tried)
        try:
            if proxy:
                return _tunnel(proxy, address, port, share_deadline)
            return socket.create_connection((address, port), timeout=_time_left(share_deadline))
        except OSError as exc:  # refused, unreachable, timed out, proxy refused: the next one
            error = exc
    if isinstance(error, TimeoutError):
        raise _Deadline()
    raise error


def _interleaved(addresses: list[str]) -> list[str]:
    """The resolver's order, but alternating families from its first, so a host whose IPv6 (or
    IPv4) is broken everywhere is reached at the second try."""
    v6 = [a for a in addresses if ":" in a]
    v4 = [a for a in addresses if ":" not in a]
    if not v6 or not v4:
        return addresses
    first, second = (v6, v4) if ":" in addresses[0] else (v4, v6)
    return [a for pair in itertools.zip_longest(first, second) for a in pair if a is not None]


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


@functools.lru_cache(maxsize=4)
def _proxy(url: str) -> tuple[str, int, str]:
    """(host, port, Proxy-Authorization header line or "") of WEBHOOK_PROXY_URL, which
    settings.py has checked."""
    parts = urlsplit(url)
    auth = ""
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode('ascii')}\r\n"
    return parts.hostname, parts.port, auth


def _tunnel(proxy: tuple[str, int, str], address: str, port: int, deadline: float) -> socket.socket:
    """A stream to `address`:`port` through the proxy's CONNECT. The tunnel goes to the checked
    IP, not the name: the proxy's own DNS could answer anything (the endpoint's Host header and
    TLS server name, sent inside the tunnel, are still the name). The proxy's address is the
    operator's and is not checked."""
    proxy_host, proxy_port, auth = proxy
    try:
        sock = socket.create_connection((proxy_host, proxy_port), timeout=_time_left(deadline))
    except TimeoutError:
        raise
    except OSError as exc:
        raise ProxyError(f"proxy {proxy_host}:{proxy_port} unreachable: {exc}") from None
    try:
        target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > MAX_HEADER_BYTES:
                raise ProxyError(f"proxy {proxy_host}:{proxy_port} answered CONNECT with over 64 KiB of headers")
            sock.settimeout(_time_left(deadline))
            data = sock.recv(65536)
            if not data:
                raise ProxyError(f"proxy {proxy_host}:{proxy_port} closed the connection before answering CONNECT")
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        version, _, status = status_line.partition(" ")
        code = status[:3]
        if not version.startswith("HTTP/1.") or not (code.isascii() and code.isdigit()):
            raise ProxyError(f"proxy {proxy_host}:{proxy_port} answered CONNECT with {status_line[:100]!r}")
        if not 200 <= int(code) < 300:
            raise ProxyError(f"proxy {proxy_host}:{proxy_port} refused CONNECT {target}: {status[:100]}")
        if rest:  # the target speaks first only after our request: these bytes are not its
            raise ProxyError(f"proxy {proxy_host}:{proxy_port} sent bytes after its CONNECT answer")
    except BaseException:
        sock.close()
        raise
    return sock


def _connect(scheme, addresses, port, host, connect_deadline, state, client_cert=None) -> _Connection:
    sock = _open(addresses, port, connect_deadline)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if scheme == "https":
        try:
            # The handshake is part of connecting: it gets the time left, not a fresh timeout.
            sock.settimeout(_remaining(connect_deadline))
            sock = state.tls_context(client_cert).wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            raise _Deadline() from None
        except (_Deadline, ssl.SSLError, OSError):
            sock.close()
            raise
    return _Connection(sock)


def _tls_context(ca_bundle: str, client_cert: tuple[str, str] | None) -> ssl.SSLContext:
    """The system trust store plus `ca_bundle` (WEBHOOK_CA_BUNDLE), TLS 1.2 at least, and the
    endpoint's client certificate and key (PEM) for mutual TLS."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    if client_cert:
        # load_cert_chain reads only files: a private one, gone as soon as it is loaded.
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as pem:
            pem.write(client_cert[0].strip() + "\n" + client_cert[1].strip() + "\n")
            pem.flush()
            context.load_cert_chain(pem.name)
    return context


def _tls_error(exc: ssl.SSLError) -> str:
    """What the attempt log says of a failed handshake: the certificate's fault named plainly."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate refused: {exc.verify_message or getattr(exc, 'reason', None) or exc}"[:500]
    return f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"[:500]


def _recv(conn: _Connection, deadline: float, answered: bool) -> bytes:
    conn.sock.settimeout(_remaining(deadline))
    try:
        data = conn.sock.recv(65536)
    except TimeoutError:
        raise _Deadline() from None
    except OSError as exc:
        raise _Broken(f"{type(exc).__name__}: {exc}", answered) from None
    if not data:
        raise _Broken(
            "connection closed by the receiver" + (" mid-answer" if answered else " before answering"), answered
        )
    return data


def _exchange(conn: _Connection, request: bytes, deadline: float) -> tuple[int, dict, str, bool, str]:
    """Send the request, read the answer; return (status, headers, body excerpt, keep-alive,
    a note for the attempt log: why the body is cut short, or "")."""
    conn.sock.settimeout(_remaining(deadline))
    try:
        conn.sock.sendall(request)
    except TimeoutError:
        raise _Deadline() from None
    except OSError as exc:
        raise _NotSent(f"{type(exc).__name__}: {exc}", False) from None
    while True:
        status, version, headers, rest = _read_head(conn, deadline)
        if not 100 <= status < 200:
            break
        conn.buffer = rest  # an interim answer (100 Continue): the real one follows
    limit = settings.WEBHOOK_RESPONSE_BODY_LIMIT
    # Connection is a comma-separated list of case-insensitive tokens: "keep-alive, close" closes.
    tokens = headers.get("connection", "").lower().split(",")
    keep = version == "HTTP/1.1" and "close" not in {t.strip() for t in tokens}
    note = ""
    if status in (204, 304):
        body, complete = b"", True
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body, complete = _read_chunked(conn, rest, limit, deadline)
    elif _is_number(headers.get("content-length", "")):
        body, complete = _read_length(conn, rest, int(headers["content-length"]), limit, deadline)
    else:  # the body runs to the end of the connection
        body, note = _read_to_close(conn, rest, limit, deadline)
        complete = False
    # Bytes beyond this answer mean the receiver and we disagree on framing: do not reuse.
    return status, headers, body.decode("utf-8", "replace"), keep and complete and not conn.buffer, note


def _read_head(conn: _Connection, deadline: float) -> tuple[int, str, dict, bytes]:
    """Status line and headers; returns (status, version, lower-cased headers, bytes after)."""
    data, conn.buffer = conn.buffer, b""
    while not (end := _HEAD_END.search(data)):
        if len(data) >= MAX_HEADER_BYTES:
            raise _Broken("response headers over 64 KiB", True)
        data += _recv(conn, deadline, bool(data))
    if end.end() > MAX_HEADER_BYTES:
        raise _Broken("response headers over 64 KiB", True)
    status, version, headers = parse_head(data[: end.start()])
    return status, version, headers, data[end.end() :]


def parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Status line and header lines (CRLF or bare LF, as most clients accept) of one answer:
    (status, version, lower-cased headers; repeated names joined with ", " as RFC 9110 allows).

    Raises _Broken for what is not an HTTP/1.x answer. A status outside 100-599 is refused
    like any other malformed status line: no HTTP status means what it would say, so the
    attempt is a connection error (retried on the schedule), not a 5xx that looks real.
    Conflicting Content-Length values are refused (RFC 9112 6.3): a receiver whose framing
    cannot be known cannot be read safely, let alone reused."""
    lines = head.decode("latin-1").split("\n")
    status_line = lines[0].removesuffix("\r")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if (
        len(version) != 8
        or not version.startswith("HTTP/1.")
        or not version[7].isdigit()
        or not (code.isascii() and code.isdigit() and 100 <= int(code) <= 599)
        or rest[3:4] not in ("", " ")
    ):
        raise _Broken(f"not an HTTP response: {status_line[:100]!r}", True)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    length = headers.get("content-length")
    if length is not None and "," in length and len({v.strip() for v in length.split(",")}) > 1:
        raise _Broken(f"conflicting Content-Length: {length[:100]!r}", True)
    elif length is not None and "," in length:
        headers["content-length"] = length.split(",")[0].strip()
    return int(code), version, headers


def _read_length(conn, data: bytes, length: int, limit: int, deadline: float) -> tuple[bytes, bool]:
    want = min(length, limit)
    while len(data) < want:
        data += _recv(conn, deadline, True)
    if length > limit:
        return data[:limit], False  # not worth draining: drop the connection
    conn.buffer = data[length:]
    return data[:length], True


def _read_chunked(conn, data: bytes, limit: int, deadline: float) -> tuple[bytes, bool]:
    body = b""
    while True:
        while b"\r\n" not in data:
            if len(data) > MAX_HEADER_BYTES:
                raise _Broken("malformed chunked body: no end to a chunk-size line", True)
            data += _recv(conn, deadline, True)
        size_line, _, data = data.partition(b"\r\n")
        if not _CHUNK_SIZE.fullmatch(size_line):  # a broken answer: _Broken closes the connection
            raise _Broken(f"malformed chunked body: chunk size {size_line[:40]!r}", True)
        size = int(size_line.partition(b";")[0], 16)
        if size == 0:
            while b"\r\n\r\n" not in b"\r\n" + data:  # trailers end with an empty line
                if len(data) > MAX_HEADER_BYTES:
                    raise _Broken("chunked trailers over 64 KiB", True)
                data += _recv(conn, deadline, True)
            conn.buffer = (b"\r\n" + data).partition(b"\r\n\r\n")[2]
            return body, True
        if len(body) + size > limit:
            return (body + data[:size])[:limit], False
        while len(data) < size + 2:
            data += _recv(conn, deadline, True)
        if data[size : size + 2] != b"\r\n":
            raise _Broken("malformed chunked body: a chunk longer than its size", True)
        body += data[:size]
        data = data[size + 2 :]


def _read_to_close(conn, data: bytes, limit: int, deadline: float) -> tuple[bytes, str]:
    """A body with neither Content-Length nor chunked runs to the close (RFC 9112 6.3). A
    receiver that keeps the connection open past the deadline has still answered: its status
    stands, with a note, rather than the attempt counting as a timeout."""
    while len(data) < limit:
        try:
            data += _recv(conn, deadline, True)
        except _Broken:
            break
        except _Deadline:
            return data, "body cut at the deadline: no Content-Length and the connection was left open"
    return data[:limit], ""


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # "²".isdigit() is True, int("²") fails


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if _is_number(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
