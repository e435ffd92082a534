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

import datetime
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from webhooks import health
from webhooks.models import Endpoint, redact_headers

from . import policy, signals
from .models import Attempt, Delivery, DeliveryKind, DeliveryStatus

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


def _loaded(ids: list[int], lease: str) -> list[Delivery]:
    """The leased deliveries with their events, and their endpoints loaded once each (a batch
    is often fifty deliveries to one endpoint: one instance, not fifty)."""
    rows = list(
        Delivery.objects.filter(pk__in=ids, lease=lease).select_related("event").order_by("next_attempt_at", "pk")
    )
    endpoints = Endpoint.objects.in_bulk({d.endpoint_id for d in rows if d.endpoint_id})
    for d in rows:
        if d.endpoint_id:
            d.endpoint = endpoints[d.endpoint_id]
    return rows


def claim(delivery_ids: list[int]) -> list[Delivery]:
    """Lease those of the given deliveries that are due and free; return them loaded.

    Deliveries that finished, wait for a retry, are held, or are being sent by someone else
    are skipped silently: a message naming them again sends nothing."""
    now = timezone.now()
    lease, locked_until = new_lease(len(delivery_ids))
    claimable = Delivery.objects.filter(
        lease_is_free(now), pk__in=delivery_ids, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    )
    if not claimable.update(lease=lease, locked_until=locked_until):
        return []
    return _loaded(delivery_ids, lease)


def claim_due(limit: int, target: tuple[str, object] | None = None) -> list[Delivery]:
    """Lease up to `limit` due deliveries nobody holds, the longest due first (only those to
    `target`, a (kind, endpoint id or URL) pair, if given); return them loaded."""
    now = timezone.now()
    rows = Delivery.objects.filter(lease_is_free(now), status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
    if target is not None:
        kind, where = target
        rows = rows.filter(kind=kind, **({"endpoint_id": where} if kind == DeliveryKind.ENDPOINT else {"url": where}))
    lease, locked_until = new_lease(limit)
    if connection.vendor == "postgresql":  # one statement: this runs a batch at a time, all day
        ids = _claim_due_at_once(now, limit, lease, locked_until, target)
    else:
        with transaction.atomic():
            locked = rows.select_for_update(skip_locked=True).order_by("next_attempt_at", "pk")
            ids = list(locked.values_list("pk", flat=True)[:limit])
            Delivery.objects.filter(pk__in=ids).update(lease=lease, locked_until=locked_until)
    return _loaded(ids, lease) if ids else []


def _claim_due_at_once(now, limit: int, lease: str, locked_until, target) -> list[int]:
    """`claim_due`'s lease as one UPDATE ... RETURNING, the due rows locked with SKIP LOCKED
    in a subquery, instead of a transaction of four round trips."""
    where, params = "", []
    if target is not None:
        kind, value = target
        where = "AND kind = %s AND " + ("endpoint_id = %s" if kind == DeliveryKind.ENDPOINT else "url = %s")
        params = [kind, value]
    table = Delivery._meta.db_table
    sql = f"""
        UPDATE {table} SET lease = %s, locked_until = %s WHERE id IN (
            SELECT id FROM {table}
            WHERE status = %s AND next_attempt_at <= %s AND (locked_until IS NULL OR locked_until < %s) {where}
            ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED)
        RETURNING id"""
    with connection.cursor() as cursor:
        cursor.execute(sql, [lease, locked_until, DeliveryStatus.PENDING, now, now, *params, limit])
        return [row[0] for row in cursor.fetchall()]


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


def record(jobs: list) -> list[Outcome]:
    """Write the attempts of finished jobs (lanes.Job: delivery, request, started, response)
    and each delivery's new state, in one transaction; return the outcomes."""
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
            Attempt(
                delivery=delivery,
                number=delivery.attempt_count,
                started_at=job.started,
                url=request.url,
                status_code=response.status_code,
                duration_ms=response.duration_ms,
                response_body=response.body,
                error=response.error,
                request_headers=redact_headers(request.headers),
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
    # Only endpoints that were failing when loaded need their clock reset: no UPDATE otherwise.
    succeeded = {
        d.endpoint_id
        for d in deliveries
        if d.kind == DeliveryKind.ENDPOINT and d.status == DeliveryStatus.SUCCEEDED and d.endpoint.failing_since
    }
    failed = {d.endpoint_id for d in deliveries if d.kind == DeliveryKind.ENDPOINT and d.status != "succeeded"}
    for last_try in (False, True):
        try:
            with transaction.atomic():  # one commit for the whole batch's log
                relaxed_commit()
                _insert_attempts(attempts)
                _save_outcomes(deliveries, leases)
                disabled = health.record_attempts(succeeded, failed, now)
                if gone_endpoints:
                    health.mark_gone(gone_endpoints, now)
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
    if gone_endpoints:
        logger.warning("endpoints %s answered 410 Gone: disabled", sorted(gone_endpoints))
    if disabled:
        logger.warning("endpoints %s failed for %s hours: disabled", disabled, settings.WEBHOOK_DISABLE_AFTER_HOURS)
    for delivery, attempt_row in zip(deliveries, attempts, strict=True):
        if delivery.kind in (DeliveryKind.RUN_CALLBACK, DeliveryKind.JOB_CALLBACK):
            signals.callback_attempted.send(sender=Delivery, delivery=delivery, attempt=attempt_row)
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


def _insert_attempts(attempts: list[Attempt]) -> None:
    """INSERT a batch's attempt rows. On PostgreSQL with COPY: Django 5.2's bulk_create sends
    the columns as arrays for UNNEST, and psycopg builds those arrays value by value in Python
    (a fifth of a retrying worker's time); COPY formats rows in C. Nobody needs their ids."""
    if connection.vendor != "postgresql":
        Attempt.objects.bulk_create(attempts)
        return
    with connection.cursor() as cursor, cursor.cursor.copy(_COPY_ATTEMPTS) as copy:
        for attempt in attempts:
            copy.write_row([f.get_db_prep_save(getattr(attempt, f.attname), connection) for f in _ATTEMPT_FIELDS])


_ATTEMPT_FIELDS = [f for f in Attempt._meta.concrete_fields if not f.primary_key]
_COPY_ATTEMPTS = f"COPY {Attempt._meta.db_table} ({', '.join(f.column for f in _ATTEMPT_FIELDS)}) FROM STDIN"


def _save_outcomes(deliveries: list[Delivery], leases: list[str | None]) -> None:
    """Write the deliveries' new state, only where the row is still leased to us (had the
    lease run out and another worker taken one, its outcome is that worker's to write).

    On PostgreSQL one UPDATE from arrays, whatever the outcomes: retries each have their own
    jittered time, and an UPDATE per distinct value would cost a round trip per failure.
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
    what = response.status_code if response.status_code is not None else response.error
    url = _without_query(request.url)
    if outcome.status == DeliveryStatus.SUCCEEDED:
        logger.info("delivery %s to %s: %s in %d ms", delivery.pk, url, what, response.duration_ms)
    elif outcome.status == DeliveryStatus.PENDING:  # expected, and in the attempt log: not a warning
        logger.info("delivery %s to %s: %s, retry in %s", delivery.pk, url, what, policy.format_seconds(outcome.delay))
    else:
        logger.warning("delivery %s to %s: %s, %s", delivery.pk, url, what, outcome.status)


def _without_query(url: str) -> str:
    """A URL fit for the log: receivers put tokens in query strings, and logs travel further
    than the attempt log (which keeps the URL whole, for the endpoint's owner)."""
    base, sep, _ = url.partition("?")
    return f"{base}?[redacted]" if sep else base
