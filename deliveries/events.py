"""Publishing: the one call any code makes to report that something happened.

    from deliveries.events import publish
    publish("agent.step.completed", organization=org, agent=agent, data={...})

The Event row is written in the caller's transaction and its id handed to
the broker only after that transaction commits; the worker then creates one Delivery per
subscribed endpoint (`fanout`). So a rolled-back change publishes nothing, a committed one
always has its event on record even if the broker is down (the due loop takes it from there),
and the save itself pays for one INSERT.

An event of a run, or of an agent outside runs, is numbered in that stream (`run_id`,
`sequence`, `previous_event_id` in the envelope and on the row): one more statement, an upsert
of the stream's counter in the same transaction (streams.py), so numbers are gapless in commit
and rollback alike. An event of neither has no number and pays nothing.

An event whose envelope is over WEBHOOK_MAX_PAYLOAD_BYTES is still recorded, never dropped:
with a small stand-in for a body (the envelope with only the ids of its data, `"truncated":
true` and the size it would have had) and `oversize_bytes` set. Its seed targets get their own
bodies as usual; its endpoints are sent nothing, their deliveries are created `failed` with the
reason (fanout.py). A failed delivery in the log, not a POST in a shape no receiver asked for;
even an endpoint with a thin payload (webhooks/payload_shape.py), whose `links.event` would
answer this stand-in, not the event.
"""

import contextlib
import dataclasses
import datetime
import logging

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from webhooks import payload_shape
from webhooks.models import EndpointKind

from . import enqueue, fanout, metrics, streams
from .models import Delivery, DeliveryKind, Event, new_event_id

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Target:
    """A destination that is not an Endpoint: seed 000's STEP_COMPLETE_WEBHOOK or a run/job
    callback_url. It gets its own body instead of the event envelope."""

    kind: DeliveryKind
    url: str
    body: dict


TYPE_MAX = Event._meta.get_field("type").max_length
# Every column but those the database fills in itself (`xid`).
INSERTED_FIELDS = [f for f in Event._meta.concrete_fields if not f.has_db_default()]
DEDUPE_KEY_MAX = Event._meta.get_field("dedupe_key").max_length


