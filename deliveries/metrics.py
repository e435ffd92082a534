"""Prometheus metrics: what the pipeline counts as it goes.

Counters and histograms are moved by the code that does the work (`events.publish`,
`store.record`), once per batch where it can: a label's count is added in one step, so a
batch of 100 successes costs one increment, plus one observation per attempt for each
histogram (~7 µs a delivery, ~1.5% of a worker's CPU per delivery; bench/ours.py metrics).

Processes share them through prometheus-client's multiprocess mode: every process (gunicorn
workers, Celery prefork children, the worker's threads) writes its figures to files in
PROMETHEUS_MULTIPROC_DIR (settings; default ./var/metrics), and `GET /metrics` adds them up
(webhooks_project/monitoring.py, which also reads the gauges at scrape time).

Labels stay bounded: event type and outcome class; an endpoint label only with
WEBHOOK_METRICS_ENDPOINT_LABELS (one series per endpoint: fine for tens, not for thousands).
"""

import bisect
import collections
import time

from django.conf import settings
from prometheus_client import Counter, Histogram

from .transport import OUTCOME_CLASSES, outcome_class

ENABLED = settings.WEBHOOK_METRICS_ENABLED
_BY_ENDPOINT = settings.WEBHOOK_METRICS_ENDPOINT_LABELS
_attempt_labels = ["outcome", "endpoint"] if _BY_ENDPOINT else ["outcome"]

EVENTS_PUBLISHED = Counter("webhooks_events_published", "Events recorded for delivery.", ["event_type"])
EVENTS_OVERSIZE = Counter(
    "webhooks_events_oversize",
    "Events over WEBHOOK_MAX_PAYLOAD_BYTES, recorded without their data: their endpoints' deliveries fail unsent.",
    ["event_type"],
)
ATTEMPTS = Counter(
    "webhooks_attempts",
    "POSTs made, by outcome class (2xx, 3xx, 4xx, 5xx, timeout, connection_error, refused).",
    _attempt_labels,
)
DELIVERIES_FINISHED = Counter(
    "webhooks_deliveries_finished", "Deliveries that reached a final status (succeeded, failed, dead).", ["status"]
)
RETRIES_SCHEDULED = Counter("webhooks_retries_scheduled", "Failed attempts given a time for another try.")
ATTEMPT_SECONDS = Histogram(
    "webhooks_attempt_duration_seconds",
    "Time from sending a POST to its answer (or to giving up on one).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LATENCY_SECONDS = Histogram(
    "webhooks_delivery_latency_seconds",
    "Time from an event's creation to its successful delivery (retries included).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
)

# Series that exist from the start at 0, so a first failure is an increase Prometheus sees
# (a series that appears at 2 has no earlier sample to rise from).
for _status in ("succeeded", "failed", "dead"):
    DELIVERIES_FINISHED.labels(_status)
if not _BY_ENDPOINT:
    for _class in OUTCOME_CLASSES:
        ATTEMPTS.labels(_class)


def event_published(event_type: str) -> None:
    if ENABLED:
        EVENTS_PUBLISHED.labels(event_type).inc()


def event_oversize(event_type: str) -> None:
    if ENABLED:
        EVENTS_OVERSIZE.labels(event_type).inc()


def deliveries_failed_unsent(count: int) -> None:
    """Count deliveries finished `failed` unsent: their event was too large to send, or its
    payload expired or was erased before they were delivered (retention.py)."""
    if ENABLED and count:
        DELIVERIES_FINISHED.labels("failed").inc(count)


def attempts_recorded(jobs: list, outcomes: list) -> None:
    """Count a recorded batch: `jobs` (lanes.Job, with their response) and their outcomes."""
    if not ENABLED:
        return
    attempts, finished = collections.Counter(), collections.Counter()
    retries = 0
    now = time.time()
    durations, latencies = [], []
    for job, outcome in zip(jobs, outcomes, strict=True):
        response = job.response
        klass = outcome_class(response.status_code, response.error)
        attempts[(klass, job.delivery.endpoint_id or "") if _BY_ENDPOINT else (klass,)] += 1
        durations.append(response.duration_ms / 1000)
        if outcome.status == "pending":
            retries += 1
        else:
            finished[outcome.status] += 1
            if outcome.status == "succeeded":
                latencies.append(max(0.0, now - job.delivery.event.created_at.timestamp()))
    _observe_all(ATTEMPT_SECONDS, durations)
    _observe_all(LATENCY_SECONDS, latencies)
    for labels, count in attempts.items():
        ATTEMPTS.labels(*labels).inc(count)
    for status, count in finished.items():
        DELIVERIES_FINISHED.labels(status).inc(count)
    if retries:
        RETRIES_SCHEDULED.inc(retries)


def _observe_all(histogram: Histogram, values: list[float]) -> None:
    """`histogram.observe(v)` for each value, as one increment per bucket touched and one of
    the sum. Each observation in multiprocess mode is two locked writes to a mapped file
    (~2.7 µs); a batch of 50 touches a few buckets. Reaches into the Histogram's buckets,
    which prometheus-client has kept as they are since 0.4 (tests/test_metrics.py checks the
    result against `observe`)."""
    if not values:
        return
    bounds = histogram._upper_bounds  # ascending, the last +Inf
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(sum(values))
