"""Publishing: the one call any code makes to report that something happened.

    from deliveries.events import publish
    publish("agent.step.completed", organization=org, agent=agent, data={...})

The event and one Delivery per subscribed endpoint are written in the caller's transaction
(inside a savepoint), and the delivery ids are handed to the broker only after that
transaction commits. So a rolled-back change publishes nothing, and a change that committed
always has its deliveries on record, even if the broker is down: the sweeper sends them.
"""

import dataclasses
import datetime
import logging

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from webhooks.models import Endpoint

from . import enqueue
from .models import Delivery, DeliveryKind, Event

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Target:
    """A destination that is not an Endpoint: seed 000's STEP_COMPLETE_WEBHOOK or a run/job
    callback_url. It gets its own body instead of the event envelope."""

    kind: DeliveryKind
    url: str
    body: dict


class PayloadTooLarge(ValueError):
    pass


def isoformat(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def dumps(value) -> str:
    return orjson.dumps(value, default=str).decode()


def publish(
    event_type: str,
    *,
    organization,
    agent=None,
    data: dict,
    dedupe_key: str | None = None,
    targets: tuple[Target, ...] = (),
    endpoints: list[Endpoint] | None = None,
) -> Event | None:
    """Record an event and its deliveries; return the Event, or None if nothing was recorded.

    Never raises and never blocks on the network: the caller's own work must not fail
    because of webhooks (seed 000, "Common Behavior"). Failures are logged. With
    `dedupe_key`, a second publish with the same key (in any process) records nothing.
    `organization` and `agent` may be model instances or ids. `endpoints`, if given, replaces
    the subscription lookup (a test event goes to the one endpoint it tests).
    """
    organization_id = getattr(organization, "pk", organization)
    agent_id = getattr(agent, "pk", agent)
    try:
        with transaction.atomic():
            event, delivery_ids = _record(event_type, organization_id, agent_id, data, dedupe_key, targets, endpoints)
    except IntegrityError:
        if dedupe_key and Event.objects.filter(dedupe_key=dedupe_key).exists():
            logger.debug("event %s already published (%s)", event_type, dedupe_key)
        else:
            logger.exception("could not record event %s", event_type)
        return None
    except Exception:
        logger.exception("could not record event %s", event_type)
        return None
    if delivery_ids:
        transaction.on_commit(lambda: enqueue.submit(delivery_ids))
    return event


def _record(event_type, organization_id, agent_id, data, dedupe_key, targets, endpoints) -> tuple[Event, list[int]]:
    now = timezone.now()
    event = Event(type=event_type, organization_id=organization_id, agent_id=agent_id, dedupe_key=dedupe_key)
    event.created_at = now
    event.body = dumps(
        {
            "event_id": event.id,
            "event_type": event_type,
            "timestamp": isoformat(now),
            "agent_id": agent_id,
            "organization_id": organization_id,
            "data": data,
        }
    )
    if len(event.body) > settings.WEBHOOK_MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"{event_type} payload is {len(event.body)} bytes, over WEBHOOK_MAX_PAYLOAD_BYTES "
            f"({settings.WEBHOOK_MAX_PAYLOAD_BYTES})"
        )
    event.save(force_insert=True)
    if endpoints is None:
        endpoints = Endpoint.objects.subscribed(organization_id, agent_id, event_type)
    deliveries = [Delivery(event=event, endpoint_id=ep.pk, created_at=now, next_attempt_at=now) for ep in endpoints]
    deliveries += [
        Delivery(event=event, kind=t.kind, url=t.url, body=dumps(t.body), created_at=now, next_attempt_at=now)
        for t in targets
    ]
    if deliveries:
        Delivery.objects.bulk_create(deliveries)
    return event, [d.pk for d in deliveries]


def send_test(endpoint: Endpoint) -> Delivery:
    """Send a `webhook.test` event to one endpoint through the normal pipeline."""
    event = publish(
        "webhook.test",
        organization=endpoint.organization_id,
        data={"endpoint_id": endpoint.pk, "message": "Test event from agent-webhooks: your endpoint is reachable."},
        endpoints=[endpoint],
    )
    if event is None:
        raise RuntimeError("could not record the test event (see the log)")
    return event.deliveries.get()
