"""Publishing: the one call any code makes to report that something happened.

    from deliveries.events import publish
    publish("agent.step.completed", organization=org, agent=agent, data={...})

The Event row is written in the caller's transaction and its id handed to
the broker only after that transaction commits; the worker then creates one Delivery per
subscribed endpoint (`fanout`). So a rolled-back change publishes nothing, a committed one
always has its event on record even if the broker is down (the due loop takes it from there),
and the save itself pays for one INSERT.
"""

import dataclasses
import datetime
import logging

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from . import enqueue, fanout, metrics
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


TYPE_MAX = Event._meta.get_field("type").max_length
DEDUPE_KEY_MAX = Event._meta.get_field("dedupe_key").max_length


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
        if len(event_type) > TYPE_MAX or (dedupe_key and len(dedupe_key) > DEDUPE_KEY_MAX):
            raise ValueError(f"event type or dedupe key too long: {event_type[:TYPE_MAX]!r}")
        if not _insert(event):
            logger.debug("event %s already published (%s)", event_type, dedupe_key)
            return None
    except Exception:
        logger.exception("could not record event %s", event_type)
        return None
    transaction.on_commit(lambda: _committed(event))
    return event


def _committed(event: Event) -> None:
    metrics.event_published(event.type)
    enqueue.submit_events([event.pk])


def _insert(event: Event) -> bool:
    """INSERT the event unless its dedupe key is taken; say whether it was inserted.

    One statement, no savepoint: `ON CONFLICT DO NOTHING` turns a duplicate key into "no row"
    instead of an error, and nothing else in it can fail a constraint (the id is a fresh ULID,
    lengths are checked before, foreign keys are checked at commit). A savepoint would cost
    two more round trips on every save that publishes.
    """
    fields = Event._meta.concrete_fields
    values = [f.get_db_prep_save(f.pre_save(event, True), connection) for f in fields]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(Event._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) ON CONFLICT DO NOTHING"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        inserted = cursor.rowcount == 1  # not RETURNING: SQLite has it only from 3.35
    event._state.adding = not inserted
    return inserted


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
