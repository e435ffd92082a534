"""`webhooks endpoints list | show | enable | disable | test | replay | replays | rotate-secret`.

The same calls as the admin's actions and the API's: `recovery.resume_endpoint` and
`recovery.disable_endpoints`, `events.send_test` with `selectors.wait_for_first_attempt`, and
`Endpoint.rotate_secret`. A secret is printed once, by `rotate-secret`, as the API answers
it; custom headers are shown redacted, as the API shows them.
"""

import getpass
import sys

from django.conf import settings
from django.utils import timezone
from tqdm import tqdm

from webhooks.models import Endpoint, EndpointState, redact_headers, redact_url
from webhooks.serializers import EndpointSerializer

from .. import policy, recovery, replay, selectors
from ..events import EndpointDisabled, send_test
from ..models import ReplayState
from ..serializers import AttemptSerializer, DeliverySerializer, ReplaySerializer
from . import common
from .common import CLIError, Console

DEFAULT_TEST_WAIT = 5.0  # as the admin's "Send test event"
REPLAY_OPTIONS = {"since": "--since", "event_types": "--types"}  # replay.start's fields, as options


def register(subparsers) -> None:
    group = subparsers.add_parser("endpoints", help="list, inspect, enable, disable, test endpoints; rotate secrets")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("list", help="endpoints with their health over the last 24 hours")
    common.add_common(p)
    p.add_argument("--active", action="store_true", help="only active endpoints")
    p.add_argument("--disabled", action="store_true", help="only disabled endpoints")
    p.add_argument("--run", metavar="RUN", help="only this run's subscriptions (POST /api/v1/runs/<id>/subscriptions/)")
    p.set_defaults(func=list_endpoints)

    p = actions.add_parser("show", help="one endpoint in full (headers redacted, never the secret)")
    p.add_argument("endpoint", metavar="ENDPOINT", help="endpoint id (ep_…)")
    common.add_common(p)
    p.set_defaults(func=show)

    p = actions.add_parser("enable", help="enable endpoints and send the deliveries held while disabled")
    p.add_argument("endpoints", nargs="+", metavar="ENDPOINT")
    common.add_common(p)
    p.set_defaults(func=enable)

    p = actions.add_parser("disable", help="disable endpoints: their deliveries are held until enabled")
    p.add_argument("endpoints", nargs="+", metavar="ENDPOINT")
    p.add_argument("--reason", help='recorded with the endpoint (default "disabled by <user> (CLI)")')
    common.add_common(p)
    p.set_defaults(func=disable)

    p = actions.add_parser("test", help="send a webhook.test event and show the receiver's answer")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_TEST_WAIT,
        metavar="SECONDS",
        help=f"wait up to this long (0-30) for the attempt (default {DEFAULT_TEST_WAIT:g}); 0 only queues it",
    )
    common.add_common(p)
    p.set_defaults(func=test)

    p = actions.add_parser("replay", help="send an endpoint the past events it takes now and never got")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("--since", required=True, metavar="TIME", help=f"events created from then: {common.TIME_HELP}")
    p.add_argument("--until", metavar="TIME", help="...and before then (default and latest: now)")
    p.add_argument("--types", metavar="TYPES", help='only these event types, comma-separated ("agent.step.*" allowed)')
    p.add_argument("--wait", action="store_true", help="work through it here, showing progress, until it is done")
    common.add_common(p)
    p.set_defaults(func=replay_events)

    p = actions.add_parser("replays", help="an endpoint's replays, the latest first, with their progress")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("--cancel", type=int, metavar="REPLAY", help="stop this running replay after its batch in hand")
    common.add_common(p)
    p.set_defaults(func=list_replays)

    p = actions.add_parser("rotate-secret", help="new signing secret, printed once; the old one signs for a while")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument(
        "--grace",
        metavar="DURATION",
        help="how long the previous secret keeps signing too "
        f"(default {settings.WEBHOOK_SECRET_ROTATION_GRACE_HOURS:g}h, WEBHOOK_SECRET_ROTATION_GRACE_HOURS)",
    )
    common.add_common(p)
    p.set_defaults(func=rotate_secret)


