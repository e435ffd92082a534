"""Publishing over HTTP (`POST /api/v1/events/`): an organization's own event, recorded through
`events.publish` like any other, at most once per `Idempotency-Key`.

Other services of a platform (a Go tool runner, a Node gateway) publish here, and retry when
an answer is lost; a retry must not become a second event. So a key is recorded with the
event it published, in the event's transaction, under a unique (organization, key) index:
of two concurrent publishes with one key, the second waits on the index until the first
commits, then finds its row and answers its event (or, if the first rolled back, publishes).
A key is kept for 24 hours (`PublishIdempotencyKey.KEPT_FOR`, as Stripe) and purged by beat
after (`recovery.purge_idempotency_keys`).

Size is checked before anything is recorded: `publish` would record an oversize event as a
stand-in whose endpoints are told nothing (events.py), which is right for a save that must not
fail, but a caller over HTTP can be told, and send less.
"""

import dataclasses
import datetime
import hashlib
import json

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .events import envelope_size, publish
from .models import Event, PublishIdempotencyKey

IDEMPOTENCY_WINDOW = PublishIdempotencyKey.KEPT_FOR
KEY_MAX = PublishIdempotencyKey._meta.get_field("key").max_length


class KeyReused(ValueError):
    """The Idempotency-Key was used, within the window, for a request with another body."""


class TooLarge(ValueError):
    """The event's envelope would be over WEBHOOK_MAX_PAYLOAD_BYTES (or cannot be encoded at all)."""


class NotRecorded(RuntimeError):
    """`events.publish` recorded nothing (it logged why); nothing was kept, the call may be retried."""


@dataclasses.dataclass(frozen=True)
class Published:
    event: Event
    replayed: bool  # True: the answer of an earlier request with the same key and body


def check_key(key: str) -> str:
    """`key` if usable as an Idempotency-Key (1-255 printable ASCII characters); else ValueError."""
    if not key or len(key) > KEY_MAX or not all(" " <= c <= "~" for c in key):
        raise ValueError(f"1 to {KEY_MAX} printable ASCII characters")
    return key


def fingerprint(body) -> str:
    """What makes two requests "the same body": sha256 of the body in canonical JSON (sorted keys,
    no spaces), so key order and whitespace do not count, nor `"agent": null` against no agent."""
    if isinstance(body, dict) and "agent" in body and body["agent"] is None:
        body = {k: v for k, v in body.items() if k != "agent"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode(errors="surrogatepass")).hexdigest()


def replay(organization, key: str, body_fingerprint: str) -> Published | None:
    """The answer already given to `key` within the window, if any: before the body is checked,
    so a retry gets the first answer even if the type's schema has changed since. KeyReused if
    that answer was for another body."""
    record = _live(organization, key, timezone.now()).select_related("event").first()
    if record is None:
        return None
    if record.fingerprint != body_fingerprint:
        raise KeyReused(_reused(key))
    return Published(record.event, replayed=True)


def check_size(event_type: str, *, organization, agent=None, data: dict) -> int:
    """The envelope's size in bytes; TooLarge if over WEBHOOK_MAX_PAYLOAD_BYTES or not encodable
    (an integer over 64 bits, a lone surrogate, nesting deeper than 254)."""
    limit = settings.WEBHOOK_MAX_PAYLOAD_BYTES
    try:
        size = envelope_size(event_type, organization=organization, agent=agent, data=data)
    except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
        raise TooLarge(f"data cannot be sent in a webhook event: {exc}") from None
    if size > limit:
        raise TooLarge(
            f"the event's envelope would be {size} bytes, over the limit of {limit} bytes "
            "(WEBHOOK_MAX_PAYLOAD_BYTES): send less data"
        )
    return size


def publish_event(
    organization,
    event_type: str,
    *,
    data: dict,
    agent=None,
    idempotency_key: str | None = None,
    body_fingerprint: str = "",
) -> Published:
    """Publish an event the caller has checked (a type of the organization's, its data valid);
    return it, or with `idempotency_key` the event an earlier request with that key published.
    TooLarge before anything is recorded; KeyReused for the key with another body; NotRecorded
    if publish failed (nothing kept: the same call may be retried)."""
    check_size(event_type, organization=organization, agent=agent, data=data)
    with transaction.atomic():
        if idempotency_key is not None:
            record, fresh = _claim(organization, idempotency_key, body_fingerprint)
            if not fresh:
                if record.fingerprint != body_fingerprint:
                    raise KeyReused(_reused(idempotency_key))
                return Published(record.event, replayed=True)
        event = publish(event_type, organization=organization, agent=agent, data=data)
        if event is None:
            raise NotRecorded("the event could not be recorded; nothing was published, try again")
        if idempotency_key is not None:
            PublishIdempotencyKey.objects.filter(pk=record.pk).update(event=event)
    return Published(event, replayed=False)


def _live(organization, key: str, now: datetime.datetime):
    return PublishIdempotencyKey.objects.filter(
        organization=organization, key=key, created_at__gte=now - IDEMPOTENCY_WINDOW, event__isnull=False
    )


def _claim(organization, key: str, body_fingerprint: str) -> tuple[PublishIdempotencyKey, bool]:
    """The key's row, and whether it is this request's to publish under: new, or expired and
    taken over. Called in the publish's transaction: a concurrent request with the same key
    waits here, on the unique index or the row's lock, until this one commits."""
    now = timezone.now()
    record, created = PublishIdempotencyKey.objects.get_or_create(
        organization=organization, key=key, defaults={"fingerprint": body_fingerprint, "created_at": now}
    )
    if created:
        return record, True
    # Expired but not purged yet: the first to update it takes it over; a concurrent one waits
    # for the row's lock, then finds it no longer expired and answers its event.
    expired = {"pk": record.pk, "created_at__lt": now - IDEMPOTENCY_WINDOW}
    if PublishIdempotencyKey.objects.filter(**expired).update(fingerprint=body_fingerprint, created_at=now, event=None):
        record.refresh_from_db()
        return record, True
    record = PublishIdempotencyKey.objects.select_related("event").get(pk=record.pk)
    return record, False


def _reused(key: str) -> str:
    return (
        f"Idempotency-Key {key!r} was used within the last {IDEMPOTENCY_WINDOW.total_seconds() / 3600:.0f} hours "
        "for a request with a different body: use a new key for a new event"
    )
