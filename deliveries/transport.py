"""The one place that speaks HTTP: POST a body, report what happened, never raise.

A small HTTP/1.1 client on plain sockets rather than requests/urllib3: the benchmark showed
urllib3 + http.client spending ~400 µs of CPU per POST (two sends, an email-parser for the
headers), which on two cores is most of the budget for 1,000 deliveries a second. A webhook
POST needs little of HTTP: one request written in one `sendall`, a status line, a few
headers, and at most a few KiB of body. What it does need, this module does itself:

* Pinned addresses. The endpoint's host is resolved and checked by `urlsafety.resolve_public`
  before every POST (cached for DNS_CACHE_SECONDS) and the socket connects to that checked
  IP; the Host header and the TLS server name stay the endpoint's. DNS rebinding between the
  check and the connect cannot reach inside. The lookup counts against the connect deadline:
  a resolver that hangs costs a request its connect timeout, no more.
* A real deadline. Every socket operation gets the time left until the request's deadline as
  its timeout, so a receiver that trickles a byte every few seconds is cut off at
  WEBHOOK_TIMEOUT in total, not per read.
* A bounded response. At most WEBHOOK_RESPONSE_BODY_LIMIT bytes of body are read; a longer
  body (or one whose end cannot be found within the limit) closes the connection.
* Keep-alive. Idle connections are kept per (scheme, address, port, host) and reused; a
  reused connection that turns out to be closed before any byte of the answer is retried once
  on a fresh one (what browsers and urllib3 do for a stale keep-alive connection).

No redirects are followed (a 3xx is just the answer) and nothing is retried beyond that: the
task owns retrying.
"""

import email.utils
import os
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from django.conf import settings

from webhooks import urlsafety

VERSION = "0.1.0"
# Seed 004 names `Letta-Webhooks/1.0`; the product and its version follow it.
USER_AGENT = f"Letta-Webhooks/1.0 agent-webhooks/{VERSION}"
DNS_CACHE_SECONDS = 30.0
RESOLVER_THREADS = 16  # names whose DNS hangs can tie up this many lookups at once
MAX_HEADER_BYTES = 64 * 1024
IDLE_SECONDS = 30.0  # close pooled connections idle longer than this (receivers close sooner)


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
        self.idle: dict[tuple, list[_Connection]] = {}
        self.dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        # getaddrinfo cannot be interrupted: lookups run on a few threads of their own, and a
        # request waits for its answer only until its deadline. A hung resolver then ties up
        # these threads, not the delivery threads; one lookup per name is shared by all waiting.
        self.resolver = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="webhooks-dns")
        self.lookups: dict[tuple[str, int], Future] = {}
        self.tls = ssl.create_default_context()

    def take(self, key: tuple) -> _Connection | None:
        now = time.monotonic()
        with self.lock:
            idle = self.idle.get(key)
            while idle:
                conn = idle.pop()
                if now - conn.idle_since < IDLE_SECONDS:
                    return conn
                conn.close()
        return None

    def give_back(self, key: tuple, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        with self.lock:
            idle = self.idle.setdefault(key, [])
            if len(idle) < settings.WEBHOOK_HTTP_CONCURRENCY:
                idle.append(conn)
                return
        conn.close()


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
    if not lookup.cancelled() and lookup.exception() is None:
        state.dns[key] = (time.monotonic() + DNS_CACHE_SECONDS, lookup.result())


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, connect_timeout: float) -> Response:
    """POST `body` to `url`; whatever happens, return a Response within `timeout` seconds.

    Never raises: a batch's outcomes are recorded together, so one odd answer must not cost
    the log of the others.
    """
    started = time.monotonic()
    try:
        return _post(url, body, headers, timeout, connect_timeout, started)
    except Exception as exc:  # a parser case not foreseen: still an answerless attempt
        return Response(None, int((time.monotonic() - started) * 1000), error=f"{type(exc).__name__}: {exc}"[:500])


