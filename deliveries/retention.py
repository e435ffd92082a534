"""Payload governance: payloads expire after a retention period, and are erased on request.

What holds a payload: an event's `body` (the envelope with its `data`) and its `targets` (the
seed targets' bodies, until fan-out), a seed delivery's `body`, and an attempt's
`response_body` (the receiver's answer, which may echo what it got). Removing them leaves
every row in place, as a tombstone with its ids, type, status, times and counts, so the log
and the statistics still add up; the event says what became of its payload
(`payload_removed`: "expired" or "erased", and when), and the API, admin, CLI and pull feed
say that instead of showing anything. What stays holds no content: ids, types, times,
statuses, URLs, transport errors ("connection refused"), and the headers sent (signatures
cannot be turned back into the body).

* `expire` (beat, hourly): events created more than WEBHOOK_PAYLOAD_RETENTION_DAYS ago (an
  organization's `payload_retention_days`, if shorter).
* `erase`: an agent's or an organization's events, now, whatever their age; recorded with
  who asked and when (`PayloadRemoval`), as is every retention pass that removed anything.
  Asked for over HTTP (the API, the admin) it works for IN_REQUEST_SECONDS, then leaves the
  record unfinished (`finished_at` null) and a worker goes on (`continue_erasure`, a stretch of
  IN_TASK_SECONDS at a time, so no task runs long), so an organization of millions of events
  does not outlast a proxy's timeout; if the broker lost that message, or the worker died, the
  next retention pass goes on instead. One process at a time works on an erasure, the holder
  of its lease (`lease_until`, renewed page by page, so a dead one's runs out), and its counts
  are written after every page: they grow as it goes, and what was done is never uncounted.

A delivery still pending when its event's payload goes (held for a disabled endpoint, waiting
for a retry or for its turn in a run, or being sent right now) is finished `failed`, its
`last_error` saying why: there is nothing left to send, and a retry is refused. Its lease is
cleared, so an attempt in flight at that moment cannot write its outcome over that
(`store.record` writes outcomes only where the lease still matches); its attempt row is still
written when the answer comes, so its excerpt is cleared once more after the lease has run out
(`settle`). An event not fanned out yet is marked fanned out: it gets no deliveries at all.

Bounded batches: the rows are found in pages of BATCH events (by creation time, or id) outside
any transaction, and each page is removed in a transaction of its own: the events' rows, the
few deliveries that hold a body or are still pending (looked up by the event index; a finished
endpoint delivery holds no payload and is not written), and the attempts that kept an excerpt.
So no transaction holds more than a page's row locks, for milliseconds (bench/purge.py
measures it), and workers recording outcomes never wait on a purge for longer. Publishing pays
nothing: no index was added to the event table. Each retention pass starts where the last one
that removed something ended (its `cutoff`), so tombstones are not read again every hour.
"""

import contextlib
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from celery import current_app
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Max, Q
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from agents_hooks.models import Agent, Organization

from . import metrics, ordering
from .models import Attempt, Delivery, DeliveryStatus, Event, PayloadRemoval, PayloadRemoved

logger = logging.getLogger(__name__)

BATCH = 1000  # events per transaction: ~0.1-0.4 s of row locks (bench/purge.py)
SETTLE_TASK = "deliveries.tasks.settle_payload_removals"
CONTINUE_TASK = "deliveries.tasks.continue_erasure"
ADVISORY_LOCK = 0x7E7E_0016  # pg_advisory_lock key of the retention pass
IN_REQUEST_SECONDS = 10.0  # an erasure asked for over HTTP: this long, then a worker goes on
IN_TASK_SECONDS = 60.0  # a worker's stretch on an erasure, then it sends itself again
LEASE = datetime.timedelta(minutes=5)  # an erasure's claim, renewed after every page (< 1 s each)


@dataclass
class Batch:
    """What one transaction removed, and how long it held its locks (seconds): all of them,
    and those on delivery rows."""

    events: int
    deliveries_failed: int
    attempts_cleared: int
    seconds: float
    delivery_lock_seconds: float
    in_flight_until: datetime.datetime | None = None


Progress = Callable[[Batch], None] | None


def failure_reason(kind: str) -> str:
    """A delivery's `last_error` when its event's payload went before it was delivered."""
    if kind == PayloadRemoved.EXPIRED:
        return "payload expired (past its retention period) before it was delivered: not sent"
    return "payload erased on request before it was delivered: not sent"


