"""Hands committed work to the broker off the caller's thread: the one module that sends
messages (by task name, so it needs nothing above it).

A model save must not wait on, or fail with, the broker (seed 000: webhooks never slow or
break the agent). `submit_events` and `submit` only put ids on an in-process queue; one daemon
thread per process forwards them, many events to one message when they arrive together. If
the broker is unreachable the ids are dropped here with a warning: the rows are committed, and
the workers' due loops find them in the database (events after WEBHOOK_STRANDED_AFTER,
deliveries at once). The same holds if the process dies before the thread forwards them.
"""

import atexit
import logging
import os
import queue
import threading
import time

from celery import current_app
from django.conf import settings

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_queue: queue.SimpleQueue | None = None
_owner_pid: int | None = None
EVENTS, DELIVERIES, REPLAYS = "events", "deliveries", "replays"
TASKS = {
    EVENTS: "deliveries.tasks.deliver_events",
    DELIVERIES: "deliveries.tasks.deliver_batch",
    REPLAYS: "deliveries.tasks.replay_events",
}


def submit_events(event_ids: list[str]) -> None:
    """Queue published events for fan-out and first attempts. Returns at once."""
    _started().put((EVENTS, event_ids))


def submit(delivery_ids: list[int]) -> None:
    """Queue deliveries for an attempt now (those due and free when it comes). Returns at once."""
    _started().put((DELIVERIES, delivery_ids))


def submit_replays(replay_ids: list[int]) -> None:
    """Queue replays (deliveries/replay.py) for their next batches. Returns at once."""
    _started().put((REPLAYS, replay_ids))


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
    """Send what is queued, many ids to a message. After a send, the next waits until
    WEBHOOK_ENQUEUE_WINDOW has passed, gathering what comes meanwhile: an event that comes
    alone goes at once, and a process publishing 200 events a second sends a few dozen
    messages, not 200, each of which a worker would have to take (measured in the outage
    benchmark: with a message per event, the queue grew while the events themselves were long
    delivered, fanned out by tasks that took the waiting ones along)."""
    size = settings.WEBHOOK_BATCH_SIZE
    last_sent = 0.0
    while True:
        item = q.get()
        pause = last_sent + settings.WEBHOOK_ENQUEUE_WINDOW - time.monotonic()
        if pause > 0 and not isinstance(item, threading.Event):
            time.sleep(pause)
        pending: dict[str, list] = {EVENTS: [], DELIVERIES: [], REPLAYS: []}
        markers: list[threading.Event] = []
        while True:  # take whatever else is already waiting, up to a few messages' worth
            if isinstance(item, threading.Event):
                markers.append(item)
            else:
                pending[item[0]].extend(item[1])
            if sum(map(len, pending.values())) >= size * 4:
                break
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
        for kind, ids in pending.items():
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
                try:
                    current_app.send_task(TASKS[kind], (chunk,), retry=False)
                except Exception as exc:
                    logger.warning("broker unavailable (%s): %d %s wait for the due loop", exc, len(chunk), kind)
        if any(pending.values()):
            last_sent = time.monotonic()
        for marker in markers:
            marker.set()


atexit.register(flush, 2.0)
