"""Sending: claimed deliveries in, POSTs made concurrently, outcomes recorded.

Every attempt takes this path, in batches: first attempts (fan-out, a message naming
deliveries), retries and anything else due (the due loop), whatever the slow lane pulls back.
The path holds the deliveries of a disabled endpoint, keeps to endpoints' rate limits, leaves
slow receivers to their lane, and records the rest in one transaction (`store.record`). A
failed attempt's retry is a time on its row; nothing waits in the broker.

A batch costs a fixed number of queries whatever its size: claim, load, one INSERT of attempt
rows and one UPDATE of the deliveries.
"""

import datetime
import logging
import math
import threading
import time

from django.conf import settings
from django.utils import timezone

from webhooks import ratelimit

from . import compose, enqueue, lanes, store
from .models import Delivery, DeliveryKind

logger = logging.getLogger(__name__)


class Alarm:
    """When this process's due loop should look again: the soonest time anyone here
    scheduled something for (a rate-limit slot, a short retry), or its poll interval."""

    def __init__(self):
        self._cond = threading.Condition()
        self._at = math.inf

    def ring_at(self, when: float) -> None:
        """Wake the due loop at `when` (a time.time() value) at the latest."""
        with self._cond:
            if when < self._at:
                self._at = when
                self._cond.notify_all()

    def sleep(self, until: float) -> None:
        """Sleep until `until` or an earlier ring, whichever comes first."""
        with self._cond:
            self._at = min(self._at, until)
            while (left := self._at - time.time()) > 0:
                self._cond.wait(left)
            self._at = math.inf


alarm = Alarm()

FOLLOW_RUNS_FOR = 2.0  # seconds a task goes on sending the ordered runs it moved on


def send_claimed(claimed: list[Delivery], *, follow_runs: bool = True) -> list[store.Outcome]:
    """POST deliveries this worker holds the lease of (with `event` and `endpoint` loaded).

    Returns the outcomes of the attempts made and recorded here. Deliveries to a slow target
    are not among them: they finish in the slow lane or wait there (lanes.py), recorded by the
    lane's recorder. Nor are deliveries over their endpoint's rate limit: they wait in the
    database for their slot, or those of a disabled endpoint, held until it is enabled.

    `follow_runs`: deliveries of ordered runs whose turn came when these finished are claimed
    and sent here at once, round after round for up to FOLLOW_RUNS_FOR seconds, then handed to
    the broker: a run's next event costs no message, task and claim of its own (measured: twice
    the worker CPU per delivery with a message per turn). Otherwise they go to the broker."""
    outcomes: list[store.Outcome] = []
    started = time.monotonic()
    while claimed:
        jobs = _pace(_prepare(claimed))
        if not jobs:
            break
        lane = _lane()
        finished, deferred = lane.send(jobs)
        released: list[int] | None = [] if follow_runs else None
        outcomes += record(finished, released)  # first: POSTs made must be logged even if the release fails
        if deferred:
            release(deferred)
            lane.deferred(deferred)
        if not released:
            break
        if time.monotonic() - started > FOLLOW_RUNS_FOR:
            enqueue.submit(released)
            break
        claimed = store.claim(released)
    return outcomes


def deliver(delivery_ids: list[int]) -> list[store.Outcome]:
    """Make the next attempt of those of the given deliveries that are due and free."""
    return send_claimed(store.claim(delivery_ids))


def deliver_due(limit: int) -> int:
    """Claim up to `limit` due deliveries, oldest due first, and send them; return how many
    were claimed (so the due loop knows whether more are waiting)."""
    claimed = store.claim_due(limit)
    if claimed:
        send_claimed(claimed, follow_runs=False)  # one round: tasks wait for the loop's batch to end
    return len(claimed)


def record(jobs: list[lanes.Job], released: list[int] | None = None) -> list[store.Outcome]:
    """Record finished attempts; a retry due before the due loop's next look wakes it.
    (`released`: see store.record.)"""
    outcomes = store.record(jobs, released)
    soonest = min((o.delay for o in outcomes if o.delay is not None), default=None)
    if soonest is not None and soonest < settings.WEBHOOK_DUE_POLL_INTERVAL:
        alarm.ring_at(time.time() + soonest)
    return outcomes


def release(jobs: list[lanes.Job], delay: float = 0.0, *, slot_reserved: bool = False) -> None:
    """Give deliveries we did not send back, due in `delay` seconds, without counting an attempt."""
    store.give_back(
        [j.delivery for j in jobs], timezone.now() + datetime.timedelta(seconds=delay), slot_reserved=slot_reserved
    )
    if delay < settings.WEBHOOK_DUE_POLL_INTERVAL:
        alarm.ring_at(time.time() + delay)


def _prepare(claimed: list[Delivery]) -> list[lanes.Job]:
    """The POSTs to make for claimed deliveries; deliveries to a disabled endpoint are held
    instead (kept for when it is enabled: recovery.resume_endpoint)."""
    now = timezone.now()
    timestamp = int(now.timestamp())
    keys: dict = {}  # per batch: signing keys and shaped bodies (compose.build)
    held, jobs = [], []
    for d in claimed:
        if d.kind == DeliveryKind.ENDPOINT and not d.endpoint.is_active:
            held.append(d)
        else:
            jobs.append(lanes.Job(d, compose.build(d, timestamp, keys), now))
    store.give_back(held, next_attempt_at=None)
    return jobs


def _pace(jobs: list[lanes.Job]) -> list[lanes.Job]:
    """Keep to the endpoints' rate limits: return the jobs that may go now. The others are
    given back, due the second their slot is in (reserved, so they are not counted twice);
    those with no slot within the horizon are due after it, and try again then."""
    limited: dict[str, list[lanes.Job]] = {}
    now = timezone.now()
    for job in jobs:
        d = job.delivery
        if d.kind != DeliveryKind.ENDPOINT or not d.endpoint.rate_limit:
            continue
        if d.slot_reserved and d.next_attempt_at and now < d.next_attempt_at + datetime.timedelta(seconds=1):
            continue  # its slot is this second: reserved when it was paced
        limited.setdefault(d.endpoint_id, []).append(job)
    if not limited:
        return jobs
    later: set[lanes.Job] = set()
    for endpoint_id, group in limited.items():
        slots = ratelimit.reserve(endpoint_id, group[0].delivery.endpoint.rate_limit, len(group))
        start = 0
        for delay, count in slots:
            part, start = group[start : start + count], start + count
            if delay > 0:
                release(part, delay, slot_reserved=True)
                later.update(part)
        if start < len(group):  # no slot within the horizon: they try again after it
            release(group[start:], settings.WEBHOOK_RATE_LIMIT_HORIZON)
            later.update(group[start:])
    return [j for j in jobs if j not in later]


def _claim_waiting(target: lanes.Target, limit: int) -> tuple[int, list[lanes.Job]]:
    """For the slow lane: lease up to `limit` due deliveries to `target`; return how many were
    found and the POSTs to make now (fewer, if some are held or rate-limited)."""
    claimed = store.claim_due(limit, target=target)
    return len(claimed), _pace(_prepare(claimed))


def _lane() -> lanes.Lane:
    return lanes.current(lambda: lanes.Lane(record=record, claim=_claim_waiting, release=release))