def expire(now: datetime.datetime | None = None, progress: Progress = None) -> int:
    """Remove the payloads of events past their retention period; return how many events.

    One pass for the default period (all organizations), then one per organization with a
    shorter period of its own. Also settles earlier removals whose in-flight attempts are over.
    One pass at a time: while another runs (a first pass over years of events can outlast the
    hour), this one does nothing and returns 0."""
    with _alone() as alone:
        return _expire_all(now or timezone.now(), progress) if alone else 0


def _expire_all(now: datetime.datetime, progress: Progress) -> int:
    total = 0
    default = settings.WEBHOOK_PAYLOAD_RETENTION_DAYS
    if default:
        total += _expire(None, now - datetime.timedelta(days=default), now, progress)
    shorter = Organization.objects.filter(payload_retention_days__isnull=False)
    if default:
        shorter = shorter.filter(payload_retention_days__lt=default)
    for org_id, days in shorter.values_list("pk", "payload_retention_days"):
        total += _expire(org_id, now - datetime.timedelta(days=days), now, progress)
    settle(now)
    # Erasures whose worker never came (a message the broker lost) or died: a stretch each
    # here, then a worker goes on; those a process works on right now (its lease) are left.
    for pk in PayloadRemoval.objects.filter(kind=PayloadRemoved.ERASED, finished_at__isnull=True).values_list(
        "pk", flat=True
    ):
        continue_erasure(pk)
    return total


@contextlib.contextmanager
def _alone():
    """Whether this process holds the retention passes' PostgreSQL advisory lock (taken for
    the session, so not held by any transaction; released at the end). Other databases: yes."""
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK])
        held = cursor.fetchone()[0]
    try:
        yield held
    finally:
        if held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK])


def _expire(organization_id: str | None, cutoff: datetime.datetime, now, progress: Progress) -> int:
    passes = PayloadRemoval.objects.filter(
        kind=PayloadRemoved.EXPIRED, organization_id=organization_id, finished_at__isnull=False
    )
    start = passes.order_by("-cutoff").values_list("cutoff", flat=True).first()
    rows = Event.objects.filter(created_at__lt=cutoff, payload_removed=PayloadRemoved.KEPT)
    if organization_id is not None:
        rows = rows.filter(organization_id=organization_id)
    if start is not None:
        if start >= cutoff:
            return 0  # the period was made longer: nothing is due yet
        rows = rows.filter(created_at__gte=start)
    record = PayloadRemoval(
        kind=PayloadRemoved.EXPIRED, organization_id=organization_id, cutoff=cutoff, requested_by="retention",
        requested_at=now,
    )  # fmt: skip
    _run(record, _pages(rows, "created_at"), progress)
    if record.events:
        record.save()
        scope = f"organization {organization_id}" if organization_id else "all organizations"
        logger.info(
            "retention: payloads of %d events created before %s expired (%s); %d pending deliveries failed",
            record.events, cutoff.isoformat(), scope, record.deliveries_failed,
        )  # fmt: skip
    return record.events


def erase(
    *,
    requested_by: str,
    agent: Agent | None = None,
    organization: Organization | None = None,
    reason: str = "",
    seconds: float | None = None,
) -> PayloadRemoval:
    """Remove the payloads of every event of `agent` (or of `organization`) now, whatever their
    age, and finish their undelivered deliveries `failed`; record who asked, when and how much
    (the returned `PayloadRemoval`). Events published after this began are not touched.

    `seconds`: once this long has passed (checked between pages), stop and have a worker go
    on: the record comes back unfinished (`finished_at` null), and its counts grow until it
    is finished. None: to the end, here (the command line)."""
    if (agent is None) == (organization is None):
        raise ValueError("erase: give an agent or an organization")
    now = timezone.now()
    record = PayloadRemoval.objects.create(
        kind=PayloadRemoved.ERASED,
        agent_id=agent.pk if agent is not None else None,
        organization_id=organization.pk if organization is not None else agent.organization_id,
        requested_by=requested_by[:200],
        reason=reason,
        requested_at=now,
        lease_until=now + LEASE,  # claimed as it is recorded: nobody else starts on it
    )
    _erase(record, seconds)
    return record