def _as_json(endpoint: Endpoint) -> dict:
    """The API's representation, plus what an operator across organizations needs."""
    data = dict(EndpointSerializer(endpoint).data)
    data["organization"] = endpoint.organization_id
    if hasattr(endpoint, "deliveries_24h"):
        data.update(
            last_delivery_status=endpoint.last_delivery_status,
            deliveries_24h=endpoint.deliveries_24h,
            succeeded_24h=endpoint.succeeded_24h,
            success_rate_24h=selectors.success_rate(endpoint),
        )
    return data


def _state(endpoint: Endpoint) -> str:
    if endpoint.state != EndpointState.ACTIVE:  # disabled, or a run subscription that ended or expired
        return endpoint.state
    if endpoint.consecutive_failures:
        return f"failing ({endpoint.consecutive_failures})"
    return "active"


def _success(endpoint: Endpoint) -> str:
    rate = selectors.success_rate(endpoint)
    return "-" if rate is None else f"{rate:.0%} of {endpoint.deliveries_24h}"


def _with_stats(rows):
    return selectors.with_delivery_stats(rows.select_related("organization", "agent"))


def _scope(endpoint: Endpoint) -> str:
    if endpoint.run_id:
        return f"run {endpoint.run_id}"
    return common.clip(endpoint.agent.name, 20) if endpoint.agent_id else "all agents"


def list_endpoints(console: Console, *, organization=None, active=False, disabled=False, run=None, **_) -> None:
    if active and disabled:
        raise common.bad_argument("--active and --disabled: give one or neither")
    org = common.organization(organization)
    rows = Endpoint.objects.order_by("organization__name", "created_at")
    if org is not None:
        rows = rows.filter(organization=org)
    if active or disabled:
        rows = rows.filter(is_active=active)
    if run is not None:
        rows = rows.filter(run_id=run)
    endpoints = list(_with_stats(rows))
    if console.as_json:
        console.json([_as_json(e) for e in endpoints])
        return
    console.table(
        ["ID", "ORGANIZATION", "URL", "SCOPE", "STATE", "LAST", "SUCCESS 24H"],
        [
            [
                e.pk,
                common.clip(e.organization.name, 24),
                common.clip(redact_url(e.url), 60) if e.url else "(pull: read from the feed)",
                _scope(e),
                _state(e),
                e.last_delivery_status,
                _success(e),
            ]
            for e in endpoints
        ],
        empty="no endpoints",
    )


def show(console: Console, *, endpoint: str, organization=None, **_) -> None:
    found = common.endpoint(endpoint, common.organization(organization))
    e = _with_stats(Endpoint.objects.filter(pk=found.pk)).get()
    if console.as_json:
        console.json(_as_json(e))
        return
    schedule = policy.format_schedule(policy.schedule_of(e)) or "never retried"
    rotated = e.previous_secret_expires_at and e.previous_secret_expires_at > timezone.now()
    secret = "set (shown only when rotated)"
    if rotated:
        secret = f"rotated; the previous one also signs until {common.when(e.previous_secret_expires_at)}"
    certificate = "none"
    if e.client_cert_subject:
        certificate = f"{e.client_cert_subject}, expires {common.when(e.client_cert_expires_at)}"
    console.fields(
        [
            ("id", e.pk),
            ("organization", f"{e.organization.name} ({e.organization_id})"),
            ("url", e.url),  # the endpoint's own record shows its URL whole, as the API and the admin do
            ("description", e.description),
            ("scope", _scope_shown(e)),
            ("event types", ", ".join(e.event_types) or ("all the run's events" if e.run_id else "all agent events")),
            ("state", _state(e)),
            ("disabled", f"{common.when(e.disabled_at)}: {e.disabled_reason}" if e.disabled_at else None),
            ("failing since", e.failing_since),
            ("failures in a row", e.consecutive_failures),
            ("last delivery", e.last_delivery_status),
            ("success (24 h)", _success(e)),
            ("retry schedule", schedule + (" (default)" if e.retry_schedule is None else "")),
            ("rate limit", f"{e.rate_limit}/s" if e.rate_limit else "none"),
            ("ordering", e.get_ordering_display()),
            ("payload", _payload(e)),
            ("headers", ", ".join(f"{k}: {v}" for k, v in redact_headers(e.headers or {}).items())),
            ("client certificate", certificate),
            ("secret", secret),
            ("created", e.created_at),
            ("updated", e.updated_at),
        ]
    )


