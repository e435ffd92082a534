"""`webhooks stats`: the figures of the admin's charts and of GET /api/v1/stats/
(`stats.window_stats`) for the whole service, one organization or one endpoint."""

from .. import stats
from ..serializers import StatsSerializer
from . import common
from .common import Console


def register(subparsers) -> None:
    p = subparsers.add_parser("stats", help="volume, success rate, latency and retries over a window")
    p.add_argument("--window", default="24h", help=f"one of {', '.join(stats.WINDOWS)} (default 24h)")
    p.add_argument("--endpoint", metavar="ENDPOINT", help="only this endpoint's")
    p.add_argument("--series", action="store_true", help="also print the figures of each bucket of the window")
    common.add_common(p)
    p.set_defaults(func=show)


def show(console: Console, *, window: str, endpoint=None, series=False, organization=None, **_) -> None:
    if window not in stats.WINDOWS:
        raise common.bad_argument(f"--window: {window!r} is not one of {', '.join(stats.WINDOWS)}")
    org = common.organization(organization)
    e = common.endpoint(endpoint, org, "--endpoint") if endpoint is not None else None
    figures = stats.window_stats(window, endpoint=e, organization=None if e else org)
    if console.as_json:
        console.json(StatsSerializer(figures).data)
        return
    scope = f"endpoint {e.pk}" if e else f"organization {org.name} ({org.pk})" if org else "the whole service"
    a, d = figures["attempts"], figures["deliveries"]
    console.print(f"{scope}, last {window}: {common.when(figures['since'])} to {common.when(figures['until'])}")
    console.print()
    console.fields(
        [
            (
                "deliveries",
                f"{d['total']} created: {d['succeeded']} succeeded, {d['pending']} pending, "
                f"{d['failed']} failed, {d['dead']} dead",
            ),
            ("success rate", common.percent(d["success_rate"])),
            ("latency", f"p50 {_ms(d['latency_ms']['p50'])}, p95 {_ms(d['latency_ms']['p95'])} (event to success)"),
            ("attempts", f"{a['total']}, of which {a['retries']} retries ({common.percent(a['retry_rate'])})"),
            ("answered 2xx", f"{a['succeeded']} ({common.percent(a['success_rate'])})"),
            ("outcomes", ", ".join(f"{stats.OUTCOME_LABELS[k]} {n}" for k, n in a["outcomes"].items() if n) or "-"),
            ("duration", f"p50 {_ms(a['duration_ms']['p50'])}, p95 {_ms(a['duration_ms']['p95'])}"),
        ]
    )
    if series:
        console.print()
        console.table(
            ["FROM", "DELIVERIES", "SUCCEEDED", "ATTEMPTS", "RETRIES", "P50", "P95"],
            [
                [
                    b["start"],
                    b["deliveries"],
                    b["deliveries_succeeded"],
                    b["attempts"],
                    b["retries"],
                    _ms(b["duration_ms"]["p50"]),
                    _ms(b["duration_ms"]["p95"]),
                ]
                for b in figures["series"]
            ],
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