def continue_erasure(record_id: int, seconds: float | None = IN_TASK_SECONDS) -> None:
    """Go on with an unfinished erasure for `seconds` (task `continue_erasure`, and the
    retention pass for those no worker took up), then hand it on again if it is still not
    finished; nothing if it is finished, or another process holds its lease."""
    now = timezone.now()
    claimed = (
        PayloadRemoval.objects.filter(pk=record_id, kind=PayloadRemoved.ERASED, finished_at__isnull=True)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(lease_until=now + LEASE)
    )
    if claimed:
        _erase(PayloadRemoval.objects.get(pk=record_id), seconds)


def _erase(record: PayloadRemoval, seconds: float | None) -> None:
    """Work on an erasure whose lease this process holds, for `seconds` (None: to the end),
    then let go of it: finished, or handed to a worker."""
    scope = f"agent {record.agent_id}" if record.agent_id is not None else f"organization {record.organization_id}"
    rows = Event.objects.filter(payload_removed=PayloadRemoved.KEPT, created_at__lte=record.requested_at)
    if record.agent_id is not None:  # its index, or the primary key's when the agent has most events
        pages = _pages(rows.filter(agent_id=record.agent_id), "pk")
    else:  # the (organization, created_at) index
        pages = _pages(rows.filter(organization_id=record.organization_id), "created_at")
    failed = False
    try:
        _run(record, pages, until=None if seconds is None else time.monotonic() + seconds)
    except DatabaseError as exc:  # a deadlock, a lost connection: what was done is counted; go on later
        logger.warning("erasing the payloads of %s stopped (%s): a worker goes on in a minute", scope, exc)
        failed = True
    PayloadRemoval.objects.filter(pk=record.pk).update(finished_at=record.finished_at, lease_until=None)
    if record.finished_at is None:
        logger.info("erasing the payloads of %s: %d events so far; a worker goes on", scope, record.events)
        # After an error, not at once: one that comes back every time must not become a busy loop.
        _schedule(
            CONTINUE_TASK, args=[record.pk], countdown=60 if failed else 0,
            why="the erasure goes on at the next retention pass",
        )  # fmt: skip
        return
    logger.warning(
        "payloads erased: %s, %d events (%d pending deliveries failed), asked by %s",
        scope, record.events, record.deliveries_failed, record.requested_by,
    )  # fmt: skip
    if record.settle_by is not None:
        _schedule_settle(record.settle_by)


def _run(record: PayloadRemoval, pages, progress: Progress = None, until: float | None = None) -> None:
    """Remove page after page, adding up the counts on `record`; finished (`finished_at`)
    unless it stopped at `until` (time.monotonic()) with pages left. A saved record (an
    erasure) gets each page's counts, and a renewed lease, as the page is done; a retention
    pass's is saved by the caller."""
    for ids in pages:
        if until is not None and time.monotonic() >= until:
            return
        batch = _remove(ids, record.kind, record.requested_at)
        record.events += batch.events
        record.deliveries_failed += batch.deliveries_failed
        record.attempts_cleared += batch.attempts_cleared
        metrics.deliveries_failed_unsent(batch.deliveries_failed)  # finished, as far as /metrics counts
        if batch.in_flight_until is not None:
            record.settle_by = max(filter(None, [record.settle_by, batch.in_flight_until]))
        if record.pk is not None:
            _count(record.pk, batch)
        if progress is not None:
            progress(batch)
    record.finished_at = timezone.now()


def _count(record_id: int, batch: Batch) -> None:
    """Add a page's counts to a saved record, in the database (whoever worked on it before
    counted theirs there), and renew its lease."""
    changes = {
        "events": F("events") + batch.events,
        "deliveries_failed": F("deliveries_failed") + batch.deliveries_failed,
        "attempts_cleared": F("attempts_cleared") + batch.attempts_cleared,
        "lease_until": timezone.now() + LEASE,
    }
    if batch.in_flight_until is not None:
        changes["settle_by"] = Greatest(Coalesce("settle_by", batch.in_flight_until), batch.in_flight_until)
    PayloadRemoval.objects.filter(pk=record_id).update(**changes)


def _pages(rows, order: str):
    """The ids of `rows` a page at a time, by `order` (then id): each page starts past the
    last, so rows already removed are not read again."""
    last = None
    while True:
        page = rows
        if last is not None:
            if order == "pk":
                page = page.filter(pk__gt=last[0])
            else:
                page = page.filter(**{f"{order}__gte": last[0]}).exclude(**{order: last[0], "pk__lte": last[1]})
        found = list(page.order_by(order, "pk").values_list(order, "pk")[:BATCH])
        if not found:
            return
        last = found[-1]
        yield [pk for _, pk in found]


