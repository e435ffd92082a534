"""The one place that speaks HTTP: POST a body, report what happened, never raise.

urllib3 (requests' core) directly, because the hot path needs three things requests hides:

* Pinned addresses. The endpoint's host is resolved and checked by `urlsafety.resolve_public`
  before every POST, and the connection goes to that checked IP (Host header and TLS name
  stay the endpoint's), so DNS rebinding between check and connect cannot reach inside.
* A real deadline. A read timeout bounds each socket read, not the request: a receiver that
  trickles a byte every few seconds would hold a worker thread forever. A watchdog thread
  shuts the socket down when WEBHOOK_TIMEOUT has passed, whatever phase the request is in.
* A bounded response. At most WEBHOOK_RESPONSE_BODY_LIMIT bytes are read; a larger body
  closes the connection instead of being drained.

One keep-alive pool per (address, host) per process, shared by the delivery threads; no
redirects followed; no automatic retries (the task owns retrying).
"""

import email.utils
import heapq
import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from django.conf import settings
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from webhooks import urlsafety

VERSION = "0.1.0"
# Seed 004 names `Letta-Webhooks/1.0`; the product and its version follow it.
USER_AGENT = f"Letta-Webhooks/1.0 agent-webhooks/{VERSION}"
DNS_CACHE_SECONDS = 30.0


@dataclass(slots=True)
class Response:
    status_code: int | None  # None when no HTTP answer came (timeout, refused, reset, refused URL)
    duration_ms: int
    body: str = ""  # the first WEBHOOK_RESPONSE_BODY_LIMIT bytes, decoded
    error: str = ""  # why there was no HTTP answer
    retry_after: float | None = None  # seconds, from a Retry-After header
    timed_out: bool = False
    refused: bool = False  # the URL is not allowed (urlsafety): retrying cannot help


# --- deadline watchdog ------------------------------------------------------------------------


class _Watchdog:
    """Shuts down the sockets of requests that outlive their deadline (one thread per process)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, HTTPConnection]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._wake = threading.Condition()
        threading.Thread(target=self._run, name="webhooks-deadline", daemon=True).start()

    def watch(self, deadline: float, conn: HTTPConnection) -> int:
        token = next(self._ids)
        with self._wake:
            heapq.heappush(self._heap, (deadline, token, conn))
            self._live.add(token)
            if self._heap[0][1] == token:
                self._wake.notify()
        return token

    def cancel(self, token: int) -> None:
        with self._wake:
            self._live.discard(token)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # finished in time
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, token, conn = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(token)
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


_local = threading.local()


class _DeadlineMixin:
    """Connection that puts itself under the watchdog when it sends a request."""

    def request(self, *args, **kwargs):
        _local.token = _process().watchdog.watch(_local.deadline, self)
        return super().request(*args, **kwargs)


class _HTTPConnection(_DeadlineMixin, HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


# --- per-process state ------------------------------------------------------------------------


class _Process:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pools = urllib3.PoolManager(
            num_pools=1024, maxsize=settings.WEBHOOK_HTTP_CONCURRENCY, block=False, retries=False
        )
        self.pools.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self.watchdog = _Watchdog()
        self.dns: dict[tuple[str, int], tuple[float, list[str]]] = {}


_state: _Process | None = None
_state_lock = threading.Lock()


def _process() -> _Process:
    """Pools, watchdog and DNS cache of this process (made anew after a fork: sockets and
    threads do not survive one)."""
    global _state
    if _state is None or _state.pid != os.getpid():
        with _state_lock:
            if _state is None or _state.pid != os.getpid():
                _state = _Process()
    return _state


def _addresses(host: str, port: int) -> list[str]:
    state = _process()
    now = time.monotonic()
    cached = state.dns.get((host, port))
    if cached and cached[0] > now:
        return cached[1]
    addresses = urlsafety.resolve_public(host, port)
    state.dns[(host, port)] = (now + DNS_CACHE_SECONDS, addresses)
    return addresses


# --- the POST ---------------------------------------------------------------------------------


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, connect_timeout: float) -> Response:
    started = time.monotonic()
    _local.deadline = started + timeout
    _local.token = None

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        scheme, host, port = urlsafety.split_host_port(url)
        address = _addresses(host.strip("[]"), port)[0]
    except urlsafety.Unresolvable as exc:
        return Response(None, elapsed_ms(), error=str(exc))
    except urlsafety.UnsafeURL as exc:
        return Response(None, elapsed_ms(), error=f"refused: {exc}", refused=True)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    pool_kwargs = (
        {"server_hostname": host.strip("[]"), "assert_hostname": host.strip("[]")} if scheme == "https" else {}
    )
    try:
        pool = _process().pools.connection_from_host(address, port, scheme, pool_kwargs=pool_kwargs)
        resp = pool.urlopen(
            "POST",
            path,
            body=body,
            headers={**headers, "Host": parts.netloc},
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
            timeout=urllib3.Timeout(connect=min(connect_timeout, timeout), read=timeout),
        )
    except Exception as exc:
        _release_watch()
        if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError) or time.monotonic() >= _local.deadline:
            return Response(None, elapsed_ms(), error=f"timeout after {timeout:g}s: {_reason(exc)}", timed_out=True)
        return Response(None, elapsed_ms(), error=f"{type(exc).__name__}: {_reason(exc)}")
    try:
        excerpt = _read_excerpt(resp, settings.WEBHOOK_RESPONSE_BODY_LIMIT)
    except Exception:
        # The status line and headers arrived: that is the answer; a body that stalls or
        # breaks only loses its excerpt (and the connection).
        excerpt = ""
        resp.close()
    finally:
        _release_watch()
        resp.release_conn()
    return Response(resp.status, elapsed_ms(), body=excerpt, retry_after=_retry_after(resp.headers.get("Retry-After")))


def _release_watch() -> None:
    if _local.token is not None:
        _process().watchdog.cancel(_local.token)
        _local.token = None


def _read_excerpt(resp, limit: int) -> str:
    """Read up to `limit` bytes; keep the connection only if the body ended within them."""
    chunks, size = [], 0
    while size < limit:
        chunk = resp.read1(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    else:
        # More body than we keep: close rather than drain megabytes to reuse the socket.
        resp.close()
    return b"".join(chunks).decode("utf-8", "replace")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason)[:500]
