"""Hands committed deliveries to the broker off the caller's thread.

A model save must not wait on, or fail with, the broker (seed 000: webhooks never slow or
break the agent). `submit` only puts ids on an in-process queue; one daemon thread per
process forwards them, several events' deliveries to one message when they arrive
together. If the broker is unreachable the ids are dropped here with a warning: the rows
are committed and pending, and the sweeper re-enqueues them once the broker is back. The
same holds if the process dies before the thread forwards them.
"""

import atexit
import logging
import os
import queue
import threading

from django.conf import settings

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_queue: queue.SimpleQueue | None = None
_owner_pid: int | None = None


def submit(delivery_ids: list[int]) -> None:
    """Queue deliveries for their first attempt. Returns at once."""
    _started().put(delivery_ids)


def flush(timeout: float = 5.0) -> bool:
    """Wait until everything submitted so far has been handed to the broker (or dropped)."""
    if _owner_pid != os.getpid():
        return True
    done = threading.Event()
    _started().put(done)
    return done.wait(timeout)


def _started() -> queue.SimpleQueue:
    global _queue, _owner_pid
    if _owner_pid != os.getpid():  # first use, or first use after a fork
        with _lock:
            if _owner_pid != os.getpid():
                q: queue.SimpleQueue = queue.SimpleQueue()
                threading.Thread(target=_forward, args=(q,), name="webhooks-enqueue", daemon=True).start()
                _queue, _owner_pid = q, os.getpid()
    return _queue


def _forward(q: queue.SimpleQueue) -> None:
    from .tasks import deliver_batch

    size = settings.WEBHOOK_BATCH_SIZE
    while True:
        item = q.get()
        ids: list[int] = []
        markers: list[threading.Event] = []
        while True:
            if isinstance(item, threading.Event):
                markers.append(item)
            else:
                ids.extend(item)
            if len(ids) >= size * 4:
                break
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            try:
                deliver_batch.apply_async((chunk,), retry=False)
            except Exception as exc:
                logger.warning("broker unavailable (%s): %d deliveries stay pending for the sweeper", exc, len(chunk))
        for marker in markers:
            marker.set()


atexit.register(flush, 2.0)
