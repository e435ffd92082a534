"""The pull feed: an organization's events in the order they were committed, for receivers that
cannot take a POST (behind NAT: a laptop, a desktop agent, a CI runner).

`GET /api/v1/events/feed/` (deliveries/api.py) and `manage.py webhooks listen` read it through
`read`. Each answer ends with a cursor: pass it back as `after` for what came next. A cursor
is the position of the last event given, not a server-side session, so it survives restarts
of either side and can be kept in a file.

Why the order is the inserting transaction's id, not the time or a sequence: events are
written in the publishing save's transaction, and transactions commit out of order. A reader
going by `created_at` (or by a sequence number, taken at insert) sees a later event committed
first, moves its cursor past it, and never sees the earlier one when it commits a moment
later. So on PostgreSQL each event carries its transaction's id (`Event.xid`, filled by the
database) and the feed gives only events of transactions older than every transaction still
running (`pg_snapshot_xmin`): whatever commits later has a larger id than any event given.
The price is latency, never a lost event: the feed waits for the oldest open transaction in
the PostgreSQL cluster (an hour-long report query holds it back an hour). SQLite lets one
transaction write at a time, so there insertion order is commit order, and the feed reads
`rowid`. Events recorded before the feed existed (a NULL `xid`) are not in it.

With a pull `endpoint`, the feed holds only what that endpoint subscribes to (its filter, its
agent, a test event sent to it), each with the headers a POST to it would carry, signed with
its secret (`compose.build`, as for every POST), and the body that POST would carry: the
endpoint's payload shape applies (thin, fields excluded: webhooks/payload_shape.py). `listen`
forwards body and headers as they are, and the receiver verifies them as usual.
"""

import base64
import binascii
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.db.models.expressions import RawSQL

from webhooks import credentials
from webhooks.models import EndpointKind, redact_headers

from . import compose, fanout
from .models import Delivery, DeliveryKind, Event

LATEST = "latest"  # `after=latest`: start from now, skipping what is already in the feed
SCAN_MAX = 5000  # events looked at per answer when an endpoint's filter passes few of them
POLL_INTERVAL = 0.25  # seconds between looks while a long poll waits


class BadCursor(ValueError):
    """`after` is not a cursor this feed gave."""


@dataclass(frozen=True)
class Item:
    event: Event
    cursor: str
    headers: dict[str, str] | None  # with an endpoint: the signed headers of a POST to it
    unsent: str = ""  # with an endpoint: why this event is not to be forwarded (no headers then)
    body: str | None = None  # with an endpoint: the body a POST to it carries (None: the event's)


@dataclass(frozen=True)
class Page:
    items: list[Item]
    next: str  # the cursor to pass as `after` next time
    has_more: bool  # more is already waiting: ask again at once


class BadEndpoint(ValueError):
    """Not an endpoint whose feed can be read."""


def check_endpoint(endpoint) -> None:
    """A feed is read for a pull endpoint that is active (the API's 400 and the CLI's say so)."""
    if not endpoint.is_active:
        raise BadEndpoint(f"{endpoint.pk} is disabled: enable it to read its feed.")
    if endpoint.kind != EndpointKind.PULL:
        raise BadEndpoint(f"{endpoint.pk} is a push endpoint: its events are POSTed to it. Create one with kind: pull.")


def read(organization_id: str, *, after: str | None, limit: int = 100, wait: float = 0, endpoint=None) -> Page:
    """The organization's events after `after` (from the oldest kept when None), at most
    `limit`; if there are none yet, wait up to `wait` seconds for some (a long poll)."""
    if endpoint is not None:
        check_endpoint(endpoint)
    if after == LATEST:
        return Page([], _latest(organization_id), False)
    deadline = time.monotonic() + wait
    while True:
        page = _page(organization_id, after, limit, endpoint)
        remaining = deadline - time.monotonic()
        if page.items or page.has_more or remaining <= 0:
            return page
        time.sleep(min(POLL_INTERVAL, remaining))
        after = page.next  # past what the endpoint's filter passed over, too


def _page(organization_id: str, after: str | None, limit: int, endpoint) -> Page:
    items: list[Item] = []
    position, cursor = _decode(after), after or _encode(_start())
    scanned = 0
    while len(items) < limit and scanned < SCAN_MAX:
        # With an endpoint's filter most rows may be passed over: look at them in larger chunks.
        size = limit - len(items) if endpoint is None else max(limit, 500)
        chunk = list(_after(_committed(organization_id), position)[:size])
        if not chunk:
            return Page(items, cursor, False)
        scanned += len(chunk)
        now = int(time.time())
        keys: dict = {}  # compose.build's cache for the chunk
        for event in chunk:
            position = _position(event)
            cursor = _encode(position)
            if endpoint is None:
                items.append(Item(event, cursor, None))
            elif _addressed_to(endpoint, event):
                items.append(_signed(event, endpoint, cursor, now, keys))
            if len(items) == limit:
                break
    return Page(items, cursor, True)


