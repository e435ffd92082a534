"""Getting stuck deliveries moving again, and forgetting old attempts.

The broker is the fast path, the database the record: any delivery that is pending, due
more than WEBHOOK_SWEEP_GRACE seconds ago and not leased by a worker has lost its message
(broker down at publish time, broker restarted, worker killed) and is enqueued again. A
message that was only late is harmless: the attempt claim lets one of the two through.
"""

import datetime
import logging
import time

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from .models import Attempt, Delivery, DeliveryStatus

logger = logging.getLogger(__name__)

SWEEP_CHUNK = 2000
SWEEP_TIME_BUDGET = 20.0


def sweep_due() -> int:
    """Enqueue overdue deliveries; return how many were enqueued."""
    from .tasks import deliver, deliver_batch

    started = time.monotonic()
    total = 0
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
        fresh = [pk for pk, count, _ in due if count == 0]
        try:
            for i in range(0, len(fresh), settings.WEBHOOK_BATCH_SIZE):
                deliver_batch.delay(fresh[i : i + settings.WEBHOOK_BATCH_SIZE])
            for pk, count, start in due:
                if count:
                    deliver.apply_async((pk, start), retries=count - start)
        except Exception as exc:
            logger.warning("sweep: broker unavailable (%s); will try again next sweep", exc)
            break
        total += len(due)
        if len(due) < SWEEP_CHUNK:
            break
    if total:
        logger.info("sweep: re-enqueued %d overdue deliveries", total)
    return total


def purge_attempts() -> int:
    """Delete attempt rows older than WEBHOOK_ATTEMPT_RETENTION_DAYS (0 keeps them all)."""
    days = settings.WEBHOOK_ATTEMPT_RETENTION_DAYS
    if not days:
        return 0
    deleted, _ = Attempt.objects.filter(started_at__lt=timezone.now() - datetime.timedelta(days=days)).delete()
    if deleted:
        logger.info("purged %d attempts older than %d days", deleted, days)
    return deleted
