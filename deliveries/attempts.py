"""Making attempts: claim deliveries, POST them concurrently, record every outcome.

The Celery tasks are thin wrappers over `attempt`; this module holds the rules:
2xx succeeds; no answer, 408, 425, 429 and 5xx are retried; any other status fails at once
(410 Gone also deactivates the endpoint), as does a URL that urlsafety refuses at send time;
a retried delivery that has used up WEBHOOK_MAX_RETRIES is marked dead.

A batch costs a fixed number of queries whatever its size: one UPDATE to claim, one SELECT,
one INSERT of the attempt rows and one UPDATE of the deliveries. Requests to a slow receiver
are not waited for: lanes.py finishes them apart, and records them here with `record_late`.
"""

import datetime
import logging
import uuid
from dataclasses import dataclass

from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from webhooks import health, ratelimit, signing
from webhooks.models import redact_headers

from . import lanes, signals, transport
from .models import Attempt, Delivery, DeliveryKind, DeliveryStatus

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 425, 429})


@dataclass(slots=True)
class Outcome:
    """What became of one claimed delivery after its attempt."""

    delivery_id: int
    status: str  # a DeliveryStatus value; PENDING means a retry is due after `delay`
    series_start: int = 0
    attempts_in_series: int = 0  # including the attempt just made; = the next retry's number
    delay: float = 0.0
    retry_after: float | None = None


def retry_delay(retries_done: int) -> int:
    """Seconds before the next retry: the same formula Celery's autoretry applies."""
    return get_exponential_backoff_interval(
        factor=settings.WEBHOOK_RETRY_BACKOFF,
        retries=retries_done,
        maximum=settings.WEBHOOK_RETRY_BACKOFF_MAX,
        full_jitter=False,
    )


def attempt(
    delivery_ids: list[int], expected_attempt_count: int | None = None, *, reserved: bool = False
) -> list[Outcome]:
    """Claim the given deliveries, POST each once, record the attempts; return the outcomes.

    `expected_attempt_count` is how many attempts the delivery must have had for this call to
    make the next one; None means "the first attempt of its current series" (a fresh delivery,
    or one just retried by hand). Deliveries that cannot be claimed (already succeeded or
    failed, being sent by another worker, or past the attempt this call was meant to make)
    are skipped silently: that is what makes duplicated task messages harmless. `reserved`:
    the attempt already has its slot under the endpoint's rate limit.
    """
    return send_claimed(_claim(delivery_ids, expected_attempt_count), reserved=reserved)


def send_claimed(claimed: list[Delivery], *, reserved: bool = False) -> list[Outcome]:
    """POST deliveries this worker holds the lease of (with `event` and `endpoint` loaded).

    Returns the outcomes of the attempts made and recorded here. Deliveries to a slow target
    are not among them: they finish in the slow lane or wait there (lanes.py), and their
    attempts are recorded and continued by the lane's recorder. Nor are deliveries over their
    endpoint's rate limit: they are scheduled for their slot."""
    jobs = _prepare(claimed)
    if not reserved:
        jobs = _pace(jobs)
    if not jobs:
        return []
    lane = lanes.current()
    finished, deferred = lane.send(jobs)
    outcomes = _record(finished)  # first: POSTs made must be logged even if the release fails
    if deferred:
        release(deferred)
        lane.deferred(deferred)
    return outcomes


def _prepare(claimed: list[Delivery]) -> list[lanes.Job]:
    """The POSTs to make for claimed deliveries; deliveries to a disabled endpoint are held
    instead (kept for when it is enabled: recovery.resume_endpoint, the sweeper)."""
    now = timezone.now()
    timestamp = int(now.timestamp())
    keys: dict[str, list[bytes]] = {}
    held, jobs = [], []
    for d in claimed:
        if d.kind == DeliveryKind.ENDPOINT and not d.endpoint.is_active:
            held.append(d)
        else:
            jobs.append(lanes.Job(d, _request(d, timestamp, keys), now))
    _give_back(held, next_attempt_at=None)
    return jobs


def release(jobs: list[lanes.Job], delay: float = 0.0) -> None:
    """Give deferred deliveries back, due in `delay` seconds, without counting an attempt."""
    _give_back([j.delivery for j in jobs], timezone.now() + datetime.timedelta(seconds=delay))