def _signed(event: Event, endpoint, cursor: str, now: int, keys: dict) -> Item:
    """The event as a POST to `endpoint` would carry it, or why it would not be sent: too large
    (a push endpoint gets a failed delivery saying so), or a request that cannot be built. The
    endpoint's credential headers stay out: write-only everywhere, they are not handed to every
    holder of the organization's API key."""
    if event.payload_removed:  # expired or erased: nothing left to forward (retention.py)
        return Item(event, cursor, None, event.payload_gone)
    if event.oversize_bytes is not None:
        return Item(event, cursor, None, fanout.too_large(event.oversize_bytes))
    request = compose.build(Delivery(event=event, endpoint=endpoint, kind=DeliveryKind.ENDPOINT), now, keys)
    if request.error:
        return Item(event, cursor, None, request.error)
    shown = redact_headers(request.headers)
    headers = {name: value for name, value in shown.items() if value != credentials.MASK}
    return Item(event, cursor, headers, body=request.body.decode())


def _addressed_to(endpoint, event: Event) -> bool:
    explicit = fanout.explicit_endpoints(event)
    if explicit:
        return endpoint.pk in explicit
    return endpoint.receives(event.type, event.agent_id, fanout.envelope_of(event))


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _committed(organization_id: str):
    """The organization's events every reader can see for good, in feed order."""
    events = Event.objects.filter(organization_id=organization_id)
    if _postgres():
        oldest_running = RawSQL("pg_snapshot_xmin(pg_current_snapshot())::text::bigint", [])
        return events.filter(xid__isnull=False, xid__lt=oldest_running).order_by("xid", "id")
    return events.annotate(rowid=RawSQL("deliveries_event.rowid", [])).order_by("rowid")


def _after(events, position: tuple):
    if _postgres():
        # A row comparison, which the (organization, xid, id) index serves; Q(...) | Q(...) would not.
        return events.extra(where=["(deliveries_event.xid, deliveries_event.id) > (%s, %s)"], params=list(position))
    return events.filter(rowid__gt=position[0])


def _position(event: Event) -> tuple:
    return (event.xid, event.pk) if _postgres() else (event.rowid,)


def _start() -> tuple:
    return (0, "") if _postgres() else (0,)


def _latest(organization_id: str) -> str:
    events = _committed(organization_id)
    last = events.order_by("-xid", "-id").first() if _postgres() else events.order_by("-rowid").first()
    return _encode(_position(last) if last is not None else _start())


def _encode(position: tuple) -> str:
    text = f"x:{position[0]}:{position[1]}" if len(position) == 2 else f"r:{position[0]}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def check_cursor(cursor: str) -> None:
    """BadCursor unless `cursor` is one this feed gives (or `latest`): said before a reader starts."""
    if cursor != LATEST:
        _decode(cursor)


def _decode(cursor: str | None) -> tuple:
    if not cursor:
        return _start()
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, rest = text.partition(":")
        if kind == "x" and _postgres():
            xid, _, event_id = rest.partition(":")
            return (int(xid), event_id)
        if kind == "r" and not _postgres():
            return (int(rest),)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise BadCursor(f"{cursor[:80]!r} is not a cursor of this feed: pass the `next` of an answer, or {LATEST!r}")


def as_json(page: Page) -> dict:
    """The API's answer for a page (and what `webhooks listen` reads)."""
    events = []
    for item in page.items:
        event = item.event
        entry = {
            "id": event.pk,
            "type": event.type,
            "created_at": event.created_at.isoformat().replace("+00:00", "Z"),
            "cursor": item.cursor,
            "body": event.body if item.body is None else item.body,
        }
        if event.payload_removed:  # never shown again: the tombstone says what became of it
            entry["body"], entry["payload_removed"] = None, event.payload_removed
        if event.oversize_bytes is not None:
            entry["oversize_bytes"] = event.oversize_bytes  # the body is the stand-in without data
        if item.headers is not None:
            entry["headers"] = item.headers
        if item.unsent:
            entry["unsent"] = item.unsent
        events.append(entry)
    return {"events": events, "next": page.next, "has_more": page.has_more}


def max_wait() -> float:
    return settings.WEBHOOK_FEED_MAX_WAIT
