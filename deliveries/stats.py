"""Delivery statistics for people to look at: volume, success rate, attempt duration,
event-to-success latency, outcome classes and retries over the last hour, day or week, for
one endpoint, one organization or the whole service. The admin's charts and the stats API
both read `window_stats`.

The figures are computed from the delivery log when asked: four aggregate queries per window
(attempts by bucket, deliveries by bucket, then the window's attempt duration and latency
percentiles), each over an indexed time range. Attempts count when they started
(`started_at` index), deliveries when they were created ((endpoint, created_at) or (status,
created_at) index). A delivery's success rate is the share of those created in the window
that have succeeded so far, as the endpoint list shows it. The cost grows with the rows in
the window: on PostgreSQL about 0.4 s for a day of 140,000 attempts and 2 s for a week of a
million (README, "Statistics"); beyond that, Prometheus (deliveries/metrics.py) is the tool.

Outcome classes are `transport.outcome_class`, written as SQL conditions.

Percentiles are PostgreSQL's `percentile_cont`. SQLite (the embedded development setup) has no
such aggregate: there the values are read and interpolated the same way in Python.
"""

import datetime
import math
from dataclasses import dataclass

from django.db import connection
from django.db.models import Aggregate, Count, F, FloatField, Func, Q, QuerySet
from django.db.models.functions import Floor, Left
from django.db.models.lookups import Exact
from django.utils import timezone

from . import transport
from .models import Attempt, Delivery, DeliveryStatus


@dataclass(frozen=True)
class Window:
    name: str
    span: datetime.timedelta
    step: datetime.timedelta  # one bucket of the time series


WINDOWS = {
    w.name: w
    for w in (
        Window("1h", datetime.timedelta(hours=1), datetime.timedelta(minutes=5)),
        Window("24h", datetime.timedelta(hours=24), datetime.timedelta(hours=1)),
        Window("7d", datetime.timedelta(days=7), datetime.timedelta(hours=6)),
    )
}


def _error_starts(prefix: str) -> Exact:
    # The text's head compared, not LIKE: SQLite's LIKE ignores case, and "TimeoutError: …"
    # is a connection error, not a "timeout after …".
    return Exact(Left("error", len(prefix)), prefix)


_NO_ANSWER = Q(status_code__isnull=True)
_TIMEOUT = _NO_ANSWER & _error_starts("timeout")
_REFUSED = _NO_ANSWER & _error_starts("refused")

# `transport.outcome_class` as one SQL condition per class: every attempt meets exactly one
# (tests/test_stats.py holds the two to the same answers).
OUTCOMES: dict[str, Q] = {
    "2xx": Q(status_code__lt=300),
    "3xx": Q(status_code__gte=300, status_code__lt=400),
    "4xx": Q(status_code__gte=400, status_code__lt=500),
    "5xx": Q(status_code__gte=500),
    "timeout": _TIMEOUT,
    "connection_error": _NO_ANSWER & ~_TIMEOUT & ~_REFUSED,
    "refused": _REFUSED,
}
assert tuple(OUTCOMES) == transport.OUTCOME_CLASSES
OUTCOME_LABELS = {
    **{key: key for key in OUTCOMES},
    "connection_error": "connection error",
    "refused": "refused (URL safety)",
}


class EpochSeconds(Func):
    """Seconds since 1970 of a datetime column."""

    output_field = FloatField()
    template = "EXTRACT(EPOCH FROM %(expressions)s)"

    def as_sqlite(self, compiler, connection, **extra):
        # Django keeps datetimes in SQLite as UTC text, which julianday() reads.
        return self.as_sql(compiler, connection, template="((julianday(%(expressions)s) - 2440587.5) * 86400.0)")


