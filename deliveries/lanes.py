"""Slow receivers get a lane of their own, so they cannot hold everyone else up.

A batch waits for its POSTs and then records them in one transaction. Waiting for all of them
would let one receiver that answers in 3 s (or never) stall every batch it appears in, and
with them every other endpoint. So a batch waits for a request only until it has run for
WEBHOOK_STRAGGLER_AFTER seconds. A request still running then (a "straggler") finishes on
its thread, and this process's recorder thread writes its attempt when it does.

Its target (an endpoint, or the URL of a seed target) is then slow in this process: later
deliveries to it skip the batches and go straight to the slow lane, at most
WEBHOOK_ENDPOINT_CONCURRENCY at a time per target and WEBHOOK_HTTP_CONCURRENCY in all. The
rest are deferred: lease released, left pending and due. The recorder pulls them back from
the database, oldest first, as the target's requests finish: one query per freed slot, not
a retry loop, so a growing backlog costs nothing while it waits. A target leaves the lane
when one of its requests comes back within the limit again.

Nothing is lost to a crash. A straggler keeps its lease until the longest possible attempt
is over, and a deferred delivery is due; if this process dies, the due loop sends either one
again (at least once).
"""

import datetime
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections

from . import transport

logger = logging.getLogger(__name__)

Target = tuple[str, object]  # (delivery kind, endpoint id or URL)
MAX_SLOW_TARGETS = 10_000


@dataclass(slots=True, eq=False)
class Job:
    """One POST of one claimed delivery, from request to response."""

    delivery: object  # a Delivery holding this worker's lease
    request: object  # compose.Request
    started: datetime.datetime  # the attempt's started_at
    response: transport.Response | None = None
    began: float = 0.0  # time.monotonic() when a thread took it up; 0 while queued
    target: Target = field(default=("", None))


def target_of(delivery) -> Target:
    return (delivery.kind, delivery.endpoint_id or delivery.url)


