"""Reads the admin and the API share: endpoint health, waiting for a test attempt."""

import datetime
import time

from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import Attempt, Delivery, DeliveryStatus


def with_delivery_stats(endpoints: QuerySet) -> QuerySet:
    """Annotate endpoints with `last_delivery_status`, `deliveries_24h` and `succeeded_24h`.

    Correlated subqueries, each answered from the (endpoint, created_at) index over the last
    24 hours only: a page of endpoints costs one query, whatever the size of the log.
    """
    since = timezone.now() - datetime.timedelta(hours=24)
    recent = Delivery.objects.filter(endpoint=OuterRef("pk"), created_at__gte=since)

    def count(rows):
        return Subquery(rows.order_by().values("endpoint").annotate(n=Count("pk")).values("n")[:1])

    last = Delivery.objects.filter(endpoint=OuterRef("pk")).order_by("-created_at", "-pk").values("status")[:1]
    return endpoints.annotate(
        last_delivery_status=Subquery(last),
        deliveries_24h=Coalesce(count(recent), 0),
        succeeded_24h=Coalesce(count(recent.filter(status=DeliveryStatus.SUCCEEDED)), 0),
    )


def success_rate(endpoint) -> float | None:
    """Share of the last 24 h's finished-or-not deliveries that succeeded; None if there were none."""
    total = getattr(endpoint, "deliveries_24h", 0)
    return None if not total else endpoint.succeeded_24h / total


def wait_for_first_attempt(delivery: Delivery, timeout: float) -> Attempt | None:
    """Poll until the delivery's first attempt is logged, up to `timeout` seconds (capped at 30)."""
    deadline = time.monotonic() + min(max(timeout, 0.0), 30.0)
    while True:
        attempt = Attempt.objects.filter(delivery=delivery).order_by("number").first()
        if attempt or time.monotonic() >= deadline:
            return attempt
        time.sleep(0.05)