def _remove(ids: list[str], kind: str, now: datetime.datetime) -> Batch:
    """Remove the payloads of these events (those not removed yet), in one transaction."""
    started = time.perf_counter()
    with transaction.atomic():
        events = Event.objects.filter(pk__in=ids, payload_removed=PayloadRemoved.KEPT)
        # Runs to settle afterwards (ordering.py): events marked fanned out here, and pending
        # deliveries failed here, may be what a later delivery of their run waits for.
        runs = set(events.filter(fanned_out_at__isnull=True, run_id__isnull=False).values_list("run_id", flat=True))
        with_targets = [(pk, targets) for pk, targets in events.values_list("pk", "targets") if targets]
        removed = events.update(
            body=Event.TOMBSTONE,
            payload_removed=kind,
            payload_removed_at=now,
            fanned_out_at=Coalesce("fanned_out_at", now),
        )
        for pk, targets in with_targets:  # seed targets' bodies; their URLs and kinds stay
            if any("body" in t for t in targets):
                kept = [{k: v for k, v in t.items() if k != "body"} for t in targets]
                Event.objects.filter(pk=pk).update(targets=kept)
        cleared = _clear_excerpts(Attempt.objects.filter(delivery__event_id__in=ids))
        # The delivery table last: its rows (the hot table's) are locked for the end of the
        # transaction only.
        deliveries_from = time.perf_counter()
        deliveries = Delivery.objects.filter(event_id__in=ids)
        pending = deliveries.filter(status=DeliveryStatus.PENDING)
        in_flight_until = pending.filter(locked_until__gt=now).aggregate(until=Max("locked_until"))["until"]
        runs |= set(pending.filter(run_id__isnull=False).values_list("run_id", flat=True))
        failed = pending.update(
            status=DeliveryStatus.FAILED,
            last_error=failure_reason(kind),
            finished_at=now,
            next_attempt_at=None,
            lease=None,
            locked_until=None,
            slot_reserved=False,
            waiting=False,
            body=None,
        )
        deliveries.filter(body__isnull=False).update(body=None)
    done = time.perf_counter()
    if runs:  # after the commit, in its own transaction: settling takes runs' locks, which must
        ordering.settle(runs)  # never be waited for while this one holds delivery rows
    return Batch(removed, failed, cleared, done - started, done - deliveries_from, in_flight_until)


def _clear_excerpts(attempts) -> int:
    return attempts.exclude(response_body="").update(response_body="")


def settle(now: datetime.datetime | None = None) -> int:
    """Clear the excerpts of attempts that were in flight when their payloads were removed,
    and answered after (their lease has run out by `settle_by`); return how many were cleared.
    Scheduled for `settle_by` by `erase`, and run by every retention pass, which catches a
    schedule the broker lost."""
    now = now or timezone.now()
    cleared = 0
    for record in PayloadRemoval.objects.filter(settled_at__isnull=True, settle_by__lte=now, finished_at__isnull=False):
        # Attempts started within a lease of the removal (the started_at index), of its events.
        since = record.requested_at - (record.settle_by - record.requested_at) - datetime.timedelta(hours=1)
        attempts = Attempt.objects.filter(
            started_at__gte=since,
            delivery__event__payload_removed=record.kind,
            delivery__event__payload_removed_at=record.requested_at,
        )
        count = _clear_excerpts(attempts)
        PayloadRemoval.objects.filter(pk=record.pk).update(
            settled_at=now, attempts_cleared=F("attempts_cleared") + count
        )
        cleared += count
    return cleared


def _schedule_settle(at: datetime.datetime) -> None:
    """Ask a worker to settle at `at` (once committed); if the broker is away, the next
    retention pass does it."""
    countdown = max(0.0, (at - timezone.now()).total_seconds()) + 1
    _schedule(SETTLE_TASK, countdown=countdown, why="in-flight attempts settle at the next retention pass")


def _schedule(task: str, *, args=(), countdown: float = 0, why: str) -> None:
    """Send `task` to a worker once committed; if the broker is away, say what happens instead."""

    def send():
        try:
            current_app.send_task(task, args=list(args), countdown=countdown, retry=False)
        except Exception as exc:
            logger.warning("broker unavailable (%s): %s", exc, why)

    transaction.on_commit(send)