def _scope_shown(e: Endpoint) -> str:
    if e.run_id:  # a run subscription: until its run's last event was delivered, or it expires
        end = f"ended {common.when(e.ended_at)}" if e.ended_at else f"expires {common.when(e.expires_at)}"
        return f"run {e.run_id} ({end})"
    return f"agent {e.agent.name} ({e.agent_id})" if e.agent_id else "all agents"


def _payload(e: Endpoint) -> str:
    """The payload shape (webhooks/payload_shape.py), e.g. "thin, without content, usage.total_tokens"."""
    excluded = f", without {', '.join(e.exclude_fields)}" if e.exclude_fields else ""
    return f"{e.payload}{excluded}"


def _endpoints(ids: list[str], organization) -> list[Endpoint]:
    """Every endpoint named, or a bad argument before anything is done."""
    org = common.organization(organization)
    found = {}
    for pk in ids:
        found.setdefault(pk, common.endpoint(pk, org))
    return list(found.values())


def enable(console: Console, *, endpoints: list[str], organization=None, **_) -> None:
    results = []
    for e in _endpoints(endpoints, organization):
        was_active = e.is_active
        released = recovery.resume_endpoint(e)
        results.append({"endpoint": e.pk, "enabled": not was_active, "released": released})
        if not console.as_json:
            done = "was already active" if was_active else "enabled"
            console.print(f"{e.pk} {done}; {released} held deliveries are being sent.")
    if console.as_json:
        console.json(results)


def disable(console: Console, *, endpoints: list[str], reason=None, organization=None, **_) -> None:
    reason = reason or f"disabled by {_user()} (CLI)"
    results = []
    for e in _endpoints(endpoints, organization):
        disabled = recovery.disable_endpoints(Endpoint.objects.filter(pk=e.pk), reason)
        results.append({"endpoint": e.pk, "disabled": bool(disabled), "reason": reason if disabled else None})
        if not console.as_json:
            if disabled:
                console.print(f"{e.pk} disabled ({reason}). New deliveries are held until it is enabled again.")
            else:
                console.print(f"{e.pk} was already disabled.")
    if console.as_json:
        console.json(results)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "an operator"


def test(console: Console, *, endpoint: str, wait: float, organization=None, **_) -> None:
    if not 0 <= wait <= 30:
        raise common.bad_argument(f"--wait: {wait:g} is not between 0 and 30 seconds")
    e = common.endpoint(endpoint, common.organization(organization))
    try:
        delivery = send_test(e)
    except EndpointDisabled as exc:
        raise CLIError(f"{e.pk}: {exc} (webhooks endpoints enable {e.pk})") from exc
    except RuntimeError as exc:
        raise CLIError(f"{e.pk}: {exc}") from exc
    if delivery is None:  # a pull endpoint: nothing is POSTed
        console.print(f"Test event for {e.pk} is in its feed (webhooks listen --endpoint {e.pk} forwards it).")
        return
    attempt = selectors.wait_for_first_attempt(delivery, wait) if wait else None
    delivery.refresh_from_db()
    ok = attempt is not None and policy.judge(attempt.status_code) == policy.Verdict.SUCCEEDED
    if console.as_json:
        console.json(
            {
                "delivery": DeliverySerializer(delivery).data,
                "attempt": AttemptSerializer(attempt).data if attempt else None,
            }
        )
    else:
        console.print(_test_result(e, delivery, attempt, wait))
    if wait and not ok:
        why = "the receiver did not accept the test event" if attempt else f"no attempt within {wait:g} s"
        raise CLIError(f"{e.pk}: {why}")


def _test_result(e: Endpoint, delivery, attempt, waited: float) -> str:
    to = f"Test event {delivery.event_id} to {e.pk} ({redact_url(e.url)})"
    if not waited:
        return f"{to} queued as delivery {delivery.pk}."
    if attempt is None:
        return f"{to} queued as delivery {delivery.pk}; no attempt within {waited:g} s: is a worker running?"
    if attempt.status_code is None:
        failed = f"failed after {attempt.duration_ms} ms: {attempt.error}"
        return f"{to} {failed} (delivery {delivery.pk}, retried automatically)."
    excerpt = ""
    if policy.judge(attempt.status_code) != policy.Verdict.SUCCEEDED and attempt.response_body:
        excerpt = f" Response: {common.clip(attempt.response_body, 120)}"
    return f"{to}: HTTP {attempt.status_code} in {attempt.duration_ms} ms (delivery {delivery.pk}).{excerpt}"


