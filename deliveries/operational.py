"""Operational events: what the service tells the people running it about its own deliveries.

    endpoint.disabled   an endpoint was disabled: by an operator, after a 410 Gone, or after
                        every attempt failed for WEBHOOK_DISABLE_AFTER_HOURS
    endpoint.enabled    a disabled endpoint was enabled again; its held deliveries are being sent
    endpoint.failing    an endpoint's attempts failed WEBHOOK_FAILING_AFTER_FAILURES times in a
                        row (at most once per endpoint per WEBHOOK_FAILING_WINDOW)
    delivery.dead       a delivery's attempts ran out

They are events like any other, through `publish`: written in the transaction of the change
they report (once per cause, and never for a change that was rolled back), fanned out to the
endpoints whose filter names them (an empty filter does not: `Endpoint.receives`), signed and
retried. Their organization is the endpoint's; they have no agent.

No loops: a delivery of an operational event that dies publishes nothing about itself. Its
attempts do count towards its endpoint's health like any other's, because that health says
whether the receiver answers, whatever it is sent: an endpoint that takes only operational
events is still disabled after days of failing, rather than retried forever, and other
operators' endpoints hear of it. That is bounded: `endpoint.failing` fires when a run of
failures crosses the threshold (once per run, and at most once per window), `endpoint.disabled`
once per disable, and a disabled endpoint is sent nothing.
"""

import datetime
import logging

from django.conf import settings
from django.utils import timezone

from webhooks.catalog import OPERATIONAL_EVENT_TYPES
from webhooks.health import Changes
from webhooks.models import Endpoint, redact_url

from .events import isoformat, publish
from .models import Delivery, DeliveryStatus

logger = logging.getLogger(__name__)


def endpoint_disabled(endpoint: Endpoint) -> None:
    """Report an endpoint just disabled (as `EndpointQuerySet.disable` returns it)."""
    data = {"reason": endpoint.disabled_reason, "disabled_at": isoformat(endpoint.disabled_at)}
    _publish_about(endpoint, "endpoint.disabled", data)


def endpoint_enabled(endpoint: Endpoint, released: int | None = None) -> None:
    """Report an endpoint just enabled again, and how many held deliveries that released."""
    _publish_about(endpoint, "endpoint.enabled", {"deliveries_released": released})


def endpoint_failing(endpoint: Endpoint, last: Delivery, now: datetime.datetime) -> None:
    """Report an endpoint whose failures in a row just crossed WEBHOOK_FAILING_AFTER_FAILURES;
    `last` is one of its deliveries that failed in the batch that crossed it."""
    bucket = int(now.timestamp() // settings.WEBHOOK_FAILING_WINDOW)
    data = {
        "consecutive_failures": endpoint.consecutive_failures,
        "failing_since": isoformat(endpoint.failing_since) if endpoint.failing_since else None,
        "last_status_code": last.last_status_code,
        "last_error": last.last_error,
    }
    _publish_about(endpoint, "endpoint.failing", data, dedupe_key=f"endpoint.failing:{endpoint.pk}:{bucket}")


def delivery_dead(delivery: Delivery) -> None:
    """Report a delivery whose attempts just ran out (with its `event` loaded), unless it
    carried an operational event: those die silently, or a dead receiver of `delivery.dead`
    would be sent a `delivery.dead` about each one, for ever."""
    event = delivery.event
    if event.type in OPERATIONAL_EVENT_TYPES:
        return
    data = {
        "delivery_id": delivery.pk,
        "event_id": event.pk,
        "event_type": event.type,
        "endpoint_id": delivery.endpoint_id,
        "attempts": delivery.attempt_count,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
    }
    # Per attempt count: a dead delivery retried by hand can die again, and that is news again.
    key = f"delivery.dead:{delivery.pk}:{delivery.attempt_count}"
    publish("delivery.dead", organization=event.organization_id, data=data, dedupe_key=key)


def report_outcomes(sender, deliveries: list[Delivery], changes: Changes, **kwargs) -> None:
    """`signals.outcomes_recorded` receiver: report what a batch just recorded changed, in its
    transaction. Runs on every batch: a loop over the deliveries, and nothing else unless
    something died, was disabled or crossed the failing threshold. Never raises: a report
    that cannot be made is logged, and the batch's log is written all the same."""
    try:
        for endpoint in changes.disabled:
            endpoint_disabled(endpoint)
        if changes.failing:
            now = timezone.now()
            last = {d.endpoint_id: d for d in deliveries}
            for endpoint in changes.failing:
                endpoint_failing(endpoint, last[endpoint.pk], now)
        for delivery in deliveries:
            if delivery.status == DeliveryStatus.DEAD:
                delivery_dead(delivery)
    except Exception:
        logger.exception("could not report the operational events of a batch")


def _publish_about(endpoint: Endpoint, event_type: str, data: dict, dedupe_key: str | None = None) -> None:
    data = {"endpoint_id": endpoint.pk, "url": redact_url(endpoint.url), **data}
    publish(event_type, organization=endpoint.organization_id, data=data, dedupe_key=dedupe_key)