def _give_back(deliveries: list[Delivery], next_attempt_at) -> None:
    """End our lease on deliveries we did not send (still ours: one UPDATE per lease)."""
    for lease in {d.lease for d in deliveries}:
        ids = [d.pk for d in deliveries if d.lease == lease]
        Delivery.objects.filter(pk__in=ids, lease=lease).update(
            lease=None, locked_until=None, next_attempt_at=next_attempt_at
        )


def _pace(jobs: list[lanes.Job]) -> list[lanes.Job]:
    """Keep to the endpoints' rate limits: return the jobs that may go now. The others are
    given back and scheduled for the second their slot is in; those with no slot within the
    horizon are due after it, for the sweeper."""
    limited: dict[str, list[lanes.Job]] = {}
    for job in jobs:
        if job.delivery.kind == DeliveryKind.ENDPOINT and job.delivery.endpoint.rate_limit:
            limited.setdefault(job.delivery.endpoint_id, []).append(job)
    if not limited:
        return jobs
    from .tasks import dispatch

    later: set[lanes.Job] = set()
    for endpoint_id, group in limited.items():
        slots = ratelimit.reserve(endpoint_id, group[0].delivery.endpoint.rate_limit, len(group))
        start = 0
        for delay, count in slots:
            part, start = group[start : start + count], start + count
            if delay > 0:
                release(part, delay)
                later.update(part)
                try:
                    dispatch([_due(j.delivery) for j in part], countdown=delay, reserved=True)
                except Exception as exc:  # they are due in the database: the sweeper sends them
                    logger.warning("rate limit of endpoint %s: broker unavailable (%s)", endpoint_id, exc)
        if start < len(group):  # no slot within the horizon: the sweeper brings them back then
            release(group[start:], max(0.0, settings.WEBHOOK_RATE_LIMIT_HORIZON - settings.WEBHOOK_SWEEP_GRACE))
            later.update(group[start:])
    return [j for j in jobs if j not in later]


def _due(delivery: Delivery) -> tuple[int, int, int]:
    return delivery.pk, delivery.attempt_count, delivery.series_start


def claim_deferred(target: lanes.Target, limit: int) -> tuple[int, list[lanes.Job]]:
    """Lease up to `limit` of the oldest due deliveries to `target` nobody holds; return how
    many were found and the POSTs to make now (fewer, if some are held or rate-limited).
    Retries waiting for their backoff are not due, and stay where they are."""
    kind, where = target
    now = timezone.now()
    rows = Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now).filter(
        Q(locked_until__isnull=True) | Q(locked_until__lt=now)
    )
    rows = rows.filter(kind=kind, **({"endpoint_id": where} if kind == DeliveryKind.ENDPOINT else {"url": where}))
    lease, locked_until = new_lease(limit)
    with transaction.atomic():
        ids = list(
            rows.select_for_update(skip_locked=True).order_by("created_at", "pk").values_list("pk", flat=True)[:limit]
        )
        if not ids:
            return 0, []
        Delivery.objects.filter(pk__in=ids).update(lease=lease, locked_until=locked_until)
    claimed = Delivery.objects.filter(pk__in=ids, lease=lease).select_related("event", "endpoint")
    return len(ids), _pace(_prepare(list(claimed.order_by("created_at", "pk"))))


def record_late(jobs: list[lanes.Job]) -> None:
    """Record attempts that finished in the slow lane, and schedule their retries."""
    from .tasks import continue_failures

    continue_failures(_record(jobs))


