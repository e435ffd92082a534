"""Ordered delivery: an endpoint with `ordering: "run"` receives each run's events one at a time,
in their sequence, while different runs go concurrently.

A delivery to such an endpoint of an event of a run carries the run and the event's sequence,
and is created `waiting`, with no due time (`hold`). It is made due (`settle`) once it is the
lowest-numbered unfinished delivery of its run to its endpoint and no earlier event of the run
still waits for fan-out (that event's delivery, if the endpoint takes it, goes first). Whatever
can make one due settles the runs it touched, in its own transaction: fan-out (new deliveries),
`store.record` (a delivery finished: succeeded, failed or dead) and replay. A delivery released
after predecessors that failed or went dead lists their events in `skipped_event_ids` (the
SKIPPED_MAX most recent): the run carries on, and the log says what its receiver did not get
(the receiver sees the gap in `sequence` / `previous_event_id` too).

Concurrency: `settle` first takes a lock per run (a transaction-scoped advisory lock on
PostgreSQL; SQLite has one writer at a time anyway), so two transactions concerning one run
settle it one after the other, the second seeing what the first committed: a delivery that
finishes while its successor is being fanned out by another worker cannot leave that successor
waiting. The locks are taken in one order, so no two transactions wait for each other in a
circle. The due loop settles the runs of long-waiting deliveries too (`settle_stale`): a
backstop, never the usual path.

What order costs: the deliveries of one run wait for each other's round trips and retries
(a run whose receiver fails waits for its retries; the other runs do not). A manual retry of
a finished delivery sends it again, out of order: that is the operator's call. Nothing changes
for endpoints without ordering: `hold` skips them, and `settle` is never called for them.
"""

import datetime
import logging
from collections.abc import Iterable

from django.db import connection, transaction
from django.utils import timezone

from webhooks.models import Ordering

from . import enqueue
from .models import Delivery, DeliveryKind, DeliveryStatus, Event

logger = logging.getLogger(__name__)

# The first key of our advisory locks (the second is the run's hash): apart from anyone else's.
LOCK_CLASS = 0x5EC0
STALE_AFTER = datetime.timedelta(seconds=30)
STALE_BATCH = 1000
SKIPPED_MAX = 100  # the most recent earlier events not delivered, that a delivery lists
FINISHED_BADLY = (DeliveryStatus.FAILED, DeliveryStatus.DEAD)


def hold(deliveries: Iterable[Delivery]) -> set[str]:
    """Mark those of new, unsaved deliveries (with `event` and `endpoint` set) that go to an
    ordered endpoint and belong to a run: they carry the run and sequence, and the pending ones
    wait for their turn. Returns the runs concerned, to `settle` once the rows are inserted."""
    runs = set()
    for d in deliveries:
        if d.kind != DeliveryKind.ENDPOINT or d.endpoint.ordering != Ordering.RUN or d.event.run_id is None:
            continue
        d.run_id, d.sequence = d.event.run_id, d.event.sequence
        if d.status == DeliveryStatus.PENDING:
            d.waiting, d.next_attempt_at, d.lease, d.locked_until = True, None, None, None
        runs.add(d.run_id)
    return runs


def runs_of(events: Iterable[Event], endpoints_by_organization: dict[str, list]) -> set[str]:
    """The runs of events just fanned out whose organization has an endpoint that delivers runs
    in order: to settle even if no delivery of theirs was created, since an event that reached
    no ordered endpoint (its type, filter or agent) may be what a later one's delivery waited for."""
    ordered = {org for org, eps in endpoints_by_organization.items() if any(e.ordering == Ordering.RUN for e in eps)}
    return {e.run_id for e in events if e.run_id is not None and e.organization_id in ordered}


def settle(run_ids: Iterable[str], *, submit: bool = True) -> list[int]:
    """Make due the next delivery of each of these runs to each ordered endpoint, where its
    turn has come; return their ids. In the caller's transaction (its end releases the runs'
    locks); the released deliveries are handed to the broker once it commits, unless not
    `submit` (the caller sends them)."""
    runs = sorted(set(run_ids))
    if not runs:
        return []
    with transaction.atomic(savepoint=False):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(_LOCK, [LOCK_CLASS, runs])
                cursor.execute(_RELEASE, {"runs": runs, "now": timezone.now()})
                released = [row[0] for row in cursor.fetchall()]
        else:
            released = _release(runs)
        if released and submit:
            transaction.on_commit(lambda: enqueue.submit(released))
    return released


