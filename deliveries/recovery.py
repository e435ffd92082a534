"""What operators do to deliveries, and the housekeeping: retry now, recover an endpoint's
failures, disable an endpoint and resume it, release held deliveries, forget old attempts.

The admin actions, the API and the CLI call these functions; none of them sends anything
itself. They make deliveries due (`next_attempt_at` now) and hand the ids to the broker for
an immediate attempt; if the broker is away, the due loop finds them all the same.
"""

import datetime
import logging
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from webhooks.models import Endpoint

from . import enqueue, fanout, operational, ordering
from .models import Attempt, Delivery, DeliveryKind, DeliveryStatus, Event, PublishIdempotencyKey
from .store import lease_is_free

logger = logging.getLogger(__name__)

RELEASE_CHUNK = 2000
CHUNK = 5000
SUBMIT_AT_ONCE = 500
# Deliveries to an endpoint of an event over WEBHOOK_MAX_PAYLOAD_BYTES: created failed and
# never sent (the event keeps a stand-in, not its data), so never restarted either.
UNSENDABLE = Q(kind=DeliveryKind.ENDPOINT, event__oversize_bytes__isnull=False)
# Deliveries of an event whose payload expired or was erased (deliveries/retention.py): there
# is nothing left to send, to any kind of target.
PAYLOAD_GONE = ~Q(event__payload_removed="")


class NotRetryable(ValueError):
    """A manual retry that cannot be done; `reason` says why, the message explains it."""

    SUCCEEDED, IN_PROGRESS, HELD = "already succeeded", "an attempt is being made right now", "held"
    WAITING = "waiting for its turn"
    TOO_LARGE = "payload too large"
    PAYLOAD_GONE = "payload removed"

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def retry_delivery(delivery: Delivery, *, force: bool = False) -> Delivery:
    """Send `delivery` now; return it as it is then.

    Failed and dead deliveries start a fresh series of attempts (the whole schedule again); a
    succeeded one only with `force` (it will be POSTed again). A delivery waiting for a retry
    is sent now, as the next attempt of its series: if that fails too, the schedule goes on
    from there. Raises NotRetryable for one being sent right now, held by a disabled
    endpoint, whose event is too large to send to an endpoint, or whose event's payload expired
    or was erased."""
    allowed = [DeliveryStatus.FAILED, DeliveryStatus.DEAD] + ([DeliveryStatus.SUCCEEDED] if force else [])
    restarted = _restart(
        Delivery.objects.filter(pk=delivery.pk, status__in=allowed).exclude(UNSENDABLE).exclude(PAYLOAD_GONE)
    )
    if not restarted and not _make_due(Delivery.objects.filter(pk=delivery.pk)):
        delivery.refresh_from_db()
        gone = Event.objects.filter(pk=delivery.event_id).only("payload_removed", "payload_removed_at").first()
        if gone is not None and gone.payload_removed:
            why = f"nothing to send: its event's payload is gone ({gone.payload_gone})"
            raise NotRetryable(NotRetryable.PAYLOAD_GONE, why)
        if delivery.status == DeliveryStatus.SUCCEEDED:
            raise NotRetryable(NotRetryable.SUCCEEDED, "delivery already succeeded; pass force to send it again")
        if size := _oversize(delivery):
            why = f"{fanout.too_large(size)}; its event was recorded without its data, so it cannot be sent"
            raise NotRetryable(NotRetryable.TOO_LARGE, why)
        if delivery.status == DeliveryStatus.PENDING and delivery.waiting:
            raise NotRetryable(
                NotRetryable.WAITING,
                "delivery is waiting for its turn: its endpoint delivers runs in order, and the run's earlier "
                "delivery has not finished; it goes as soon as that one succeeds, fails or is dead",
            )
        if delivery.status == DeliveryStatus.PENDING and delivery.next_attempt_at is None:
            raise NotRetryable(
                NotRetryable.HELD, "delivery is held: its endpoint is disabled; enable the endpoint to send it"
            )
        # Being sent right now (or it just finished, between our two looks).
        raise NotRetryable(NotRetryable.IN_PROGRESS, "an attempt of this delivery is being made right now")
    delivery.refresh_from_db()
    return delivery


def _oversize(delivery: Delivery) -> int | None:
    """The size of the event of an endpoint delivery, if it was too large to send."""
    if delivery.kind != DeliveryKind.ENDPOINT:
        return None
    return Event.objects.filter(pk=delivery.event_id).values_list("oversize_bytes", flat=True).first()


def retry_pending(endpoint) -> int:
    """Send now every delivery of `endpoint` that waits for a retry (after fixing the
    receiver, say); return how many. Held deliveries of a disabled endpoint are not among
    them: enabling the endpoint sends those."""
    return _make_due(Delivery.objects.filter(endpoint=endpoint))


def _make_due(rows) -> int:
    """Make the pending, unheld, unleased deliveries among `rows` due now and submit them."""
    now = timezone.now()
    waiting = rows.filter(lease_is_free(now), status=DeliveryStatus.PENDING, next_attempt_at__isnull=False)
    total = 0
    for ids in _chunks(waiting):
        # Those due already keep their time (and their place in line); those waiting become due.
        waiting.filter(pk__in=ids, next_attempt_at__gt=now).update(next_attempt_at=now, slot_reserved=False)
        _submit(ids, total)
        total += len(ids)
    return total


