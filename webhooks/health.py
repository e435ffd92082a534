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


def record_attempts(
    succeeded: set[str], failed: set[str], now: datetime.datetime, loaded: list[Endpoint] = ()
) -> list[str]:
    """Note which endpoints answered and which did not in a batch; return those disabled now.

    `loaded`: the endpoints as the batch loaded them (moments ago). Their clocks tell which
    statements could change anything, so a batch of an endpoint that keeps failing, or keeps
    succeeding, costs no query here."""
    clocks = {e.pk: e.failing_since for e in loaded}
    hours = settings.WEBHOOK_DISABLE_AFTER_HOURS
    window_start = now - datetime.timedelta(hours=hours)
    failed = failed - succeeded  # reachable in this batch: not failing
    reset = {e for e in succeeded if e not in clocks or clocks[e] is not None}
    if reset:
        Endpoint.objects.filter(pk__in=reset, failing_since__isnull=False).update(failing_since=None)
    started = {e for e in failed if clocks.get(e) is None}
    if started:
        Endpoint.objects.filter(pk__in=started, failing_since__isnull=True).update(failing_since=now)
    due = {e for e in failed if e not in clocks or (clocks[e] is not None and clocks[e] <= window_start)}
    if not due:
        return []
    expired = Endpoint.objects.filter(pk__in=due, is_active=True, failing_since__lte=window_start)
    disabled = list(expired.values_list("pk", flat=True))
    if disabled:
        expired.filter(pk__in=disabled).disable(f"every attempt failed for {hours:g} hours", now)
    return disabled


def mark_gone(endpoint_ids: set[str], now: datetime.datetime) -> None:
    """The receiver answered 410 Gone: it asked us to stop."""
    Endpoint.objects.filter(pk__in=endpoint_ids, is_active=True).disable("the endpoint answered 410 Gone", now)