def new_lease(count: int = 1) -> tuple[str, datetime.datetime]:
    """A lease token and its expiry for a batch of `count` deliveries: long enough for every
    one of them to take the slowest possible attempt, `WEBHOOK_HTTP_CONCURRENCY` at a time,
    plus a margin. (A lease that ran out mid-batch would let the sweeper hand the rest to
    another worker; outcome writes check the lease, but the POST would be sent twice.)"""
    longest = settings.WEBHOOK_CONNECT_TIMEOUT + max(settings.WEBHOOK_TIMEOUT, settings.STEP_COMPLETE_TIMEOUT)
    rounds = -(-max(count, 1) // settings.WEBHOOK_HTTP_CONCURRENCY)
    seconds = rounds * longest + settings.WEBHOOK_LEASE_MARGIN
    return uuid.uuid4().hex, timezone.now() + datetime.timedelta(seconds=seconds)


def _claim(delivery_ids: list[int], expected_attempt_count: int | None) -> list[Delivery]:
    now = timezone.now()
    lease, locked_until = new_lease(len(delivery_ids))
    claimable = Delivery.objects.filter(pk__in=delivery_ids, status=DeliveryStatus.PENDING).filter(
        Q(locked_until__isnull=True) | Q(locked_until__lt=now)
    )
    if expected_attempt_count is None:
        claimable = claimable.filter(attempt_count=F("series_start"))
    else:
        claimable = claimable.filter(attempt_count=expected_attempt_count)
    if not claimable.update(lease=lease, locked_until=locked_until):
        return []
    return list(Delivery.objects.filter(pk__in=delivery_ids, lease=lease).select_related("event", "endpoint"))


@dataclass(slots=True)
class _Request:
    url: str
    body: bytes
    headers: dict[str, str]
    timeout: float
    error: str = ""  # set when the request could not be built: nothing is sent


def _request(delivery: Delivery, timestamp: int, keys: dict[str, list[bytes]]) -> _Request:
    try:
        return _build_request(delivery, timestamp, keys)
    except Exception as exc:  # e.g. a secret encrypted with a key no longer configured
        logger.exception("delivery %s: cannot build its request", delivery.pk)
        return _Request(delivery.target_url, b"", {}, 0, error=f"cannot build the request: {type(exc).__name__}")


def _build_request(delivery: Delivery, timestamp: int, keys: dict[str, list[bytes]]) -> _Request:
    event = delivery.event
    headers = {
        "Content-Type": "application/json",
        "User-Agent": transport.USER_AGENT,
        "webhook-id": event.id,
        "webhook-timestamp": str(timestamp),
        "X-Letta-Event-Type": event.type,
        "X-Letta-Event-Id": event.id,
        "X-Letta-Timestamp": str(timestamp),
    }
    timeout = settings.WEBHOOK_TIMEOUT
    if delivery.kind == DeliveryKind.ENDPOINT:
        endpoint = delivery.endpoint
        body = event.body.encode()
        if endpoint.pk not in keys:
            keys[endpoint.pk] = endpoint.signing_keys()
        headers.update(signing.signature_headers(keys[endpoint.pk], event.id, timestamp, body))
        headers = {**endpoint.custom_headers(), **headers}
        url = endpoint.url
    else:
        body = delivery.body.encode()
        url = delivery.url
        if delivery.kind == DeliveryKind.STEP_COMPLETE:
            timeout = settings.STEP_COMPLETE_TIMEOUT
            if settings.STEP_COMPLETE_KEY:
                headers["Authorization"] = f"Bearer {settings.STEP_COMPLETE_KEY}"
    return _Request(url, body, headers, timeout)


def _record(jobs: list[lanes.Job]) -> list[Outcome]:
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
                request_headers=_redacted(request.headers),
            )
        )
        delivery.last_attempt_at = job.started
        delivery.last_status_code = response.status_code
        delivery.last_error = response.error
        delivery.lease = None
        delivery.locked_until = None
        outcome = _judge(delivery, response, now)
        if response.status_code == 410 and delivery.kind == DeliveryKind.ENDPOINT:
            gone_endpoints.add(delivery.endpoint_id)
        outcomes.append(outcome)
        _log(delivery, request, response, outcome)
    # Only endpoints that were failing when loaded need their clock reset: no UPDATE otherwise.
    succeeded = {
        d.endpoint_id
        for d in deliveries
        if d.kind == DeliveryKind.ENDPOINT and d.status == "succeeded" and d.endpoint.failing_since is not None
    }
    failed = {d.endpoint_id for d in deliveries if d.kind == DeliveryKind.ENDPOINT and d.status != "succeeded"}
    for last_try in (False, True):
        try:
            with transaction.atomic():  # one commit for the whole batch's log
                relaxed_commit()
                Attempt.objects.bulk_create(attempts)
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
    if gone_endpoints:
        logger.warning("endpoints %s answered 410 Gone: disabled", sorted(gone_endpoints))
    if disabled:
        logger.warning("endpoints %s failed for %s hours: disabled", disabled, settings.WEBHOOK_DISABLE_AFTER_HOURS)
    for delivery, attempt_row in zip(deliveries, attempts, strict=True):
        if delivery.kind in (DeliveryKind.RUN_CALLBACK, DeliveryKind.JOB_CALLBACK):
            signals.callback_attempted.send(sender=Delivery, delivery=delivery, attempt=attempt_row)
    return outcomes


