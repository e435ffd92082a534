"""`webhooks deliveries list | show | retry | recover`.

The list reads the API's filters (`filters.DeliveryFilter`: `--status` is checked as
`?status=` is); retry and recover are `recovery.retry_delivery` and `recovery.recover_endpoint`,
which the admin's actions and the API call. `--json` prints the API's serializers. Unlike the
organization-scoped API, every kind of delivery is listed, the seed targets' included (`--kind`).
"""

import sys

from tqdm import tqdm

from .. import recovery
from ..filters import DeliveryFilter
from ..models import Delivery, DeliveryStatus
from ..serializers import DeliveryDetailSerializer, DeliverySerializer
from . import common
from .common import CLIError, Console

DEFAULT_LIMIT = 50
# What each of the FilterSet's filters is called on the command line, for its error messages.
OPTIONS = {
    "status": "--status",
    "kind": "--kind",
    "event_type": "--event-type",
    "agent": "--agent",
    "event": "--event",
    "created_after": "--since",
    "created_before": "--until",
}


def register(subparsers) -> None:
    group = subparsers.add_parser("deliveries", help="list, inspect and retry deliveries; recover an endpoint")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("list", help="deliveries, newest first")
    p.add_argument("--endpoint", metavar="ENDPOINT", help="only this endpoint's (ep_…)")
    p.add_argument("--status", help=f"one of {', '.join(DeliveryStatus.values)}")
    p.add_argument("--event-type", metavar="TYPE", help="e.g. agent.step.completed")
    p.add_argument("--since", metavar="TIME", help=f"created at or after: {common.TIME_HELP}")
    p.add_argument("--until", metavar="TIME", help="created before (same forms as --since)")
    p.add_argument("--kind", help="endpoint, step_complete, run_callback or job_callback")
    p.add_argument("--agent", metavar="AGENT", help="only this agent's events")
    p.add_argument("--event", metavar="EVENT", help="only this event's deliveries (evt_…)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (default {DEFAULT_LIMIT})")
    common.add_common(p)
    p.set_defaults(func=list_deliveries)

    p = actions.add_parser("show", help="one delivery with its attempts")
    p.add_argument("delivery", metavar="DELIVERY", help="delivery id (a number)")
    common.add_common(p)
    p.set_defaults(func=show)

    p = actions.add_parser("retry", help="send deliveries now (failed and dead ones start a new series)")
    p.add_argument("deliveries", nargs="+", metavar="DELIVERY")
    p.add_argument("--force", action="store_true", help="send a delivery that already succeeded again")
    common.add_common(p)
    p.set_defaults(func=retry)

    p = actions.add_parser("recover", help="retry every failed or dead delivery of an endpoint since a time")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("--since", metavar="TIME", required=True, help=f"created at or after: {common.TIME_HELP}")
    p.add_argument("--dry-run", action="store_true", help="only count what would be retried")
    common.add_common(p)
    p.set_defaults(func=recover)


def _as_json(delivery: Delivery, serializer=DeliverySerializer) -> dict:
    return {**serializer(delivery).data, "organization": delivery.event.organization_id}


def list_deliveries(
    console: Console,
    *,
    endpoint=None,
    status=None,
    event_type=None,
    since=None,
    until=None,
    kind=None,
    agent=None,
    event=None,
    limit: int,
    organization=None,
    **_,
) -> None:
    if limit < 1:
        raise common.bad_argument(f"--limit: {limit} is not a positive number")
    org = common.organization(organization)
    rows = (
        Delivery.objects.select_related("event__organization", "endpoint")
        .defer("body", "event__body")
        .order_by("-created_at", "-pk")
    )
    if org is not None:
        rows = rows.filter(event__organization=org)
    if endpoint is not None:
        rows = rows.filter(endpoint=common.endpoint(endpoint, org, "--endpoint"))
    data = {
        "status": status,
        "kind": kind,
        "event_type": event_type,
        "agent": agent,
        "event": event,
        "created_after": since and common.parse_time(since, "--since").isoformat(),
        "created_before": until and common.parse_time(until, "--until").isoformat(),
    }
    page = list(common.filtered(DeliveryFilter, data, rows, OPTIONS)[: limit + 1])
    more, page = len(page) > limit, page[:limit]
    if console.as_json:
        console.json([_as_json(d) for d in page])
    else:
        console.table(
            ["ID", "CREATED", "ORGANIZATION", "EVENT TYPE", "TARGET", "STATUS", "ATTEMPTS", "LAST", "NEXT ATTEMPT"],
            [
                [
                    d.pk,
                    d.created_at,
                    common.clip(d.event.organization.name, 20),
                    d.event.type,
                    common.clip(common.target(d), 60),
                    d.status,
                    d.attempt_count,
                    common.last_outcome(d),
                    common.next_attempt(d),
                ]
                for d in page
            ],
            empty="no deliveries",
        )
    if more:
        console.note(f"(the newest {limit} shown; --limit for more)")