def replay_events(
    console: Console, *, endpoint: str, since: str, until=None, types=None, wait=False, organization=None, **_
) -> None:
    e = common.endpoint(endpoint, common.organization(organization))
    start = common.parse_time(since, "--since")
    end = common.parse_time(until, "--until") if until is not None else None
    patterns = [t.strip() for t in (types or "").split(",") if t.strip()]
    try:
        started = replay.start(e, start, end, patterns, requested_by=f"{_user()} (CLI)")
    except replay.ReplayRefused as exc:
        if exc.field:
            raise common.bad_argument(f"{REPLAY_OPTIONS[exc.field]}: {exc}") from exc
        raise CLIError(f"{e.pk}: {exc}") from exc
    if wait:
        # On stderr, and only on a terminal: a script's output stays clean. The workers may run
        # batches of it too (it was handed to them): the two take turns.
        with tqdm(total=started.events_total, unit=" events", file=sys.stderr, disable=None, leave=False) as bar:
            while replay.run(started.pk):
                started.refresh_from_db()
                bar.update(started.events_examined - bar.n)
        started.refresh_from_db()
    if console.as_json:
        console.json(_replay_json(started))
        return
    window = f"created from {common.when(started.since)} to {common.when(started.until)}"
    if started.state == ReplayState.DONE:
        console.print(
            f"Replay {started.pk} of {e.pk} done: looked at {started.events_examined} events {window}; "
            f"the {started.deliveries_created} it had not received are being sent."
        )
    elif started.state != ReplayState.RUNNING:
        raise CLIError(f"replay {started.pk} of {e.pk} {started.state}: {started.error or 'see the log'}")
    else:
        console.print(
            f"Replay {started.pk} of {e.pk} started: {started.events_total} events {window} to look through. "
            f"Follow it: webhooks endpoints replays {e.pk}"
        )
    if not e.is_active:
        console.note(
            f"{e.pk} is disabled: its replayed deliveries wait until it is enabled (webhooks endpoints enable {e.pk})."
        )


def list_replays(console: Console, *, endpoint: str, cancel: int | None = None, organization=None, **_) -> None:
    e = common.endpoint(endpoint, common.organization(organization))
    if cancel is not None:
        found = e.replays.filter(pk=cancel).first()
        if found is None:
            raise common.bad_argument(f"--cancel: no replay {cancel} of {e.pk}")
        if not replay.cancel(found):
            raise CLIError(f"replay {cancel} of {e.pk} is not running ({found.state}): nothing to cancel")
        if not console.as_json:
            console.print(f"Replay {cancel} of {e.pk} cancelled; the deliveries it created go on.")
    rows = list(e.replays.order_by("-created_at", "-pk")[:50])
    if console.as_json:
        console.json([_replay_json(r) for r in rows])
        return
    console.table(
        ["ID", "STATE", "SINCE", "UNTIL", "TYPES", "EXAMINED", "SENT", "STARTED", "BY"],
        [
            [
                r.pk,
                r.state + (f" ({common.clip(r.error, 30)})" if r.error else ""),
                r.since,
                r.until,
                ", ".join(r.event_types) or "all it takes",
                f"{r.events_examined}/{r.events_total}",
                r.deliveries_created,
                r.created_at,
                r.requested_by,
            ]
            for r in rows
        ],
        empty="no replays",
    )


def _replay_json(r) -> dict:
    """As the API shows it (GET /api/v1/webhooks/<id>/replays/<replay id>/)."""
    return dict(ReplaySerializer(r).data)


def rotate_secret(console: Console, *, endpoint: str, grace=None, organization=None, **_) -> None:
    e = common.endpoint(endpoint, common.organization(organization))
    secret = e.rotate_secret(common.parse_duration(grace, "--grace") if grace is not None else None)
    if console.as_json:  # as POST /api/v1/webhooks/<id>/rotate-secret/ answers
        console.json({"endpoint": e.pk, "secret": secret, "previous_secret_expires_at": e.previous_secret_expires_at})
        return
    console.print(f"New secret for {e.pk}: {secret}")
    console.print(
        "Copy it now: it is not shown again. The previous secret also signs until "
        f"{common.when(e.previous_secret_expires_at)}."
    )
