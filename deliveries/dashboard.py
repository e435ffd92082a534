"""The admin's statistics pages, for looking rather than reading: the whole service
(/admin/stats/, linked from the admin index) and one endpoint (/admin/webhooks/endpoint/<id>/stats/,
linked from its change page and the endpoint list). Each shows the last 24 hours and the last
7 days: headline figures, then volume by outcome, success rate, attempt duration and error
types as charts drawn on the server (deliveries/charts.py) from `stats.window_stats`, the
numbers the stats API answers.
"""

import datetime

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from . import charts, stats
from .charts import Series

WINDOWS = {"24h": "Last 24 hours", "7d": "Last 7 days"}
OUTCOME_COLOURS = {
    "2xx": "#2e7d32",
    "3xx": "#0277bd",
    "4xx": "#ef6c00",
    "5xx": "#c62828",
    "timeout": "#6a1b9a",
    "connection_error": "#546e7a",
    "refused": "#ad1457",
}
# A time axis label every so many buckets, and its format (UTC, like the rest of the admin).
TICKS = {"1h": (2, "%H:%M"), "24h": (3, "%H:%M"), "7d": (4, "%a %d")}


def service_page(request) -> TemplateResponse:
    """The whole service. Staff only: urls.py wraps it in `admin.site.admin_view`."""
    title = "Delivery statistics"
    return _render(request, admin.site.each_context(request), title, [(title, None)], {})


def endpoint_page(request, endpoint, context: dict) -> TemplateResponse:
    """One endpoint; `context` is its admin site's (EndpointAdmin.stats_view checks permissions)."""
    crumbs = [
        (endpoint._meta.app_config.verbose_name, reverse("admin:app_list", args=[endpoint._meta.app_label])),
        ("Endpoints", reverse("admin:webhooks_endpoint_changelist")),
        (str(endpoint), reverse("admin:webhooks_endpoint_change", args=[quote(endpoint.pk)])),
        ("Statistics", None),
    ]
    context = {**context, "endpoint": endpoint, "api_path": f"/api/v1/webhooks/{endpoint.pk}/stats/?window=24h"}
    return _render(request, context, f"Statistics of {endpoint}", crumbs, {"endpoint": endpoint})


def _render(request, context: dict, title: str, crumbs: list, scope: dict) -> TemplateResponse:
    now = timezone.now()
    panels = [_panel(name, heading, stats.window_stats(name, now=now, **scope)) for name, heading in WINDOWS.items()]
    context = {"title": title, "crumbs": crumbs, "panels": panels, "api_path": "/api/v1/stats/?window=24h", **context}
    return TemplateResponse(request, "admin/deliveries/stats.html", context)


def _panel(name: str, heading: str, figures: dict) -> dict:
    """One window's headline figures and charts."""
    attempts, deliveries, buckets = figures["attempts"], figures["deliveries"], figures["series"]
    step = datetime.timedelta(seconds=figures["bucket_seconds"])
    every, tick_format = TICKS[name]
    times, ticks = [], []
    for b in buckets:
        start = timezone.localtime(b["start"])
        times.append(f"{start:%a %d %b %H:%M}–{start + step:%H:%M}")
        ticks.append(f"{start:{tick_format}}" if (start.timestamp() // step.total_seconds()) % every == 0 else "")
    times[-1] += " (so far)"
    volume = [
        Series(stats.OUTCOME_LABELS[key], colour, [b["outcomes"][key] for b in buckets])
        for key, colour in OUTCOME_COLOURS.items()
    ]
    answered = [_share(b["outcomes"]["2xx"], b["attempts"]) for b in buckets]
    delivered = [_share(b["deliveries_succeeded"], b["deliveries"]) for b in buckets]
    success = [
        Series("attempts answered 2xx", "#2e7d32", answered),
        Series("deliveries succeeded", "#0277bd", delivered),
    ]
    duration = [
        Series("p50", "#0277bd", [b["duration_ms"]["p50"] for b in buckets]),
        Series("p95", "#ef6c00", [b["duration_ms"]["p95"] for b in buckets]),
    ]
    errors = [(stats.OUTCOME_LABELS[k], attempts["outcomes"][k], c) for k, c in OUTCOME_COLOURS.items() if k != "2xx"]
    return {
        "name": name,
        "heading": heading,
        "since": figures["since"],
        "until": figures["until"],
        "tiles": [
            ("Deliveries", f"{deliveries['total']:,}", _statuses(deliveries)),
            ("Delivered", _percent(deliveries["success_rate"]), "of those deliveries, so far"),
            ("Attempts", f"{attempts['total']:,}", f"{_percent(attempts['retry_rate'])} retries"),
            ("Attempts answered 2xx", _percent(attempts["success_rate"]), f"{attempts['succeeded']:,} attempts"),
            ("Attempt duration p50", *_percentiles(attempts["duration_ms"])),
            ("Event to success p50", *_percentiles(deliveries["latency_ms"])),
        ],
        "charts": [
            ("Attempts by outcome", charts.stacked_bars(times, ticks, volume, title="Attempts by outcome")),
            ("Success rate", charts.lines(times, ticks, success, title="Success rate", percent=True)),
            ("Attempt duration (ms)", charts.lines(times, ticks, duration, title="Attempt duration (ms)")),
            ("Errors by type", charts.category_bars(errors, total=attempts["total"], title="Errors by type")),
        ],
    }


def _statuses(deliveries: dict) -> str:
    counts = [(deliveries[s], s) for s in ("succeeded", "pending", "failed", "dead")]
    return " · ".join(f"{count:,} {status}" for count, status in counts if count or status == "succeeded")


def _percentiles(figures: dict) -> tuple[str, str]:
    """A tile's figure (p50) and detail (p95)."""
    return _ms(figures["p50"]), f"p95 {_ms(figures['p95'])}"


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.1%}"


def _ms(value: float | None) -> str:
    """A duration as people read it: 35 ms, 4.2 s, 12 min, 5.5 h, 1.1 d (retries take hours)."""
    if value is None:
        return "—"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if value >= size:
            return f"{value / size:.1f} {unit}" if value < 10 * size else f"{value / size:,.0f} {unit}"
    return f"{value:,.0f} ms"