class Lane:
    """The HTTP threads of one process and what it knows about its slow targets.

    The lane moves requests; the rows are the pipeline's. It gives the lane three functions:
    `record(jobs)` writes finished attempts, `claim(target, limit)` leases up to `limit` due
    deliveries to a target and returns (how many were found, the jobs to send now), and
    `release(jobs)` gives jobs the lane could not start back to the database, due."""

    def __init__(self, record, claim, release):
        self.record, self.claim, self.release = record, claim, release
        threads = settings.WEBHOOK_HTTP_CONCURRENCY
        # Twice the threads: requests that straggle keep theirs until they end, and must not
        # take the batches' capacity with them.
        self.batch_pool = ThreadPoolExecutor(2 * threads, thread_name_prefix="webhooks-post")
        self.slow_pool = ThreadPoolExecutor(threads, thread_name_prefix="webhooks-slow")
        self.lock = threading.Lock()
        self.slow: set[Target] = set()
        self.in_flight: dict[Target, int] = {}  # slow-lane requests running, per target
        self.total = 0
        # Targets with deliveries this process deferred, and a counter bumped on each
        # deferral, so the recorder never forgets one that was deferred while it looked.
        self.waiting: dict[Target, int] = {}
        self.finished: queue.SimpleQueue = queue.SimpleQueue()
        self.unrecorded = 0  # requests started here whose attempts are not yet written
        self.closing = False  # shutting down: record what finishes, start nothing new
        threading.Thread(target=self._record_forever, name="webhooks-recorder", daemon=True).start()

    # --- called by a task --------------------------------------------------------------
    def send(self, jobs: list[Job]) -> tuple[list[Job], list[Job]]:
        """POST the jobs; return (finished, deferred). The rest are stragglers or went to the
        slow lane: the recorder writes their attempts when they finish."""
        batch, deferred = [], []
        with self.lock:
            for job in jobs:
                job.target = target_of(job.delivery)
                if job.target not in self.slow and job.target not in self.waiting:
                    batch.append(job)
                elif not self._start_slow(job):
                    deferred.append(job)
        futures = {self.batch_pool.submit(self._post, job): job for job in _interleaved(batch)}
        limit = settings.WEBHOOK_STRAGGLER_AFTER
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=limit / 4)
            now = time.monotonic()
            straggling = {futures[f].target for f in pending if futures[f].began and now - futures[f].began >= limit}
            for future in [f for f in pending if not futures[f].began and futures[f].target in straggling]:
                if future.cancel():  # not started, and its target is slow: it waits in the database
                    pending.discard(future)
                    deferred.append(futures.pop(future))
            if pending and all(futures[f].began and now - futures[f].began >= limit for f in pending):
                break
        for future in pending:
            job = futures[future]
            with self.lock:
                if len(self.slow) >= MAX_SLOW_TARGETS:  # callback URLs are many: stay bounded
                    self.slow.clear()
                self.slow.add(job.target)
                self._count(job.target, +1)
                self.unrecorded += 1
            future.add_done_callback(lambda _f, job=job: self._done(job))
        if pending:
            logger.info("%d requests still running after %ss go on in the slow lane", len(pending), limit)
        return [futures[f] for f in futures if f not in pending], deferred

    def deferred(self, jobs: list[Job]) -> None:
        """Note that these jobs' deliveries were released in the database, for the recorder."""
        with self.lock:
            for job in jobs:
                self.waiting[job.target] = self.waiting.get(job.target, 0) + 1
        self.finished.put(None)  # wake the recorder: a slot may already be free

    # --- the slow lane -----------------------------------------------------------------
    def _start_slow(self, job: Job) -> bool:
        """Send `job` in the slow lane if its target and the lane have room (lock held)."""
        if self.in_flight.get(job.target, 0) >= settings.WEBHOOK_ENDPOINT_CONCURRENCY:
            return False
        if self.total >= settings.WEBHOOK_HTTP_CONCURRENCY:
            return False
        self._count(job.target, +1)
        self.unrecorded += 1
        # Not add_done_callback: it runs `_done` at once, here, if the request has already
        # finished, and `_done` takes the lock our caller holds (a deadlock of the process).
        self.slow_pool.submit(self._post_then_done, job)
        return True

    def _post_then_done(self, job: Job) -> None:
        try:
            self._post(job)
        finally:
            self._done(job)

    def _count(self, target: Target, delta: int) -> None:
        self.in_flight[target] = self.in_flight.get(target, 0) + delta
        self.total += delta
        if not self.in_flight[target]:
            del self.in_flight[target]

    def _post(self, job: Job) -> None:
        job.began = time.monotonic()
        r = job.request
        if r.error:
            job.response = transport.Response(None, 0, error=r.error)
            return
        # Never raises (transport.post turns any failure into an answerless Response).
        job.response = transport.post(
            r.url,
            r.body,
            r.headers,
            timeout=r.timeout,
            connect_timeout=settings.WEBHOOK_CONNECT_TIMEOUT,
            client_cert=r.client_cert,
        )

    def _done(self, job: Job) -> None:
        with self.lock:
            self._count(job.target, -1)
            if job.response is not None and time.monotonic() - job.began < settings.WEBHOOK_STRAGGLER_AFTER:
                self.slow.discard(job.target)  # fast again: back to the batches
        self.finished.put(job)

    # --- the recorder thread -----------------------------------------------------------
    def _record_forever(self) -> None:
        while True:
            jobs = [self.finished.get()]
            while len(jobs) < 500:
                try:
                    jobs.append(self.finished.get_nowait())
                except queue.Empty:
                    break
            jobs = [j for j in jobs if j is not None]
            try:
                close_old_connections()  # this thread's connection may have been dropped
                if jobs:
                    self.record(jobs)
                if not self.closing:
                    self._refill()
            except Exception:
                # The deliveries stay leased or due: the due loop sends them again.
                logger.exception("slow lane: could not record %d attempts", len(jobs))
            finally:
                with self.lock:
                    self.unrecorded -= len(jobs)

    def _refill(self) -> None:
        """Pull deferred deliveries back into the slow lane, as far as there is room."""
        with self.lock:
            budget = self._free()
            room = {t: settings.WEBHOOK_ENDPOINT_CONCURRENCY - self.in_flight.get(t, 0) for t in self.waiting}
        for target, wanted in room.items():
            wanted = min(wanted, budget)
            if wanted <= 0:
                continue
            with self.lock:
                seen = self.waiting.get(target)
            found, jobs = self.claim(target, wanted)
            budget -= found
            unsent = []
            with self.lock:
                if found < wanted and self.waiting.get(target) == seen:
                    del self.waiting[target]  # none left (and none deferred since we looked)
                for job in jobs:
                    job.target = target
                    if not self._start_slow(job):  # the lane filled meanwhile
                        unsent.append(job)
            if unsent:
                self.release(unsent)
                self.deferred(unsent)

    def _free(self) -> int:
        return settings.WEBHOOK_HTTP_CONCURRENCY - self.total

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the requests in flight to finish and be recorded
        (a worker shutting down calls this); say whether they all were. Deferred deliveries
        are not waited for: they are in the database, due."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                idle = self.unrecorded == 0
            if idle:
                return True
            time.sleep(0.05)
        return False


def _interleaved(jobs: list[Job]) -> list[Job]:
    """One job per target in turn, so a batch's many requests to one target (perhaps a slow
    one) do not take every thread before the others start."""
    by_target: dict[Target, list[Job]] = {}
    for job in jobs:
        by_target.setdefault(job.target, []).append(job)
    if len(by_target) <= 1:
        return jobs
    queues = list(by_target.values())
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


_lane: Lane | None = None
_lane_pid: int | None = None
_lane_lock = threading.Lock()


def drain(timeout: float) -> bool:
    """Let this process's slow lane finish before it exits (nothing to do if it has none)."""
    if _lane is None or _lane_pid != os.getpid():
        return True
    _lane.closing = True
    return _lane.drain(timeout)


def current(make) -> Lane:
    """This process's lane, made by `make()` on first use (threads do not survive a fork: a
    child makes its own)."""
    global _lane, _lane_pid
    if _lane_pid != os.getpid():
        with _lane_lock:
            if _lane_pid != os.getpid():
                _lane = make()
                _lane_pid = os.getpid()
    return _lane
