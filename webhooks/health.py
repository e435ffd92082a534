"""Endpoint health: disable an endpoint that keeps failing, or that says it is gone.

As Svix does: an endpoint whose every attempt has failed for WEBHOOK_DISABLE_AFTER_HOURS
(default 5 days) is disabled, with when and why recorded. Its pending deliveries are held,
not dropped, and enabling it again (admin, API) sends them, oldest first. One success
anywhere in that window resets the clock. Costs nothing per delivery on the happy path: the
reset is an UPDATE that matches no row unless the endpoint was failing.
"""

import datetime

from django.conf import settings

from .models import Endpoint


def record_attempts(succeeded: set[str], failed: set[str], now: datetime.datetime) -> list[str]:
    """Note which endpoints answered and which did not in a batch; return those disabled now."""
    failed = failed - succeeded  # reachable in this batch: not failing
    if succeeded:
        Endpoint.objects.filter(pk__in=succeeded, failing_since__isnull=False).update(failing_since=None)
    if not failed:
        return []
    Endpoint.objects.filter(pk__in=failed, failing_since__isnull=True).update(failing_since=now)
    hours = settings.WEBHOOK_DISABLE_AFTER_HOURS
    expired = Endpoint.objects.filter(
        pk__in=failed, is_active=True, failing_since__lte=now - datetime.timedelta(hours=hours)
    )
    disabled = list(expired.values_list("pk", flat=True))
    if disabled:
        expired.filter(pk__in=disabled).disable(f"every attempt failed for {hours:g} hours", now)
    return disabled


def mark_gone(endpoint_ids: set[str], now: datetime.datetime) -> None:
    """The receiver answered 410 Gone: it asked us to stop."""
    Endpoint.objects.filter(pk__in=endpoint_ids, is_active=True).disable("the endpoint answered 410 Gone", now)
