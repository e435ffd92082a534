"""The rows: leases and claims on deliveries, and the attempt log with each outcome.

A worker holds a delivery by a lease (a token and an expiry) taken with a conditional UPDATE:
only a pending delivery that is due and that nobody holds can be claimed. That is what makes
duplicated or stale task messages harmless (they find nothing to claim), and what lets any
number of workers share the due deliveries (SKIP LOCKED). A lease that runs out (its worker
died) frees the delivery for the due loop: at least once, never zero times.

`record` writes a batch's attempts and outcomes in one transaction: one INSERT of attempt rows,
one UPDATE of the deliveries (whatever their outcomes), and the endpoints' health. The next
attempt's time comes from `policy`; it is written as `next_attempt_at`, the one schedule.
"""

import collections
import datetime
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from psycopg.types.json import Jsonb

from webhooks import health
from webhooks.models import Endpoint, redact_headers, redact_url, redacted_host

from . import metrics, ordering, policy, signals
from .models import Attempt, Delivery, DeliveryKind, DeliveryStatus, Event

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Outcome:
    """What became of one delivery after its attempt."""

    delivery_id: int
    status: str  # a DeliveryStatus value; PENDING means a retry is due after `delay` seconds
    delay: float | None = None


def lease_is_free(now: datetime.datetime) -> Q:
    """Deliveries nobody holds: never leased, or their lease ran out."""
    return Q(locked_until__isnull=True) | Q(locked_until__lt=now)


def new_lease(count: int = 1) -> tuple[str, datetime.datetime]:
    """A lease token and its expiry for a batch of `count` deliveries: long enough for every
    one of them to take the slowest possible attempt, `WEBHOOK_HTTP_CONCURRENCY` at a time,
    plus a margin. (A lease that ran out mid-batch would let the due loop hand the rest to
    another worker; outcome writes check the lease, but the POST would be sent twice.)"""
    seconds = lease_seconds(count)
    return uuid.uuid4().hex, timezone.now() + datetime.timedelta(seconds=seconds)