def _post(url, body, headers, timeout, connect_timeout, started) -> Response:
    deadline = started + timeout

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        scheme, host, port = urlsafety.split_host_port(url)
        host = host.strip("[]")
        address = _addresses(host, port, min(deadline, started + connect_timeout))[0]
    except urlsafety.Unresolvable as exc:
        return Response(None, elapsed_ms(), error=str(exc))
    except urlsafety.UnsafeURL as exc:
        return Response(None, elapsed_ms(), error=f"refused: {exc}", refused=True)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc if parts.netloc.isascii() else _idna(host) + (f":{parts.port}" if parts.port else "")
    request = _encode(quote(target, safe="/?&=%:@!$'()*+,;~-._"), host_header, headers, body)
    key = (scheme, address, port, host)
    state = _process()
    for reused in (True, False):
        conn = state.take(key) if reused else None
        if reused and conn is None:
            continue
        try:
            if conn is None:
                conn = _connect(scheme, address, port, host, min(deadline, started + connect_timeout), state)
            status, response_headers, excerpt, keep = _exchange(conn, request, deadline)
        except _Deadline:
            if conn:
                conn.close()
            return Response(None, elapsed_ms(), error=f"timeout after {timeout:g}s", timed_out=True)
        except _Broken as exc:
            conn.close()
            if reused and not exc.answered:
                continue  # a stale keep-alive connection: once more on a fresh one
            return Response(None, elapsed_ms(), error=str(exc))
        except OSError as exc:
            if conn:
                conn.close()
            return Response(None, elapsed_ms(), error=f"{type(exc).__name__}: {exc}")
        if keep:
            state.give_back(key, conn)
        else:
            conn.close()
        return Response(
            status, elapsed_ms(), body=excerpt, retry_after=_retry_after(response_headers.get("retry-after"))
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
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Deadline()
    return left


def _connect(scheme, address, port, host, connect_deadline, state) -> _Connection:
    try:
        sock = socket.create_connection((address, port), timeout=_remaining(connect_deadline))
    except TimeoutError:
        raise _Deadline() from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if scheme == "https":
        try:
            sock = state.tls.wrap_socket(sock, server_hostname=host)
        except (ssl.SSLError, OSError):
            sock.close()
            raise
    return _Connection(sock)


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


def _exchange(conn: _Connection, request: bytes, deadline: float) -> tuple[int, dict, str, bool]:
    """Send the request, read the answer; return (status, headers, body excerpt, keep-alive)."""
    conn.sock.settimeout(_remaining(deadline))
    try:
        conn.sock.sendall(request)
    except TimeoutError:
        raise _Deadline() from None
    except OSError as exc:
        raise _Broken(f"{type(exc).__name__}: {exc}", False) from None
    while True:
        status, version, headers, rest = _read_head(conn, deadline)
        if not 100 <= status < 200:
            break
        conn.buffer = rest  # an interim answer (100 Continue): the real one follows
    limit = settings.WEBHOOK_RESPONSE_BODY_LIMIT
    keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
    if status in (204, 304):
        body, complete = b"", True
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body, complete = _read_chunked(conn, rest, limit, deadline)
    elif _is_number(headers.get("content-length", "")):
        body, complete = _read_length(conn, rest, int(headers["content-length"]), limit, deadline)
    else:  # the body runs to the end of the connection
        body, complete = _read_to_close(conn, rest, limit, deadline), False
    # Bytes beyond this answer mean the receiver and we disagree on framing: do not reuse.
    return status, headers, body.decode("utf-8", "replace"), keep and complete and not conn.buffer


def _read_head(conn: _Connection, deadline: float) -> tuple[int, str, dict, bytes]:
    """Status line and headers; returns (status, version, lower-cased headers, bytes after)."""
    data, conn.buffer = conn.buffer, b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEADER_BYTES:
            raise _Broken("response headers over 64 KiB", True)
        data += _recv(conn, deadline, bool(data))
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        version, code, *_ = lines[0].split(" ", 2)
        status = int(code)
        if not version.startswith("HTTP/1.") or not 100 <= status <= 999:
            raise ValueError
    except ValueError:
        raise _Broken(f"not an HTTP response: {lines[0][:100]!r}", True) from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, version, headers, rest


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
            data += _recv(conn, deadline, True)
        size_line, _, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise _Broken("malformed chunked body", True) from None
        if size == 0:
            while b"\r\n\r\n" not in b"\r\n" + data:  # trailers end with an empty line
                data += _recv(conn, deadline, True)
            conn.buffer = (b"\r\n" + data).partition(b"\r\n\r\n")[2]
            return body, True
        if len(body) + size > limit:
            return (body + data[:size])[:limit], False
        while len(data) < size + 2:
            data += _recv(conn, deadline, True)
        body += data[:size]
        data = data[size + 2 :]


def _read_to_close(conn, data: bytes, limit: int, deadline: float) -> bytes:
    while len(data) < limit:
        try:
            data += _recv(conn, deadline, True)
        except _Broken:
            break
    return data[:limit]


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
