"""Getting stuck deliveries moving again, and forgetting old attempts.

The broker is the fast path, the database the record. An event not fanned out, or a delivery
that is pending, due more than WEBHOOK_SWEEP_GRACE seconds ago and not leased by a worker,
has lost its message (broker down at publish time, broker restarted, worker killed) and is
enqueued again. A message that was only late is harmless: fan-out and the attempt claim let
one of the two through.
"""

import datetime
import logging
import time

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from . import enqueue
from .models import Attempt, Delivery, DeliveryStatus, Event

logger = logging.getLogger(__name__)

SWEEP_CHUNK = 2000
SWEEP_TIME_BUDGET = 20.0


def sweep_due() -> int:
    """Enqueue stranded events and overdue deliveries; return how many were enqueued."""
    from .tasks import deliver_events, dispatch

    started = time.monotonic()
    total = 0
    _release_held(timezone.now())
    while time.monotonic() - started < SWEEP_TIME_BUDGET:
        now = timezone.now()
        overdue = now - datetime.timedelta(seconds=settings.WEBHOOK_SWEEP_GRACE)
        stranded = list(
            Event.objects.filter(fanned_out_at__isnull=True, created_at__lte=overdue)
            .filter(Q(swept_at__isnull=True) | Q(swept_at__lte=overdue))
            .order_by("created_at")
            .values_list("pk", flat=True)[:SWEEP_CHUNK]
        )
        if not stranded:
            break
        Event.objects.filter(pk__in=stranded).update(swept_at=now)
        try:
            for i in range(0, len(stranded), settings.WEBHOOK_BATCH_SIZE):
                deliver_events.delay(stranded[i : i + settings.WEBHOOK_BATCH_SIZE])
        except Exception as exc:
            logger.warning("sweep: broker unavailable (%s); will try again next sweep", exc)
            return total
        total += len(stranded)
        if len(stranded) < SWEEP_CHUNK:
            break
    while time.monotonic() - started < SWEEP_TIME_BUDGET:
        now = timezone.now()
        due = list(
            Delivery.objects.filter(
                status=DeliveryStatus.PENDING,
                next_attempt_at__lte=now - datetime.timedelta(seconds=settings.WEBHOOK_SWEEP_GRACE),
            )
            .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
            .order_by("next_attempt_at")
            .values_list("pk", "attempt_count", "series_start")[:SWEEP_CHUNK]
        )
        if not due:
            break
        # Due "now" from here on: the next sweep leaves them alone for another grace period.
        Delivery.objects.filter(pk__in=[pk for pk, _, _ in due], status=DeliveryStatus.PENDING).update(
            next_attempt_at=now
        )
        try:
            dispatch(due)
        except Exception as exc:
            logger.warning("sweep: broker unavailable (%s); will try again next sweep", exc)
            break
        total += len(due)
        if len(due) < SWEEP_CHUNK:
            break
    if total:
        logger.info("sweep: re-enqueued %d stranded events and overdue deliveries", total)
    return total


def _release_held(now) -> None:
    """Deliveries held while their endpoint was disabled, whose endpoint is active again, are
    made due. (resume_endpoint normally sends them; this catches a worker that held one just
    as the endpoint was re-enabled.) The UPDATE touches one table only: nothing here waits on
    two tables' locks at once."""
    from webhooks.models import Endpoint

    free = Q(locked_until__isnull=True) | Q(locked_until__lt=now)
    active = Endpoint.objects.filter(is_active=True).values("pk")
    # Only endpoints that are active: rows of endpoints still disabled must not fill the chunk.
    held = list(
        Delivery.objects.filter(free, status=DeliveryStatus.PENDING, next_attempt_at__isnull=True)
        .filter(endpoint__in=active)
        .values_list("pk", flat=True)[:SWEEP_CHUNK]
    )
    if held:
        Delivery.objects.filter(pk__in=held, next_attempt_at__isnull=True).update(
            next_attempt_at=now - datetime.timedelta(seconds=settings.WEBHOOK_SWEEP_GRACE)
        )


def purge_attempts() -> int:
    """Delete attempt rows older than WEBHOOK_ATTEMPT_RETENTION_DAYS (0 keeps them all)."""
    days = settings.WEBHOOK_ATTEMPT_RETENTION_DAYS
    if not days:
        return 0
    deleted, _ = Attempt.objects.filter(started_at__lt=timezone.now() - datetime.timedelta(days=days)).delete()
    if deleted:
        logger.info("purged %d attempts older than %d days", deleted, days)
    return deleted


class NotRetryable(ValueError):
    """A manual retry of a delivery that is still pending, or succeeded without `force`."""


def retry_delivery(delivery: Delivery, *, force: bool = False) -> Delivery:
    """Start a fresh series of attempts now (the admin action, the API and the CLI call this).

    Failed and dead deliveries may be retried; a succeeded one only with `force` (it will be
    POSTed again); a pending one is already on its way and is refused.
    """
    allowed = [DeliveryStatus.FAILED, DeliveryStatus.DEAD] + ([DeliveryStatus.SUCCEEDED] if force else [])
    restarted = _restart(Delivery.objects.filter(pk=delivery.pk, status__in=allowed))
    if not restarted:
        delivery.refresh_from_db()
        if delivery.status == DeliveryStatus.SUCCEEDED:
            raise NotRetryable("delivery already succeeded; pass force to send it again")
        raise NotRetryable(f"delivery is {delivery.status}: it is already being delivered")
    delivery.refresh_from_db()
    return delivery


def recover_endpoint(endpoint, since: datetime.datetime) -> int:
    """Retry every failed or dead delivery of `endpoint` created since `since`; return how many."""
    rows = Delivery.objects.filter(
        endpoint=endpoint, created_at__gte=since, status__in=[DeliveryStatus.FAILED, DeliveryStatus.DEAD]
    )
    return _restart(rows)


def resume_endpoint(endpoint) -> int:
    """Re-enable an endpoint and send the deliveries held while it was disabled, oldest first."""
    from webhooks.models import Endpoint

    Endpoint.objects.filter(pk=endpoint.pk).enable()
    endpoint.refresh_from_db()
    held = Delivery.objects.filter(endpoint=endpoint, status=DeliveryStatus.PENDING, next_attempt_at__isnull=True)
    return _restart(held.order_by("created_at", "pk"))


def _restart(rows) -> int:
    """Make `rows` pending at the start of a new series and hand them to the broker."""
    ids = list(rows.values_list("pk", flat=True))
    updated = rows.filter(pk__in=ids).update(
        status=DeliveryStatus.PENDING,
        series_start=F("attempt_count"),
        next_attempt_at=timezone.now(),
        finished_at=None,
        lease=None,
        locked_until=None,
    )
    if updated:
        _submit(ids)
    return updated


def _submit(ids: list[int]) -> None:
    if ids:
        transaction.on_commit(lambda: enqueue.submit(ids))