class Percentile(Aggregate):
    """PostgreSQL's `percentile_cont(fraction) WITHIN GROUP (ORDER BY expression)`."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)r) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


def window_stats(window: str | Window, *, endpoint=None, organization=None, now=None) -> dict:
    """The figures of `window` ("1h", "24h" or "7d") for one endpoint, one organization (an
    instance or its id) or, neither given, the whole service; shaped as `StatsSerializer`:

    * `since`, `until`: the window, its start aligned down to a whole bucket, so that every
      bar of a chart is a whole hour (or 5 minutes, or 6 hours) but the current one: "24h"
      covers 24 to 25 hours.
    * `attempts`: `total`, `succeeded` (2xx), `success_rate`, `retries` (attempts numbered
      above 1), `retry_rate`, `outcomes` by class, `duration_ms` p50/p95.
    * `deliveries`: `total` created in the window, how many of them are `succeeded`, `failed`,
      `dead` or `pending` now, `success_rate`, and `latency_ms` p50/p95 from the event's
      creation to the delivery's success.
    * `series`: per bucket, oldest first, every bucket present: `start`, `attempts`,
      `retries`, `outcomes`, `duration_ms`, `deliveries`, `deliveries_succeeded`.

    Rates and percentiles are None where there is nothing to compute them from.
    """
    window = WINDOWS[window] if isinstance(window, str) else window
    until = now or timezone.now()
    step = window.step.total_seconds()
    since_epoch = math.floor((until - window.span).timestamp() / step) * step
    since = datetime.datetime.fromtimestamp(since_epoch, datetime.UTC)

    attempts = _attempts(endpoint, organization, since).filter(started_at__gte=since, started_at__lt=until)
    deliveries = _deliveries(endpoint, organization).filter(created_at__gte=since, created_at__lt=until)
    attempt_buckets = _attempt_buckets(attempts, since_epoch, step)
    delivery_buckets = _delivery_buckets(deliveries, since_epoch, step)
    succeeded = deliveries.filter(status=DeliveryStatus.SUCCEEDED)
    latency = (EpochSeconds("finished_at") - EpochSeconds("event__created_at")) * 1000.0

    series = []
    for index in range(max(1, math.ceil((until.timestamp() - since_epoch) / step))):
        a, d = attempt_buckets.get(index, {}), delivery_buckets.get(index, {})
        series.append(
            {
                "start": since + index * window.step,
                "attempts": a.get("total", 0),
                "retries": a.get("retries", 0),
                "outcomes": {key: a.get(key, 0) for key in OUTCOMES},
                "duration_ms": {"p50": a.get("p50"), "p95": a.get("p95")},
                "deliveries": d.get("total", 0),
                "deliveries_succeeded": d.get(DeliveryStatus.SUCCEEDED, 0),
            }
        )
    outcomes = {key: sum(b["outcomes"][key] for b in series) for key in OUTCOMES}
    total, retries = sum(b["attempts"] for b in series), sum(b["retries"] for b in series)
    by_status = {s: sum(b.get(s, 0) for b in delivery_buckets.values()) for s in DeliveryStatus.values}
    created = sum(by_status.values())
    return {
        "window": window.name,
        "since": since,
        "until": until,
        "bucket_seconds": int(step),
        "attempts": {
            "total": total,
            "succeeded": outcomes["2xx"],
            "success_rate": _rate(outcomes["2xx"], total),
            "retries": retries,
            "retry_rate": _rate(retries, total),
            "outcomes": outcomes,
            "duration_ms": _percentiles(attempts, F("duration_ms")),
        },
        "deliveries": {
            "total": created,
            **by_status,
            "success_rate": _rate(by_status[DeliveryStatus.SUCCEEDED], created),
            "latency_ms": _percentiles(succeeded, latency),
        },
        "series": series,
    }


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _attempts(endpoint, organization, since: datetime.datetime) -> QuerySet:
    rows = Attempt.objects.order_by()
    if endpoint is None and organization is None:
        return rows
    # A delivery's `last_attempt_at` is its latest attempt's `started_at`, so only deliveries
    # attempted since the window began have attempts in it. Redundant for the answer, this
    # spares PostgreSQL a look into the attempt index for every older delivery when it starts
    # from the endpoint's deliveries (which are kept for good).
    rows = rows.filter(delivery__last_attempt_at__gte=since)
    if endpoint is not None:
        return rows.filter(delivery__endpoint=endpoint)
    return rows.filter(delivery__event__organization=organization)


def _deliveries(endpoint, organization) -> QuerySet:
    rows = Delivery.objects.order_by()
    if endpoint is not None:
        return rows.filter(endpoint=endpoint)  # the (endpoint, created_at) index
    if organization is not None:
        rows = rows.filter(event__organization=organization)
    # Every status named, PostgreSQL reads the window from the (status, created_at) index, one
    # range per status, instead of the whole table.
    return rows.filter(status__in=DeliveryStatus.values)


def _bucket(column: str, since_epoch: float, step: float) -> Floor:
    return Floor((EpochSeconds(column) - since_epoch) / step)


def _attempt_buckets(attempts: QuerySet, since_epoch: float, step: float) -> dict[int, dict]:
    """{bucket: {"total", "retries", each outcome class, "p50", "p95"}}, one GROUP BY."""
    aggregates = {
        "total": Count("pk"),
        "retries": Count("pk", filter=Q(number__gt=1)),
        **{key: Count("pk", filter=condition) for key, condition in OUTCOMES.items()},
    }
    if _native_percentiles():
        aggregates.update(p50=Percentile("duration_ms", 0.5), p95=Percentile("duration_ms", 0.95))
    rows = attempts.annotate(bucket=_bucket("started_at", since_epoch, step)).values("bucket").annotate(**aggregates)
    buckets = {int(row.pop("bucket")): row for row in rows}
    if not _native_percentiles():
        durations: dict[int, list[int]] = {}
        pairs = attempts.annotate(bucket=_bucket("started_at", since_epoch, step)).values_list("bucket", "duration_ms")
        for bucket, duration in pairs:
            durations.setdefault(int(bucket), []).append(duration)
        for bucket, values in durations.items():
            values.sort()
            buckets[bucket].update(p50=percentile(values, 0.5), p95=percentile(values, 0.95))
    for row in buckets.values():
        row.update(p50=_ms(row["p50"]), p95=_ms(row["p95"]))
    return buckets


def _delivery_buckets(deliveries: QuerySet, since_epoch: float, step: float) -> dict[int, dict]:
    """{bucket: {"total", each status}}, one GROUP BY."""
    counts = {status: Count("pk", filter=Q(status=status)) for status in DeliveryStatus.values}
    rows = (
        deliveries.annotate(bucket=_bucket("created_at", since_epoch, step))
        .values("bucket")
        .annotate(total=Count("pk"), **counts)
    )
    return {int(row.pop("bucket")): row for row in rows}


def _percentiles(rows: QuerySet, value) -> dict:
    """{"p50", "p95"} of `value` over `rows`: one aggregate."""
    if _native_percentiles():
        found = rows.aggregate(p50=Percentile(value, 0.5), p95=Percentile(value, 0.95))
    else:
        ordered = sorted(v for v in rows.annotate(v=value).values_list("v", flat=True) if v is not None)
        found = {"p50": percentile(ordered, 0.5), "p95": percentile(ordered, 0.95)}
    return {key: _ms(v) for key, v in found.items()}


def _native_percentiles() -> bool:
    return connection.vendor == "postgresql"


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def percentile(ordered: list, fraction: float) -> float | None:
    """`percentile_cont` of sorted values: linear interpolation between the nearest ranks."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
