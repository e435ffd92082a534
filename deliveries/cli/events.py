"""`webhooks events list | show | tail`.

The list reads the API's filters (`filters.EventFilter`); `--json` prints the API's
serializers. `tail` follows new events as they are recorded, until Ctrl-C, `--count` events or
`--timeout` seconds: one line per event, or one JSON document per line (JSON Lines).
"""

import datetime
import json
import time

from django.db.models import Count
from django.utils import timezone

from ..filters import EventFilter
from ..models import Delivery, Event
from ..serializers import DeliverySerializer, EventSerializer
from . import common
from .common import CLIError, Console

DEFAULT_LIMIT = 50
OPTIONS = {"event_type": "--event-type", "agent": "--agent", "created_after": "--since", "created_before": "--until"}
POLL_SECONDS = 0.5
# An event's `created_at` is taken when it is published, in the publisher's transaction; it is
# seen once that commits. Each look goes back this far, so an event committed up to this late
# is still shown (once: the ids shown in that span are remembered).
LOOK_BACK = datetime.timedelta(seconds=10)


def register(subparsers) -> None:
    group = subparsers.add_parser("events", help="list and inspect events; follow new ones live")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("list", help="events, newest first")
    _filters(p)
    p.add_argument("--until", metavar="TIME", help="created before (same forms as --since)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (default {DEFAULT_LIMIT})")
    common.add_common(p)
    p.set_defaults(func=list_events)

    p = actions.add_parser("show", help="one event: its payload and its deliveries")
    p.add_argument("event", metavar="EVENT", help="event id (evt_…)")
    common.add_common(p)
    p.set_defaults(func=show)

    p = actions.add_parser("tail", help="follow new events as they are recorded (Ctrl-C stops)")
    _filters(p, since_help="also show those created since then first (default: only new ones)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop after this long (with --count: exit 1 if fewer came)"
    )
    common.add_common(p)
    p.set_defaults(func=tail)


def _filters(parser, since_help: str = "") -> None:
    parser.add_argument("--event-type", metavar="TYPE", help="e.g. agent.step.completed")
    parser.add_argument("--agent", metavar="AGENT", help="only this agent's events")
    parser.add_argument("--since", metavar="TIME", help=since_help or f"created at or after: {common.TIME_HELP}")


def _as_json(event: Event) -> dict:
    return {**EventSerializer(event).data, "organization": event.organization_id}


def _rows(org, event_type, agent, since, until=None):
    rows = Event.objects.select_related("organization", "agent")
    if org is not None:
        rows = rows.filter(organization=org)
    data = {
        "event_type": event_type,
        "agent": agent,
        "created_after": since and common.parse_time(since, "--since").isoformat(),
        "created_before": until and common.parse_time(until, "--until").isoformat(),
    }
    return common.filtered(EventFilter, data, rows, OPTIONS)


def list_events(
    console: Console, *, event_type=None, agent=None, since=None, until=None, limit: int, organization=None, **_
) -> None:
    if limit < 1:
        raise common.bad_argument(f"--limit: {limit} is not a positive number")
    rows = _rows(common.organization(organization), event_type, agent, since, until).order_by("-created_at", "-pk")
    if not console.as_json:
        rows = rows.defer("body")
    page = list(rows[: limit + 1])
    more, page = len(page) > limit, page[:limit]
    if console.as_json:
        console.json([_as_json(e) for e in page])
    else:
        counted = Delivery.objects.filter(event__in=page).order_by().values("event").annotate(n=Count("pk"))
        deliveries = {row["event"]: row["n"] for row in counted}
        console.table(
            ["ID", "CREATED", "ORGANIZATION", "TYPE", "AGENT", "DELIVERIES"],
            [
                [
                    e.pk,
                    e.created_at,
                    common.clip(e.organization.name, 20),
                    e.type,
                    common.clip(e.agent.name, 20) if e.agent_id else None,
                    deliveries.get(e.pk, 0) if e.fanned_out_at else "not yet fanned out",
                ]
                for e in page
            ],
            empty="no events",
        )
    if more:
        console.note(f"(the newest {limit} shown; --limit for more)")


def show(console: Console, *, event: str, organization=None, **_) -> None:
    e = common.event(event, common.organization(organization))
    deliveries = list(e.deliveries.select_related("event__organization", "endpoint").defer("body").order_by("pk"))
    if console.as_json:
        console.json(
            {
                **_as_json(e),
                "fanned_out_at": e.fanned_out_at,
                "deliveries": [DeliverySerializer(d).data for d in deliveries],
            }
        )
        return
    console.fields(
        [
            ("id", e.pk),
            ("type", e.type),
            ("organization", f"{e.organization.name} ({e.organization_id})"),
            ("agent", f"{e.agent.name} ({e.agent_id})" if e.agent_id else None),
            ("created", e.created_at),
            ("fanned out", e.fanned_out_at or "not yet (waiting for a worker)"),
            ("oversize", f"{e.oversize_bytes} bytes: recorded without its data" if e.oversize_bytes else None),
        ]
    )
    console.print("payload:")
    if e.payload_removed:  # expired or erased: the tombstone says which, never the content
        payload = e.payload_gone
    else:
        try:
            payload = json.dumps(json.loads(e.body), indent=2, ensure_ascii=False)
        except ValueError:
            payload = e.body
    console.print(payload)
    console.print()
    console.table(
        ["DELIVERY", "TARGET", "STATUS", "ATTEMPTS", "LAST", "NEXT ATTEMPT"],
        [
            [
                d.pk,
                common.clip(common.target(d), 60),
                d.status,
                d.attempt_count,
                common.last_outcome(d),
                common.next_attempt(d),
            ]
            for d in deliveries
        ],
        empty="no deliveries yet",
    )


def tail(
    console: Console,
    *,
    event_type=None,
    agent=None,
    since=None,
    count=None,
    timeout=None,
    organization=None,
    **_,
) -> None:
    if count is not None and count < 1:
        raise common.bad_argument(f"--count: {count} is not a positive number")
    if timeout is not None and timeout <= 0:
        raise common.bad_argument(f"--timeout: {timeout:g} is not a positive number of seconds")
    org = common.organization(organization)
    start = common.parse_time(since, "--since") if since else timezone.now()
    rows = _rows(org, event_type, agent, None)
    deadline = None if timeout is None else time.monotonic() + timeout
    console.note(f"Following events from {common.when(start)}{'' if count else ' (Ctrl-C stops)'}…")
    shown, seen, cursor = 0, {}, start
    try:
        while count is None or shown < count:
            for e in rows.filter(created_at__gte=max(start, cursor - LOOK_BACK)).order_by("created_at", "pk"):
                if e.pk in seen:
                    continue
                seen[e.pk] = e.created_at
                cursor = max(cursor, e.created_at)
                _print_event(console, e)
                shown += 1
                if count is not None and shown >= count:
                    return
            seen = {pk: at for pk, at in seen.items() if at >= cursor - LOOK_BACK}
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
    except KeyboardInterrupt:
        return  # Ctrl-C is how a person stops following: not an error
    if count is not None and shown < count:
        raise CLIError(f"timed out after {timeout:g} s with {shown} of {count} events")


def _print_event(console: Console, e: Event) -> None:
    if console.as_json:
        console.json(_as_json(e))
        return
    agent = f"  agent {e.agent.name} ({e.agent_id})" if e.agent_id else ""
    console.print(f"{common.when(e.created_at)}  {e.pk}  {e.type}  {e.organization.name}{agent}")
    console.stdout.flush()
