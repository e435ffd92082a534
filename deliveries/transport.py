"""The one place that speaks HTTP: POST a body, report what happened, never raise.

urllib3 (requests' core) directly: one pooled, keep-alive connection set per worker process
shared by its delivery threads, no redirects followed, no automatic retries (the task owns
retrying), a connect timeout and an overall deadline, and at most a few KiB of the response
read and kept.
"""

import email.utils
import os
import threading
import time
from dataclasses import dataclass

import urllib3
from django.conf import settings

VERSION = "0.1.0"
# Seed 004 names `Letta-Webhooks/1.0`; the product and its version follow it.
USER_AGENT = f"Letta-Webhooks/1.0 agent-webhooks/{VERSION}"

_lock = threading.Lock()
_pool: urllib3.PoolManager | None = None
_pool_pid: int | None = None


@dataclass(slots=True)
class Response:
    status_code: int | None  # None when no HTTP answer came (timeout, refused, reset...)
    duration_ms: int
    body: str = ""  # the first WEBHOOK_RESPONSE_BODY_LIMIT bytes, decoded
    error: str = ""  # why there was no HTTP answer
    retry_after: float | None = None  # seconds, from a Retry-After header
    timed_out: bool = False


def pool() -> urllib3.PoolManager:
    """The process's connection pool (recreated after a fork: sockets must not be shared)."""
    global _pool, _pool_pid
    if _pool_pid != os.getpid():
        with _lock:
            if _pool_pid != os.getpid():
                _pool = urllib3.PoolManager(
                    num_pools=512, maxsize=settings.WEBHOOK_HTTP_CONCURRENCY, block=False, retries=False
                )
                _pool_pid = os.getpid()
    return _pool


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, connect_timeout: float) -> Response:
    started = time.monotonic()
    deadline = started + timeout

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        resp = pool().urlopen(
            "POST",
            url,
            body=body,
            headers=headers,
            redirect=False,
            retries=False,
            preload_content=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=timeout),
        )
    except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        return Response(None, elapsed_ms(), error=f"timeout: {_reason(exc)}", timed_out=True)
    except Exception as exc:
        return Response(None, elapsed_ms(), error=f"{type(exc).__name__}: {_reason(exc)}")
    try:
        excerpt = _read_excerpt(resp, settings.WEBHOOK_RESPONSE_BODY_LIMIT, deadline)
    except Exception:
        # The status line and headers arrived: that is the answer; a body that stalls or
        # breaks only loses its excerpt.
        excerpt = ""
        resp.close()
    finally:
        resp.release_conn()
    return Response(resp.status, elapsed_ms(), body=excerpt, retry_after=_retry_after(resp.headers.get("Retry-After")))


def _read_excerpt(resp, limit: int, deadline: float) -> str:
    """Read up to `limit` bytes; keep the connection only if the body ended within them."""
    chunks, size = [], 0
    while size < limit:
        if time.monotonic() > deadline:
            raise TimeoutError("response body too slow")
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