def settle_stale() -> int:
    """Settle the runs whose next delivery to an endpoint has waited over STALE_AFTER (a
    backstop: every change that can free a delivery settles its run at once); return how many
    were released. Only runs whose lowest unfinished delivery itself waits: the many deliveries
    rightly waiting behind a retrying one are not looked at again and again."""
    cutoff = timezone.now() - STALE_AFTER
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_STALE_HEADS, [cutoff, STALE_BATCH])
            runs = {row[0] for row in cursor.fetchall()}
    else:
        runs = set(Delivery.objects.filter(waiting=True, created_at__lt=cutoff).values_list("run_id", flat=True))
    if not runs:
        return 0
    released = settle(runs)
    if released:
        logger.warning("ordered delivery: released %d deliveries that waited over %s", len(released), STALE_AFTER)
    return len(released)


# Runs hashed, distinct, in one order: two transactions never hold each other's next lock.
_LOCK = (
    "SELECT pg_advisory_xact_lock(%s, h) FROM"
    " (SELECT DISTINCT hashtext(r) AS h FROM unnest(%s::text[]) AS r) AS runs ORDER BY h"
)
_D, _E = Delivery._meta.db_table, Event._meta.db_table
# Each (run, endpoint)'s lowest unfinished delivery; those of them that wait, with no earlier
# event of their run still to fan out, become due. Each part reads a small partial index (the
# statuses are literals so the planner can tell): a run's pending deliveries, those that failed
# or died, its events not yet fanned out.
_RELEASE = f"""
WITH heads AS (
    SELECT DISTINCT ON (run_id, endpoint_id) id, run_id, endpoint_id, sequence, waiting
    FROM {_D} WHERE run_id IS NOT NULL AND run_id = ANY(%(runs)s) AND status = 'pending'
    ORDER BY run_id, endpoint_id, sequence
), ready AS (
    SELECT h.id, h.run_id, h.endpoint_id, h.sequence FROM heads h
    WHERE h.waiting AND NOT EXISTS (
        SELECT 1 FROM {_E} e
        WHERE e.run_id = h.run_id AND e.sequence < h.sequence AND e.fanned_out_at IS NULL
    )
)
UPDATE {_D} AS d SET waiting = false, next_attempt_at = %(now)s, skipped_event_ids = (
    SELECT jsonb_agg(s.event_id ORDER BY s.sequence) FROM (
        SELECT p.event_id, p.sequence FROM {_D} p
        WHERE p.run_id IS NOT NULL AND p.run_id = r.run_id AND p.endpoint_id = r.endpoint_id
            AND p.sequence < r.sequence AND p.status IN ('failed', 'dead')
        ORDER BY p.sequence DESC LIMIT {SKIPPED_MAX}
    ) s
)
FROM ready r WHERE d.id = r.id AND d.waiting
RETURNING d.id
"""
# The runs whose next delivery to some endpoint waits and has waited long (settle_stale).
_STALE_HEADS = f"""
SELECT DISTINCT run_id FROM (
    SELECT DISTINCT ON (run_id, endpoint_id) run_id, waiting, created_at FROM {_D}
    WHERE run_id IS NOT NULL AND status = 'pending' ORDER BY run_id, endpoint_id, sequence
) AS heads WHERE waiting AND created_at < %s LIMIT %s
"""


def _release(runs: list[str]) -> list[int]:
    """`_RELEASE` for SQLite (embedded use), a query per run and endpoint."""
    now = timezone.now()
    pending = Delivery.objects.filter(run_id__in=runs, status=DeliveryStatus.PENDING)
    heads: dict[tuple, dict] = {}
    for row in pending.order_by("run_id", "endpoint_id", "sequence").values(
        "id", "run_id", "endpoint_id", "sequence", "waiting"
    ):
        heads.setdefault((row["run_id"], row["endpoint_id"]), row)
    released = []
    for (run_id, endpoint_id), head in heads.items():
        if not head["waiting"]:
            continue
        earlier = {"run_id": run_id, "sequence__lt": head["sequence"]}
        if Event.objects.filter(fanned_out_at=None, **earlier).exists():
            continue
        skipped = Delivery.objects.filter(endpoint_id=endpoint_id, status__in=FINISHED_BADLY, **earlier)
        skipped = list(skipped.order_by("-sequence").values_list("event_id", flat=True)[:SKIPPED_MAX])[::-1] or None
        if Delivery.objects.filter(pk=head["id"], waiting=True).update(
            waiting=False, next_attempt_at=now, skipped_event_ids=skipped
        ):
            released.append(head["id"])
    return released