def lease_seconds(count: int) -> float:
    longest = settings.WEBHOOK_CONNECT_TIMEOUT + max(settings.WEBHOOK_TIMEOUT, settings.STEP_COMPLETE_TIMEOUT)
    rounds = -(-max(count, 1) // settings.WEBHOOK_HTTP_CONCURRENCY)
    return rounds * longest + settings.WEBHOOK_LEASE_MARGIN


def claim(delivery_ids: list[int]) -> list[Delivery]:
    """Lease those of the given deliveries that are due and free; return them loaded.

    Deliveries that finished, wait for a retry, are held, or are being sent by someone else
    are skipped silently: a message naming them again sends nothing."""
    now = timezone.now()
    lease, locked_until = new_lease(len(delivery_ids))
    if connection.vendor == "postgresql":
        return _claimed(_CLAIM_IDS, [lease, locked_until, delivery_ids, DeliveryStatus.PENDING, now, now])
    claimable = Delivery.objects.filter(
        lease_is_free(now), pk__in=delivery_ids, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    )
    claimable.update(lease=lease, locked_until=locked_until)
    return _loaded(delivery_ids, lease)


def claim_due(limit: int, target: tuple[str, object] | None = None) -> list[Delivery]:
    """Lease up to `limit` due deliveries nobody holds, the longest due first (only those to
    `target`, a (kind, endpoint id or URL) pair, if given); return them loaded."""
    now = timezone.now()
    lease, locked_until = new_lease(limit)
    if connection.vendor == "postgresql":  # one statement: the due loop runs this all day
        where, params = "", []
        if target is not None:
            kind, value = target
            where = "AND kind = %s AND " + ("endpoint_id = %s" if kind == DeliveryKind.ENDPOINT else "url = %s")
            params = [kind, value]
        sql = _CLAIM_DUE.format(target=where)
        return _claimed(sql, [lease, locked_until, DeliveryStatus.PENDING, now, now, *params, limit])
    rows = Delivery.objects.filter(lease_is_free(now), status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
    if target is not None:
        kind, where = target
        rows = rows.filter(kind=kind, **({"endpoint_id": where} if kind == DeliveryKind.ENDPOINT else {"url": where}))
    with transaction.atomic():
        locked = rows.select_for_update(skip_locked=True).order_by("next_attempt_at")
        ids = list(locked.values_list("pk", flat=True)[:limit])
        Delivery.objects.filter(pk__in=ids).update(lease=lease, locked_until=locked_until)
    return _loaded(ids, lease) if ids else []


# On PostgreSQL a claim leases the rows and reads them back with their events and endpoints in
# one statement (the due rows locked with SKIP LOCKED in a subquery), where the ORM took a
# transaction of four round trips and two SELECTs, and built every query anew: the due loop
# runs it all day. The due rows are taken in the order of the due index alone: ordering by
# (next_attempt_at, id) made PostgreSQL read every due row and sort them, 50 to 270 ms a
# claim with 40,000 due (measured), against under a millisecond.
_DELIVERY_FIELDS = [f.attname for f in Delivery._meta.concrete_fields]
# What a request is built from, in the model's order (Model.from_db maps values by it).
_EVENT_FIELDS = [
    f.attname for f in Event._meta.concrete_fields if f.attname in {"id", "type", "body", "organization_id", "agent_id"}
]
_ENDPOINT_FIELDS = [f.attname for f in Endpoint._meta.concrete_fields]
_ENDPOINT_JSON = [(i, f) for i, f in enumerate(Endpoint._meta.concrete_fields) if f.get_internal_type() == "JSONField"]
_CLAIMED = (
    "WITH claimed AS ({update} RETURNING *) SELECT "
    + ", ".join(f"c.{f.column}" for f in Delivery._meta.concrete_fields)
    + ", "
    + ", ".join(f"e.{name}" for name in _EVENT_FIELDS)
    + ", "
    + ", ".join(f"p.{f.column}" for f in Endpoint._meta.concrete_fields)
    + f" FROM claimed c JOIN {Event._meta.db_table} e ON e.id = c.event_id"
    + f" LEFT JOIN {Endpoint._meta.db_table} p ON p.id = c.endpoint_id ORDER BY c.next_attempt_at, c.id"
)
_CLAIM_IDS = _CLAIMED.format(
    update=f"UPDATE {Delivery._meta.db_table} SET lease = %s, locked_until = %s"
    " WHERE id = ANY(%s) AND status = %s AND next_attempt_at <= %s AND (locked_until IS NULL OR locked_until < %s)"
)
_CLAIM_DUE = _CLAIMED.format(
    update=f"UPDATE {Delivery._meta.db_table} SET lease = %s, locked_until = %s WHERE id IN ("
    f"SELECT id FROM {Delivery._meta.db_table} WHERE status = %s AND next_attempt_at <= %s"
    " AND (locked_until IS NULL OR locked_until < %s) {target}"
    " ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)"
)


def _claimed(sql: str, params: list) -> list[Delivery]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    db = connection.alias
    event_at, endpoint_at = len(_DELIVERY_FIELDS), len(_DELIVERY_FIELDS) + len(_EVENT_FIELDS)
    cache_event, cache_endpoint = Delivery.event.field.set_cached_value, Delivery.endpoint.field.set_cached_value
    endpoints: dict[str, Endpoint] = {}
    deliveries = []
    for row in rows:
        delivery = Delivery.from_db(db, _DELIVERY_FIELDS, row[:event_at])
        cache_event(delivery, Event.from_db(db, _EVENT_FIELDS, row[event_at:endpoint_at]))
        if delivery.endpoint_id:
            if delivery.endpoint_id not in endpoints:  # one instance per endpoint, not per delivery
                values = list(row[endpoint_at:])
                for i, field in _ENDPOINT_JSON:
                    values[i] = field.from_db_value(values[i], None, connection)
                endpoints[delivery.endpoint_id] = Endpoint.from_db(db, _ENDPOINT_FIELDS, values)
            cache_endpoint(delivery, endpoints[delivery.endpoint_id])
        deliveries.append(delivery)
    return deliveries


def _loaded(ids: list[int], lease: str) -> list[Delivery]:
    """The leased deliveries with their events (the ORM's way, for other databases)."""
    rows = Delivery.objects.filter(pk__in=ids, lease=lease).select_related("event").order_by("next_attempt_at", "pk")
    return _with_endpoints(list(rows))


def _with_endpoints(deliveries: list[Delivery]) -> list[Delivery]:
    """Give the deliveries their endpoints, each loaded once (a batch is often fifty
    deliveries to one endpoint: one instance, not fifty)."""
    endpoints = Endpoint.objects.in_bulk({d.endpoint_id for d in deliveries if d.endpoint_id})
    for d in deliveries:
        if d.endpoint_id:
            d.endpoint = endpoints[d.endpoint_id]
    return deliveries


def next_due_at() -> datetime.datetime | None:
    """When the next waiting delivery comes due (None if none waits): the due loop sleeps
    until then. One read of the due index."""
    rows = Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__gt=timezone.now())
    return rows.order_by("next_attempt_at").values_list("next_attempt_at", flat=True).first()


def give_back(deliveries: list[Delivery], next_attempt_at, *, slot_reserved: bool = False) -> None:
    """End our lease on deliveries we did not send, due at `next_attempt_at` (None: held
    until their endpoint is enabled), without counting an attempt. `slot_reserved`: they
    hold a slot under their endpoint's rate limit at that time. One UPDATE per lease."""
    for lease in {d.lease for d in deliveries}:
        ids = [d.pk for d in deliveries if d.lease == lease]
        Delivery.objects.filter(pk__in=ids, lease=lease).update(
            lease=None, locked_until=None, next_attempt_at=next_attempt_at, slot_reserved=slot_reserved
        )


def record(jobs: list, released: list[int] | None = None) -> list[Outcome]:
    """Write the attempts of finished jobs (lanes.Job: delivery, request, started, response)
    and each delivery's new state, in one transaction (in which `signals.outcomes_recorded`
    hears what they changed); return the outcomes.

    Deliveries whose turn came because one of these finished (ordered runs: ordering.py) are
    handed to the broker, or, given a `released` list, added to it for the caller to send."""
    if not jobs:
        return []
    now = timezone.now()
    attempts, outcomes, gone_endpoints = [], [], set()
    deliveries = [j.delivery for j in jobs]
    leases = [d.lease for d in deliveries]
    for job in jobs:
        delivery, request, response = job.delivery, job.request, job.response
        delivery.attempt_count += 1
        attempts.append(
            (
                delivery.pk,
                delivery.attempt_count,
                job.started,
                redact_url(request.url),  # the URL as configured stays on the endpoint only
                response.status_code,
                response.duration_ms,
                response.body,
                response.error,
                redact_headers(request.headers),
            )
        )
        delivery.last_attempt_at = job.started
        delivery.last_status_code = response.status_code
        delivery.last_error = response.error
        outcome = _judge(delivery, response, now)
        if response.status_code == 410 and delivery.kind == DeliveryKind.ENDPOINT:
            gone_endpoints.add(delivery.endpoint_id)
        outcomes.append(outcome)
        _log(delivery, request, response, outcome)
    endpoints = {d.endpoint_id: d.endpoint for d in deliveries if d.kind == DeliveryKind.ENDPOINT}
    succeeded = {d.endpoint_id for d in deliveries if d.endpoint_id in endpoints and d.status == "succeeded"}
    failed = collections.Counter(
        d.endpoint_id for d in deliveries if d.endpoint_id in endpoints and d.status != "succeeded"
    )
    finished_runs = {d.run_id for d in deliveries if d.run_id is not None and d.status != DeliveryStatus.PENDING}
    freed: list[int] = []
    for last_try in (False, True):
        try:
            with transaction.atomic():  # one commit for the whole batch's log
                relaxed_commit()
                _insert_attempts(attempts)
                _save_outcomes(deliveries, leases)
                if finished_runs:  # the next delivery of an ordered run may go now
                    freed = ordering.settle(finished_runs, submit=released is None)
                changes = health.record_attempts(succeeded, failed, now, list(endpoints.values()))
                disabled = [e.pk for e in changes.disabled]
                if gone_endpoints:
                    changes.disabled += health.mark_gone(gone_endpoints, now)
                signals.outcomes_recorded.send(sender=Delivery, deliveries=deliveries, changes=changes)
            break
        except (OperationalError, InterfaceError):
            # The connection died while the POSTs were out (database restarted, connections
            # killed). Nothing was written; once more on a new connection, or the POSTs just
            # made would be unlogged and sent again when their lease ends.
            if last_try or connection.in_atomic_block:
                raise
            logger.warning("lost the database connection recording %d attempts; trying once more", len(jobs))
            connection.close()
    for delivery in deliveries:
        delivery.lease = delivery.locked_until = None
    if released is not None:
        released += freed
    metrics.attempts_recorded(jobs, outcomes)
    if gone_endpoints:
        logger.warning("endpoints %s answered 410 Gone: disabled", sorted(gone_endpoints))
    if disabled:
        logger.warning("endpoints %s failed for %s hours: disabled", disabled, settings.WEBHOOK_DISABLE_AFTER_HOURS)
    for delivery, row in zip(deliveries, attempts, strict=True):
        if delivery.kind in (DeliveryKind.RUN_CALLBACK, DeliveryKind.JOB_CALLBACK):
            attempt = Attempt(delivery=delivery, **dict(zip(_ATTEMPT_FIELDS[1:], row[1:], strict=True)))
            signals.callback_attempted.send(sender=Delivery, delivery=delivery, attempt=attempt)
    return outcomes


def _judge(delivery: Delivery, response, now: datetime.datetime) -> Outcome:
    """Set the delivery's status and next attempt after an attempt, as the policy says."""
    verdict = policy.judge(response.status_code, response.refused)
    delay = None
    if verdict is policy.Verdict.RETRY:
        schedule = policy.schedule_of(delivery.endpoint if delivery.kind == DeliveryKind.ENDPOINT else None)
        delay = policy.next_delay(
            delivery.attempt_count - delivery.series_start,
            schedule,
            retry_after=response.retry_after,
            status_code=response.status_code,
        )
    if verdict is policy.Verdict.SUCCEEDED:
        delivery.status = DeliveryStatus.SUCCEEDED
    elif verdict is policy.Verdict.FAILED:
        delivery.status = DeliveryStatus.FAILED
    else:
        delivery.status = DeliveryStatus.PENDING if delay is not None else DeliveryStatus.DEAD
    if delivery.status == DeliveryStatus.PENDING:
        delivery.next_attempt_at = now + datetime.timedelta(seconds=delay)
    else:
        delivery.next_attempt_at = None
        delivery.finished_at = now
    delivery.slot_reserved = False
    return Outcome(delivery.pk, delivery.status, delay)


def _insert_attempts(rows: list[tuple]) -> None:
    """INSERT a batch's attempt rows, given as tuples in `_ATTEMPT_FIELDS` order. On PostgreSQL
    with COPY: Django 5.2's bulk_create sends the columns as arrays for UNNEST, which psycopg
    builds value by value in Python, and a model instance per row costs as much again; COPY
    formats plain rows in C. Nobody needs the rows' ids."""
    if connection.vendor != "postgresql":
        Attempt.objects.bulk_create([Attempt(**dict(zip(_ATTEMPT_FIELDS, row, strict=True))) for row in rows])
        return
    with connection.cursor() as cursor, cursor.cursor.copy(_COPY_ATTEMPTS) as copy:
        for row in rows:
            copy.write_row((*row[:-1], Jsonb(row[-1])))


_ATTEMPT_FIELDS = (
    "delivery_id", "number", "started_at", "url", "status_code", "duration_ms", "response_body", "error",
    "request_headers",
)  # fmt: skip
assert set(_ATTEMPT_FIELDS) == {f.attname for f in Attempt._meta.concrete_fields if not f.primary_key}
_COPY_ATTEMPTS = f"COPY {Attempt._meta.db_table} ({', '.join(_ATTEMPT_FIELDS)}) FROM STDIN"


def _save_outcomes(deliveries: list[Delivery], leases: list[str | None]) -> None:
    """Write the deliveries' new state, only where the row is still leased to us (had the
    lease run out and another worker taken one, its outcome is that worker's to write).

    On PostgreSQL one UPDATE from arrays, whatever the outcomes: retries each have their own
    jittered time, and an UPDATE per distinct value would cost a round trip per failure. (A
    VALUES list of scalar parameters measured no faster.)
    (Django's bulk_update builds a CASE per row and field, and cost more than the HTTP
    requests themselves.)"""
    rows = [
        (d.pk, lease, d.status, d.next_attempt_at, d.last_attempt_at, d.last_status_code, d.last_error, d.finished_at)
        for d, lease in zip(deliveries, leases, strict=True)
    ]
    if connection.vendor == "postgresql":
        columns = list(zip(*rows, strict=True))
        with connection.cursor() as cursor:
            cursor.execute(_UPDATE_FROM_ARRAYS, [list(c) for c in columns])
        return
    for pk, lease, status, next_at, last_at, code, error, finished in rows:
        Delivery.objects.filter(pk=pk, lease=lease).update(
            status=status,
            attempt_count=F("attempt_count") + 1,
            next_attempt_at=next_at,
            last_attempt_at=last_at,
            last_status_code=code,
            last_error=error,
            finished_at=finished,
            lease=None,
            locked_until=None,
            slot_reserved=False,
        )


_UPDATE_FROM_ARRAYS = f"""
UPDATE {Delivery._meta.db_table} AS d SET
    status = v.status, attempt_count = d.attempt_count + 1, next_attempt_at = v.next_at,
    last_attempt_at = v.last_at, last_status_code = v.code, last_error = v.error,
    finished_at = v.finished, lease = NULL, locked_until = NULL, slot_reserved = false
FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::timestamptz[], %s::timestamptz[],
            %s::integer[], %s::text[], %s::timestamptz[])
    AS v(id, lease, status, next_at, last_at, code, error, finished)
WHERE d.id = v.id AND d.lease = v.lease
"""


def relaxed_commit() -> None:
    """Let PostgreSQL acknowledge this transaction's COMMIT before its WAL reaches disk.

    Used for the worker's own bookkeeping only (fan-out, claims, attempt log), never for
    publishing: an event the caller committed is durable. If the database itself crashes, the
    last fraction of a second of this bookkeeping can be lost; the deliveries it concerned are
    then still pending, and are sent again once their lease ends: at least once, never zero
    times. In exchange a worker does not wait for a disk flush per batch. Worker processes set
    this once per connection (`relax_session`), which saves the statement here on every batch.
    """
    if connection.vendor == "postgresql" and not getattr(connection, "webhooks_relaxed", False):
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def relax_session(sender, connection, **kwargs) -> None:
    """`connection_created` receiver for worker processes, whose every write is bookkeeping
    of the kind `relaxed_commit` describes: the whole session commits that way."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO OFF")
        connection.webhooks_relaxed = True


def _log(delivery: Delivery, request, response, outcome: Outcome) -> None:
    """One line per attempt, naming the target by endpoint id (or seed kind) and host, never
    by its URL: paths and queries carry receivers' tokens, and logs travel far."""
    what = response.status_code if response.status_code is not None else response.error
    to = f"{delivery.endpoint_id or delivery.kind} ({redacted_host(request.url)})"
    if outcome.status == DeliveryStatus.SUCCEEDED:
        logger.info("delivery %s to %s: %s in %d ms", delivery.pk, to, what, response.duration_ms)
    elif outcome.status == DeliveryStatus.PENDING:  # expected, and in the attempt log: not a warning
        logger.info("delivery %s to %s: %s, retry in %s", delivery.pk, to, what, policy.format_seconds(outcome.delay))
    else:
        logger.warning("delivery %s to %s: %s, %s", delivery.pk, to, what, outcome.status)
