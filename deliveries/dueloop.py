"""The due loop: each worker process sends what the database says is due.

Retries wait on their rows (`next_attempt_at`, indexed), not in the broker, so a wait of ten
hours costs nothing anywhere, survives a worker restart and a broker that lost everything, and
the time the API shows is the time of the attempt. One thread per worker process claims what
is due, oldest first, a batch at a time (SKIP LOCKED, so the processes share the work), and
sends it through the same path as first attempts (`pipeline`). With a backlog it goes from
batch to batch without pausing; otherwise it sleeps until the next delivery comes due, or
WEBHOOK_DUE_POLL_INTERVAL, whichever is sooner.

Fresh events come first. Their first attempts arrive as task messages, and tasks and the loop
take turns in the process, tasks first (`Turns`): in an outage a retry wave fills the time
between the healthy endpoints' events instead of holding them up (bench/ours.py outage).

What is due includes more than retries: deliveries whose worker died (their lease ran out),
deliveries a message named but never reached (broker down), events never fanned out (the
broker was down when they were published: after WEBHOOK_STRANDED_AFTER), and deliveries
waiting for their rate-limit slot; now and then, a replay whose worker died (deliveries/replay.py).
It needs only the database: while the broker is away,
this loop keeps delivering.
"""

import logging
import os
import socket
import threading
import time

from django.conf import settings
from django.db import close_old_connections

from . import fanout, ordering, pipeline, recovery, replay, store
from .models import Heartbeat

logger = logging.getLogger(__name__)

RELEASE_HELD_EVERY = 30.0  # seconds
BACKOFF_MAX = 30.0  # seconds between tries while the database is unreachable


class Turns:
    """Tasks and the due loop take turns in a worker process, tasks first.

    Run side by side in one process, a task and a batch of retries share one interpreter lock,
    and the task, which waits on the database a dozen times, waits for the lock after each:
    measured in the outage benchmark, single-event tasks fell below the rate their messages
    came in, and fresh events waited seconds. So a batch starts only when no task runs or waits
    here (or after WEBHOOK_DUE_YIELD_MAX seconds, so retries always move), and a task that
    arrives during a batch starts when it ends (a batch is one claim and a round of POSTs).
    Tasks never wait for each other: a pool of threads runs as many at once as it has."""

    def __init__(self):
        self.cond = threading.Condition()
        self.running = 0  # tasks running here
        self.waiting = 0  # tasks waiting for a batch to end
        self.batch = False

    def task_started(self) -> None:
        with self.cond:
            self.waiting += 1
            self.cond.wait_for(lambda: not self.batch)
            self.waiting -= 1
            self.running += 1

    def task_finished(self) -> None:
        with self.cond:
            self.running = max(0, self.running - 1)
            self.cond.notify_all()

    def begin_batch(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: not self.running and not self.waiting, timeout)
            self.batch = True

    def end_batch(self) -> None:
        with self.cond:
            self.batch = False
            self.cond.notify_all()


turns = Turns()


class DueLoop:
    def __init__(self):
        self.stopping = threading.Event()
        self.idle = threading.Event()  # set between batches: a shutdown need not wait
        self.released_at = 0.0
        self.heartbeat_name = f"worker:{socket.gethostname()}:{os.getpid()}"
        self.heartbeat_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="webhooks-due", daemon=True)

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                self.idle.clear()
                close_old_connections()  # a connection the database dropped is replaced
                busy = self._once()
            except Exception as exc:
                failures += 1
                if failures == 1:
                    logger.exception("due loop: could not look for due deliveries; trying again with a growing pause")
                else:
                    logger.warning("due loop: still failing (%d tries): %s", failures, exc)
                busy = False
            else:
                if failures:
                    logger.warning("due loop: working again after %d failed tries", failures)
                failures = 0
                self._heartbeat()
            finally:
                self.idle.set()
            if busy or self.stopping.is_set():
                continue
            if failures:
                pause = min(BACKOFF_MAX, 2.0 ** (failures - 1))
                self.stopping.wait(pause)
                continue
            self._sleep()

    def _once(self) -> bool:
        """Send one batch of what is due; say whether there may be more. Every
        RELEASE_HELD_EVERY seconds, first the housekeeping (`_housekeeping`), busy or not."""
        housekept = False
        if time.monotonic() - self.released_at > RELEASE_HELD_EVERY:
            self.released_at = time.monotonic()
            housekept = self._housekeeping()
        batch = settings.WEBHOOK_BATCH_SIZE
        turns.begin_batch(settings.WEBHOOK_DUE_YIELD_MAX)
        try:
            if pipeline.deliver_due(batch) >= batch:
                return True
            stranded = fanout.fan_out_stranded()
            if stranded:
                pipeline.send_claimed(stranded, follow_runs=False)
                return True
        finally:
            turns.end_batch()
        return housekept

    @staticmethod
    def _housekeeping() -> bool:
        """Backstops, each a cheap query when there is nothing to do: deliveries held for an
        endpoint enabled meanwhile, ordered deliveries left waiting, replays that stopped
        moving. Say whether any found work."""
        found = recovery.release_held()
        found = ordering.settle_stale() or found
        return replay.resume_stalled() or found

    def _heartbeat(self) -> None:
        """Say this process's loop works (a row the readiness probe reads): written after a
        pass that succeeded, at most every WEBHOOK_HEARTBEAT_INTERVAL seconds, so it costs one
        small UPSERT per interval. Never raises: a failed write leaves the row to age, which
        is what the probe is for."""
        now = time.monotonic()
        if self.heartbeat_at is not None and now - self.heartbeat_at < settings.WEBHOOK_HEARTBEAT_INTERVAL:
            return
        first, self.heartbeat_at = self.heartbeat_at is None, now
        try:
            Heartbeat.record(self.heartbeat_name, prune=first)
        except Exception as exc:
            logger.warning("due loop: could not write its heartbeat: %s", exc)

    def _sleep(self) -> None:
        until = time.time() + settings.WEBHOOK_DUE_POLL_INTERVAL
        try:
            due = store.next_due_at()
        except Exception:
            due = None  # the next pass finds the database away, and says so
        if due is not None:
            until = min(until, due.timestamp())
        pipeline.alarm.sleep(until)

    def stop(self, timeout: float) -> bool:
        """Stop after the batch in hand (a warm shutdown); say whether it ended in time."""
        self.stopping.set()
        pipeline.alarm.ring_at(0)
        return self.idle.wait(timeout)


_loop: DueLoop | None = None
_loop_pid: int | None = None
_lock = threading.Lock()


def start() -> None:
    """Run the due loop in this process (once; a forked child starts its own)."""
    global _loop, _loop_pid
    with _lock:
        if _loop_pid == os.getpid():
            return
        _loop, _loop_pid = DueLoop(), os.getpid()
        _loop.thread.start()
    logger.info("due loop started (pid %d)", os.getpid())


def stop(timeout: float) -> bool:
    """Stop this process's due loop, letting the batch in hand finish; say whether it did."""
    if _loop is None or _loop_pid != os.getpid():
        return True
    return _loop.stop(timeout)
