"""Publishing: the one call any code makes to report that something happened.

    from deliveries.events import publish
    publish("agent.step.completed", organization=org, agent=agent, data={...})

The Event row is written in the caller's transaction (inside a savepoint) and its id handed to
the broker only after that transaction commits; the worker then creates one Delivery per
subscribed endpoint (`fanout`). So a rolled-back change publishes nothing, a committed one
always has its event on record even if the broker is down (the sweeper takes it from there),
and the save itself pays for one INSERT.
"""

import dataclasses
import datetime
import logging

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import enqueue, fanout
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
    endpoint=None,
) -> Event | None:
    """Record an event for delivery; return the Event, or None if nothing was recorded.

    Never raises and never blocks on the network: the caller's own work must not fail
    because of webhooks (seed 000, "Common Behavior"). Failures are logged. With
    `dedupe_key`, a second publish with the same key (in any process) records nothing.
    `organization`, `agent` and `endpoint` may be model instances or ids. `endpoint`, if
    given, replaces the subscriptions: the event goes to that endpoint only (a test event).
    """
    organization_id = getattr(organization, "pk", organization)
    agent_id = getattr(agent, "pk", agent)
    now = timezone.now()
    event = Event(type=event_type, organization_id=organization_id, agent_id=agent_id, dedupe_key=dedupe_key)
    event.created_at = now
    try:
        event.targets = [{"kind": t.kind, "url": t.url, "body": dumps(t.body)} for t in targets]
        if endpoint is not None:
            event.targets.append({"endpoint": getattr(endpoint, "pk", endpoint)})
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
        with transaction.atomic():
            event.save(force_insert=True)
    except IntegrityError:
        if dedupe_key and Event.objects.filter(dedupe_key=dedupe_key).exists():
            logger.debug("event %s already published (%s)", event_type, dedupe_key)
        else:
            logger.exception("could not record event %s", event_type)
        return None
    except Exception:
        logger.exception("could not record event %s", event_type)
        return None
    transaction.on_commit(lambda: enqueue.submit_events([event.pk]))
    return event


def send_test(endpoint) -> Delivery:
    """Send a `webhook.test` event to one endpoint through the normal pipeline; return its
    delivery (fanned out here, so the caller can follow it at once)."""
    with transaction.atomic():  # fanned out before the worker hears of the event
        event = publish(
            "webhook.test",
            organization=endpoint.organization_id,
            data={"endpoint_id": endpoint.pk, "message": "Test event from agent-webhooks: your endpoint is reachable."},
            endpoint=endpoint,
        )
        if event is None:
            raise RuntimeError("could not record the test event (see the log)")
        (delivery,) = fanout.fan_out([event.pk])
        # Fanned out here, leased to nobody who will send it: free it for the first attempt.
        Delivery.objects.filter(pk=delivery.pk).update(lease=None, locked_until=None)
        transaction.on_commit(lambda: enqueue.submit([delivery.pk]))
    return Delivery.objects.get(pk=delivery.pk)