def isoformat(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def dumps(value) -> str:
    return orjson.dumps(value, default=str).decode()


def encoded_size(text: str) -> int:
    """Bytes of `text` in UTF-8; no copy for ASCII (str.isascii() reads a flag)."""
    return len(text) if text.isascii() else len(text.encode())


# What envelope_size counts for a sequence number not taken yet: as many digits as any stream
# will reach.
SEQUENCE_BOUND = 10**12 - 1


def envelope_size(event_type: str, *, organization, agent=None, run=None, data: dict) -> int:
    """Bytes of the envelope `publish` would record for this event now, to compare with
    WEBHOOK_MAX_PAYLOAD_BYTES before the change that publishes it is made (the API does:
    agents_hooks/events.py). Ids and timestamps are of one length, so the size is exact, but
    for an event of a stream: its sequence is counted at 12 digits, its previous event as there."""
    organization_id = getattr(organization, "pk", organization)
    agent_id = getattr(agent, "pk", agent)
    run_id = getattr(run, "pk", run)
    sequence = previous = None
    if streams.stream_key(run_id, agent_id) is not None:
        sequence, previous = SEQUENCE_BOUND, new_event_id()
    envelope = _envelope(
        new_event_id(), event_type, timezone.now(), agent_id, organization_id, data, run_id, sequence, previous
    )
    return encoded_size(dumps(envelope))


def _envelope(
    event_id: str, event_type: str, moment, agent_id, organization_id, data, run_id, sequence, previous_event_id
) -> dict:
    return {
        "event_id": event_id,
        "event_type": event_type,
        "timestamp": isoformat(moment),
        "agent_id": agent_id,
        "run_id": run_id,
        "sequence": sequence,
        "previous_event_id": previous_event_id,
        "organization_id": organization_id,
        "data": data,
    }


def _stand_in(envelope: dict, size: int) -> dict:
    """What an oversize event records instead of its envelope: the envelope with only the ids
    of its data (`step_id`, `run_id`, `message_id`...; the same as a thin payload's), by which
    the object it reports can still be found and fetched, `"truncated": true` and the size the
    envelope had."""
    return {**envelope, "data": payload_shape.ids_of(envelope["data"]), "truncated": True, "payload_bytes": size}


def publish(
    event_type: str,
    *,
    organization,
    agent=None,
    run=None,
    data: dict,
    dedupe_key: str | None = None,
    targets: tuple[Target, ...] = (),
    endpoint=None,
) -> Event | None:
    """Record an event for delivery; return the Event, or None if nothing was recorded.

    Never raises and never blocks on the network: the caller's own work must not fail
    because of webhooks (seed 000, "Common Behavior"). Failures are logged. An envelope over
    WEBHOOK_MAX_PAYLOAD_BYTES is recorded as a stand-in without its data (see the module's
    docstring): its seed `targets` are sent, its endpoints are told nothing. With
    `dedupe_key`, a second publish with the same key (in any process) records nothing.
    `organization`, `agent`, `run` and `endpoint` may be model instances or ids. `endpoint`, if
    given, replaces the subscriptions: the event goes to that endpoint only (a test event).

    The event is numbered in its stream (streams.py): `run`'s if given, else `agent`'s events
    outside runs; with neither, it has no sequence. The number is taken in the caller's
    transaction, which then holds the stream until it ends: the next publisher into the same
    run waits for it, so keep a publishing transaction short.
    """
    organization_id = getattr(organization, "pk", organization)
    agent_id = getattr(agent, "pk", agent)
    run_id = getattr(run, "pk", run)
    now = timezone.now()
    event = Event(
        type=event_type, organization_id=organization_id, agent_id=agent_id, run_id=run_id, dedupe_key=dedupe_key
    )
    event.created_at = now
    stream = None
    try:
        event.targets = [{"kind": t.kind, "url": t.url, "body": dumps(t.body)} for t in targets]
        if endpoint is not None:
            event.targets.append({"endpoint": getattr(endpoint, "pk", endpoint)})
        if len(event_type) > TYPE_MAX or (dedupe_key and len(dedupe_key) > DEDUPE_KEY_MAX):
            raise ValueError(f"event type or dedupe key too long: {event_type[:TYPE_MAX]!r}")
        key = streams.stream_key(run_id, agent_id)
        if key is not None and streams.IN_ONE_STATEMENT:
            envelope = _envelope(event.id, event_type, now, agent_id, organization_id, data, run_id, None, None)
            event.body = dumps(envelope)
            if encoded_size(event.body) + NUMBER_BYTES <= settings.WEBHOOK_MAX_PAYLOAD_BYTES:
                if not _insert_numbered(event, key):
                    logger.debug("event %s already published (%s)", event_type, dedupe_key)
                    return None
                transaction.on_commit(lambda: _committed(event))
                return event
        with _numbered_with_its_event(key):
            if key is not None:
                event.sequence, event.previous_event_id = streams.take(key, event.id)
                stream = key
            place = (run_id, event.sequence, event.previous_event_id)
            envelope = _envelope(event.id, event_type, now, agent_id, organization_id, data, *place)
            event.body = dumps(envelope)
            if (size := encoded_size(event.body)) > settings.WEBHOOK_MAX_PAYLOAD_BYTES:
                event.oversize_bytes = size
                event.body = dumps(_stand_in(envelope, size))
            if not _insert(event):
                logger.debug("event %s already published (%s)", event_type, dedupe_key)
                _give_back(stream, event)
                return None
    except Exception:
        logger.exception("could not record event %s", event_type)
        _give_back(stream, event)
        return None
    transaction.on_commit(lambda: _committed(event))
    return event


# The envelope with its place in the stream left null, and how much longer the place makes it
# (12 digits and an event id in place of two nulls).
NUMBER_MARK = '"sequence":null,"previous_event_id":null'
NUMBER_BYTES = len(str(SEQUENCE_BOUND)) + len(f'"{new_event_id()}"') - 2 * len("null")


def _insert_numbered(event: Event, stream: str) -> bool:
    """PostgreSQL: number the event in its stream and record it, in one statement (the function
    of migration 0010): a publish in autocommit needs no transaction of its own, whose BEGIN and
    COMMIT would be two more round trips on every save, and a duplicate gives its number back
    inside it. The database splices the place into the body; so does this, the same way."""
    head, _, tail = event.body.partition(NUMBER_MARK)
    row = {f.column: getattr(event, f.attname) for f in INSERTED_FIELDS if f.attname != "body"}
    with connection.cursor() as cursor:
        cursor.execute(streams.PUBLISH_NUMBERED, [stream, orjson.dumps(row).decode(), head, tail])
        event.sequence, event.previous_event_id, inserted = cursor.fetchone()
    place = f'"sequence":{event.sequence},"previous_event_id":{orjson.dumps(event.previous_event_id).decode()}'
    event.body = head + place + tail
    event._state.adding = not inserted
    return inserted


def _numbered_with_its_event(stream: str | None):
    """The number and the event commit together: in the caller's transaction (a save's), or,
    for a publish in autocommit mode, in one of their own, so that a failure between the two
    cannot leave a gap. (Not a savepoint inside the caller's: two more round trips.)"""
    if stream is None or connection.in_atomic_block:
        return contextlib.nullcontext()
    return transaction.atomic()


def _give_back(stream: str | None, event: Event) -> None:
    """The number `event` took in `stream`, given back when the event is not recorded: the
    stream stays gapless. (After a database error the transaction is lost anyway, and its
    rollback undoes the take.)"""
    if stream is None:
        return
    try:
        streams.give_back(stream, event.sequence, event.previous_event_id)
    except Exception:
        logger.warning("could not give back sequence %s of %s", event.sequence, stream, exc_info=True)


def _committed(event: Event) -> None:
    metrics.event_published(event.type)
    if event.oversize_bytes is not None:
        metrics.event_oversize(event.type)
        logger.warning(
            "event %s (%s) is %d bytes, over WEBHOOK_MAX_PAYLOAD_BYTES (%d): recorded without its data; "
            "its endpoints' deliveries fail unsent, its seed targets are sent",
            event.pk,
            event.type,
            event.oversize_bytes,
            settings.WEBHOOK_MAX_PAYLOAD_BYTES,
        )
    enqueue.submit_events([event.pk])


def _insert(event: Event) -> bool:
    """INSERT the event unless its dedupe key is taken; say whether it was inserted.

    One statement, no savepoint: `ON CONFLICT DO NOTHING` turns a duplicate key into "no row"
    instead of an error, and nothing else in it can fail a constraint (the id is a fresh ULID,
    lengths are checked before, foreign keys are checked at commit). A savepoint would cost
    two more round trips on every save that publishes.
    """
    fields = INSERTED_FIELDS
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


class EndpointDisabled(ValueError):
    """A test event for a disabled endpoint: it would only be held, never sent."""


def send_test(endpoint) -> Delivery | None:
    """Send a `webhook.test` event to one endpoint through the normal pipeline; return its
    delivery (fanned out here, so the caller can follow it at once). A pull endpoint is never
    POSTed to: its test event is in its feed, and there is no delivery (None). Raises
    EndpointDisabled for a disabled endpoint, RuntimeError if the event could not be recorded."""
    if not endpoint.is_active:
        raise EndpointDisabled("the endpoint is disabled: enable it first")
    with transaction.atomic():  # fanned out before the worker hears of the event
        event = publish(
            "webhook.test",
            organization=endpoint.organization_id,
            data={"endpoint_id": endpoint.pk, "message": "Test event from agent-webhooks: your endpoint is reachable."},
            endpoint=endpoint,
        )
        if event is None:
            raise RuntimeError("could not record the test event (see the log)")
        if endpoint.kind == EndpointKind.PULL:
            return None
        (delivery,) = fanout.fan_out([event.pk])
        # Fanned out here, leased to nobody who will send it: free it for the first attempt.
        Delivery.objects.filter(pk=delivery.pk).update(lease=None, locked_until=None)
        transaction.on_commit(lambda: enqueue.submit([delivery.pk]))
    return Delivery.objects.get(pk=delivery.pk)