def relaxed_commit() -> None:
    """Let PostgreSQL acknowledge this transaction's COMMIT before its WAL reaches disk.

    Used for the worker's own bookkeeping only (fan-out, attempt log), never for publishing:
    an event the caller committed is durable. If the database itself crashes, the last fraction
    of a second of this bookkeeping can be lost; the deliveries it concerned are then still
    pending, and are sent again once their lease ends: at least once, never zero times. In
    exchange a worker does not wait for a disk flush per batch. Worker processes set this once
    per connection (`relax_session`), which saves the statement here on every batch.
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


def _save_outcomes(deliveries: list[Delivery], leases: list[str | None]) -> None:
    """Write the deliveries' new state: one UPDATE per distinct set of values, so a batch that
    all succeeded (the usual case) is one statement. (Django's bulk_update builds a CASE per
    row and field, and cost more than the HTTP requests themselves.)"""
    groups: dict[tuple, list[int]] = {}
    for d, lease in zip(deliveries, leases, strict=True):
        values = (
            lease,
            d.status,
            d.next_attempt_at,
            d.last_attempt_at,
            d.last_status_code,
            d.last_error,
            d.finished_at,
        )
        groups.setdefault(values, []).append(d.pk)
    for (lease, status, next_at, last_at, code, error, finished), ids in groups.items():
        # Only rows still leased to us: had the lease run out and another worker taken one,
        # its outcome is that worker's to write.
        Delivery.objects.filter(pk__in=ids, lease=lease).update(
            status=status,
            attempt_count=F("attempt_count") + 1,
            next_attempt_at=next_at,
            last_attempt_at=last_at,
            last_status_code=code,
            last_error=error,
            finished_at=finished,
            lease=None,
            locked_until=None,
        )


def _judge(delivery: Delivery, response: transport.Response, now) -> Outcome:
    """Set the delivery's status after an attempt and say what should happen next."""
    code = response.status_code
    made = delivery.attempt_count - delivery.series_start
    outcome = Outcome(delivery.pk, DeliveryStatus.PENDING, series_start=delivery.series_start, attempts_in_series=made)
    if code is not None and 200 <= code < 300:
        outcome.status = DeliveryStatus.SUCCEEDED
    elif response.refused or (code is not None and code not in RETRYABLE_STATUSES and code < 500):
        outcome.status = DeliveryStatus.FAILED
    elif made > settings.WEBHOOK_MAX_RETRIES:
        outcome.status = DeliveryStatus.DEAD
    else:
        outcome.delay = retry_delay(made - 1)
        if response.retry_after and code in (429, 503):
            outcome.retry_after = min(response.retry_after, settings.WEBHOOK_RETRY_BACKOFF_MAX)
            outcome.delay = max(outcome.delay, outcome.retry_after)
    delivery.status = outcome.status
    if outcome.status == DeliveryStatus.PENDING:
        delivery.next_attempt_at = now + datetime.timedelta(seconds=outcome.delay)
    else:
        delivery.next_attempt_at = None
        delivery.finished_at = now
    return outcome


def _redacted(headers: dict[str, str]) -> dict[str, str]:
    return redact_headers(headers)


def _log(delivery, request, response, outcome) -> None:
    what = response.status_code if response.status_code is not None else response.error
    url = _without_query(request.url)
    if outcome.status == DeliveryStatus.SUCCEEDED:
        logger.info("delivery %s to %s: %s in %d ms", delivery.pk, url, what, response.duration_ms)
    elif outcome.status == DeliveryStatus.PENDING:
        logger.warning("delivery %s to %s: %s, retry in %ss", delivery.pk, url, what, outcome.delay)
    else:
        logger.warning("delivery %s to %s: %s, %s", delivery.pk, url, what, outcome.status)


def _without_query(url: str) -> str:
    """A URL fit for the log: receivers put tokens in query strings, and logs travel further
    than the attempt log (which keeps the URL whole, for the endpoint's owner)."""
    base, sep, _ = url.partition("?")
    return f"{base}?[redacted]" if sep else base