def show(console: Console, *, delivery: str, organization=None, **_) -> None:
    d = common.delivery(delivery, common.organization(organization))
    attempts = list(d.attempts.order_by("number"))
    if console.as_json:
        console.json(_as_json(d, DeliveryDetailSerializer))
        return
    console.fields(
        [
            ("id", d.pk),
            ("event", f"{d.event_id} ({d.event.type})"),
            ("organization", f"{d.event.organization.name} ({d.event.organization_id})"),
            ("target", common.target(d)),
            ("status", d.status),
            ("attempts", d.attempt_count),
            ("next attempt", common.next_attempt(d)),
            ("run order", f"event {d.sequence} of {d.run_id}" if d.run_id else None),
            ("skipped", ", ".join(d.skipped_event_ids or []) or None),  # earlier events of its run not delivered
            ("last attempt", d.last_attempt_at),
            ("last outcome", common.last_outcome(d)),
            ("last error", d.last_error),
            ("created", d.created_at),
            ("finished", d.finished_at),
            ("payload", d.event.payload_gone or None),
        ]
    )
    console.print()
    console.table(
        ["#", "STARTED", "OUTCOME", "MS", "RESPONSE / ERROR"],
        [
            [
                a.number,
                a.started_at,
                f"HTTP {a.status_code}" if a.status_code is not None else "no answer",
                a.duration_ms,
                common.clip(_answer(a, d), 80),
            ]
            for a in attempts
        ],
        empty="no attempts yet",
    )


def _answer(attempt, delivery) -> str:
    """An attempt's response excerpt (or error), never once its event's payload is gone (an
    attempt recorded after an erasure may still hold one until retention's `settle`)."""
    if attempt.status_code is None:
        return attempt.error
    return delivery.event.payload_gone or attempt.response_body


def retry(console: Console, *, deliveries: list[str], force: bool = False, organization=None, **_) -> None:
    org = common.organization(organization)
    chosen = {}
    for value in deliveries:  # every id checked before anything is sent
        d = common.delivery(value, org)
        chosen.setdefault(d.pk, d)
    retried, refused = [], []
    for d in chosen.values():
        was = d.status
        try:
            d = recovery.retry_delivery(d, force=force)
        except recovery.NotRetryable as exc:
            refused.append((d, exc))
            continue
        retried.append(d)
        if not console.as_json:
            how = "its next attempt is made now" if was == DeliveryStatus.PENDING else "a new series of attempts"
            console.print(f"delivery {d.pk}: sending now ({how}).")
    if console.as_json:
        console.json(
            {
                "retried": [_as_json(d) for d in retried],
                "refused": [{"id": d.pk, "reason": exc.reason, "detail": str(exc)} for d, exc in refused],
            }
        )
    if refused:
        raise CLIError("; ".join(f"delivery {d.pk} not retried: {_refusal(exc)}" for d, exc in refused))


def _refusal(exc: recovery.NotRetryable) -> str:
    if exc.reason == recovery.NotRetryable.SUCCEEDED:  # the service's words name the API's `force`
        return "it already succeeded; --force sends it again"
    return str(exc)


def recover(console: Console, *, endpoint: str, since: str, dry_run: bool = False, organization=None, **_) -> None:
    e = common.endpoint(endpoint, common.organization(organization))
    start = common.parse_time(since, "--since")
    if dry_run:
        count = recovery.recoverable(e, start).count()
        if console.as_json:
            console.json({"endpoint": e.pk, "since": start, "recoverable": count})
        else:
            console.print(f"{count} failed or dead deliveries of {e.pk} since {common.when(start)} would be retried.")
        return
    total = recovery.recoverable(e, start).count()
    # On stderr, and only on a terminal: a script's output stays clean.
    with tqdm(total=total, unit=" deliveries", file=sys.stderr, disable=None, leave=False) as bar:
        count = recovery.recover_endpoint(e, start, progress=bar.update)
    if console.as_json:
        console.json({"endpoint": e.pk, "since": start, "recovered": count})
    else:
        console.print(f"Retrying {count} failed or dead deliveries of {e.pk} created since {common.when(start)}.")
    if count and not e.is_active:
        console.note(
            f"{e.pk} is disabled: its {count} recovered deliveries wait until it is enabled "
            f"(webhooks endpoints enable {e.pk})."
        )
