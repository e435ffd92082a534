"""`webhooks payloads erase | expire | removals`: payload governance (deliveries/retention.py).

`erase` is `retention.erase`, as the API's `POST /api/v1/agents/<id>/erase/` and the admin's
"Erase payloads" action: recorded as asked by the operator's login name (`--by` to say
otherwise). `expire` runs a retention pass now (beat runs one hourly); `removals` lists the
record of both.
"""

import getpass

from agents_hooks.models import Agent

from .. import retention
from ..models import PayloadRemoval
from ..serializers import PayloadRemovalSerializer
from . import common
from .common import Console

DEFAULT_LIMIT = 50


def register(subparsers) -> None:
    group = subparsers.add_parser("payloads", help="erase an agent's or organization's payloads; expire old ones")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("erase", help="remove the payloads of an agent's (or an organization's) events now")
    p.add_argument("--agent", metavar="AGENT", help="the agent's id")
    p.add_argument("--reason", default="", help="why (recorded with who asked and when)")
    p.add_argument("--by", metavar="NAME", help="who asked, for the record (default: your login name)")
    common.add_common(p)
    p.set_defaults(func=erase)

    p = actions.add_parser("expire", help="remove the payloads past their retention period now (beat: hourly)")
    common.add_common(p, organization=False)
    p.set_defaults(func=expire)

    p = actions.add_parser("removals", help="the record of erasures and retention passes, newest first")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (default {DEFAULT_LIMIT})")
    common.add_common(p)
    p.set_defaults(func=removals)


def erase(console: Console, *, agent=None, reason: str = "", by=None, organization=None, **_) -> None:
    org = common.organization(organization)
    if (agent is None) == (org is None):
        raise common.bad_argument("give --agent AGENT, or --organization ORG to erase a whole organization's")
    if len(reason) > 500:
        raise common.bad_argument(f"--reason: at most 500 characters (got {len(reason)})")
    scope = {"organization": org}
    if agent is not None:
        found = None if "\x00" in agent else Agent.objects.filter(pk=agent).first()
        if found is None:
            raise common.bad_argument(f"--agent: no agent {agent!r}")
        scope = {"agent": found}
    record = retention.erase(requested_by=f"cli {by or _login()}", reason=reason, **scope)
    if console.as_json:
        console.json(PayloadRemovalSerializer(record).data)
        return
    what = f"agent {record.agent_id}" if record.agent_id else f"organization {record.organization_id}"
    console.print(
        f"Erased the payloads of {_count(record.events, 'event')} of {what}; "
        f"{_count(record.deliveries_failed, 'undelivered delivery', 'undelivered deliveries')} finished failed; "
        f"{_count(record.attempts_cleared, 'response excerpt')} removed."
    )
    if record.settle_by:
        by = common.when(record.settle_by)
        console.note(f"Deliveries were being sent: their answers' excerpts are removed by {by}.")


def expire(console: Console, **_) -> None:
    count = retention.expire()
    if console.as_json:
        console.json({"expired": count})
    else:
        console.print(f"Expired the payloads of {_count(count, 'event')} past their retention period.")


def removals(console: Console, *, limit: int, organization=None, **_) -> None:
    if limit < 1:
        raise common.bad_argument(f"--limit: {limit} is not a positive number")
    rows = PayloadRemoval.objects.order_by("-requested_at", "-pk")
    org = common.organization(organization)
    if org is not None:
        rows = rows.filter(organization_id=org.pk)
    page = list(rows[:limit])
    if console.as_json:
        console.json([PayloadRemovalSerializer(r).data for r in page])
        return
    console.table(
        ["AT", "KIND", "SCOPE", "BY", "EVENTS", "FAILED", "STATE", "REASON"],
        [
            [
                r.requested_at,
                r.kind,
                f"agent {r.agent_id}" if r.agent_id else r.organization_id or f"created before {common.when(r.cutoff)}",
                r.requested_by,
                r.events,
                r.deliveries_failed,
                "running" if r.finished_at is None else "finished",
                common.clip(r.reason, 40),
            ]
            for r in page
        ],
        empty="no payloads removed yet",
    )


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in a container: still recorded as the command line
        return "unknown user"