def recoverable(endpoint, since: datetime.datetime):
    """The deliveries `recover_endpoint` would retry: `endpoint`'s failed or dead ones created
    since `since`, less those of events too large to send (they would fail again, unsent)."""
    rows = Delivery.objects.filter(
        endpoint=endpoint, created_at__gte=since, status__in=[DeliveryStatus.FAILED, DeliveryStatus.DEAD]
    )
    return rows.exclude(UNSENDABLE).exclude(PAYLOAD_GONE)


def recover_endpoint(endpoint, since: datetime.datetime, progress: Callable[[int], None] | None = None) -> int:
    """Retry every failed or dead delivery of `endpoint` created since `since` (`recoverable`);
    return how many. `progress`, if given, is called with each chunk's count as it is done
    (thousands of deliveries take a while: the CLI shows a bar)."""
    return _restart(recoverable(endpoint, since), progress)


def disable_endpoints(endpoints, reason: str) -> int:
    """Disable those of `endpoints` (a queryset) that are active, recording why, and report
    each (`endpoint.disabled`); return how many. Their deliveries are held from now on."""
    with transaction.atomic():
        disabled = endpoints.disable(reason)
        for endpoint in disabled:
            operational.endpoint_disabled(endpoint)
    return len(disabled)


def resume_endpoint(endpoint) -> int:
    """Re-enable an endpoint and send the deliveries held while it was disabled, oldest first;
    return how many. Reported (`endpoint.enabled`) if it was disabled."""
    with transaction.atomic():
        enabled = Endpoint.objects.filter(pk=endpoint.pk).enable()
        endpoint.refresh_from_db()
        held = Delivery.objects.filter(
            endpoint=endpoint, status=DeliveryStatus.PENDING, next_attempt_at__isnull=True, waiting=False
        )
        released = _restart(held.order_by("created_at", "pk"))
        if enabled:
            operational.endpoint_enabled(endpoint, released)
    return released


def release_held() -> int:
    """Make due the deliveries held while their endpoint was disabled, whose endpoint is
    active again (resume_endpoint normally sends them; this catches a worker that held one
    just as the endpoint was re-enabled). The due loop calls this now and then. The UPDATE
    touches one table only: nothing here waits on two tables' locks at once."""
    now = timezone.now()
    active = Endpoint.objects.filter(is_active=True).values("pk")
    # Only endpoints that are active: rows of endpoints still disabled must not fill the chunk.
    held = list(
        Delivery.objects.filter(lease_is_free(now), status=DeliveryStatus.PENDING, next_attempt_at__isnull=True)
        .filter(endpoint__in=active, waiting=False)
        .values_list("pk", flat=True)[:RELEASE_CHUNK]
    )
    if not held:
        return 0
    return Delivery.objects.filter(pk__in=held, next_attempt_at__isnull=True).update(next_attempt_at=now)


def purge_attempts() -> int:
    """Delete attempt rows older than WEBHOOK_ATTEMPT_RETENTION_DAYS (0 keeps them all)."""
    days = settings.WEBHOOK_ATTEMPT_RETENTION_DAYS
    if not days:
        return 0
    deleted, _ = Attempt.objects.filter(started_at__lt=timezone.now() - datetime.timedelta(days=days)).delete()
    if deleted:
        logger.info("purged %d attempts older than %d days", deleted, days)
    return deleted


def purge_idempotency_keys() -> int:
    """Delete the Idempotency-Keys of publishes over HTTP older than their window (24 hours,
    `PublishIdempotencyKey.KEPT_FOR`): past it, the key publishes afresh anyway."""
    cutoff = timezone.now() - PublishIdempotencyKey.KEPT_FOR
    deleted, _ = PublishIdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    if deleted:
        logger.info("purged %d idempotency keys older than %s", deleted, PublishIdempotencyKey.KEPT_FOR)
    return deleted


def _restart(rows, progress: Callable[[int], None] | None = None) -> int:
    """Make `rows` pending at the start of a new series, due now, and hand them to the broker;
    report each chunk done to `progress`. Those to an endpoint that delivers runs in order go
    in their run's order again (ordering.py): each waits for its turn, the lowest goes now."""
    total = 0
    for ids in _chunks(rows):
        with transaction.atomic():
            updated = rows.filter(pk__in=ids).update(
                status=DeliveryStatus.PENDING,
                series_start=F("attempt_count"),
                next_attempt_at=timezone.now(),
                finished_at=None,
                lease=None,
                locked_until=None,
                slot_reserved=False,
            )
            ordered = Delivery.objects.filter(pk__in=ids, run_id__isnull=False)
            if runs := set(ordered.values_list("run_id", flat=True)):
                ordered.update(waiting=True, next_attempt_at=None, skipped_event_ids=None)
                ordering.settle(runs)
        _submit(ids, total)
        total += updated
        if progress is not None:
            progress(updated)
    return total


def _chunks(rows):
    """The ids of `rows` in chunks of CHUNK, by primary key: an endpoint may have 100,000
    deliveries to retry, and one statement takes at most 65,535 parameters."""
    last = 0
    while ids := list(rows.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:CHUNK]):
        yield ids
        last = ids[-1]


def _submit(ids: list[int], already: int = 0) -> None:
    """Hand the first SUBMIT_AT_ONCE of a retry to the broker for an attempt within
    milliseconds; the rest are due, and the due loops take them a batch at a time (a message
    per 50 of 100,000 would only race them)."""
    ids = ids[: max(0, SUBMIT_AT_ONCE - already)]
    if ids:
        transaction.on_commit(lambda: enqueue.submit(ids))
