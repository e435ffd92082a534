"""What Prometheus scrapes: GET /metrics, and a worker's own exporter (WEBHOOK_METRICS_PORT).

The counters and histograms are kept by `deliveries.metrics` in every process; here they are
added up across the processes that share PROMETHEUS_MULTIPROC_DIR. The gauges (backlog, due,
held, oldest due, disabled endpoints, broker queue, heartbeats) are kept by no process:
`StateCollector` reads them from the database and the broker at each scrape, so they are
right however many processes there are, or none.
"""

import datetime
import logging
import os

from django.conf import settings
from django.db.models import Count, Min, Q
from django.http import HttpResponse
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from . import probes

logger = logging.getLogger(__name__)


class StateCollector:
    """Gauges read from the database and the broker at each scrape (see the module's doc).

    A source that does not answer is left out of that scrape, with `webhooks_up{source}` 0,
    rather than failing the whole scrape: the counters still matter most when the database
    or the broker is down."""

    def collect(self):
        from deliveries.models import Delivery, DeliveryStatus, Event
        from webhooks.models import Endpoint

        up = GaugeMetricFamily("webhooks_up", "Whether a source of the gauges answered this scrape.", labels=["source"])
        try:
            now = timezone.now()
            pending = Delivery.objects.filter(status=DeliveryStatus.PENDING).aggregate(
                scheduled=Count("pk", filter=Q(next_attempt_at__isnull=False)),
                due=Count("pk", filter=Q(next_attempt_at__lte=now)),
                held=Count("pk", filter=Q(next_attempt_at__isnull=True)),
                oldest_due=Min("next_attempt_at", filter=Q(next_attempt_at__lte=now)),
                oldest=Min("created_at"),
            )
            unfanned = Event.objects.filter(fanned_out_at__isnull=True).count()
            disabled = Endpoint.objects.filter(is_active=False).count()
            ages = probes.heartbeat_ages()
        except Exception:
            logger.warning("metrics: the database did not answer", exc_info=True)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            figures = [
                ("deliveries_pending", "Deliveries waiting for an attempt, held ones excluded.", pending["scheduled"]),
                ("deliveries_due", "Pending deliveries whose time has come.", pending["due"]),
                ("deliveries_held", "Deliveries held while their endpoint is disabled.", pending["held"]),
                (
                    "oldest_due_age_seconds",
                    "How late the longest-due delivery is (0: none is due).",
                    pending["oldest_due"],
                ),
                ("oldest_pending_age_seconds", "Age of the oldest unfinished delivery.", pending["oldest"]),
                ("events_waiting_fanout", "Events not yet turned into deliveries.", unfanned),
                ("endpoints_disabled", "Endpoints disabled (by failures, 410 Gone, or by hand).", disabled),
            ]
            figures += [
                (f"{name}_heartbeat_age_seconds", f"Seconds since a {name} last said it was alive.", age)
                for name, age in ages.items()
                if age is not None
            ]
            for name, documentation, figure in figures:
                if isinstance(figure, datetime.datetime):
                    figure = max(0.0, (now - figure).total_seconds())
                yield GaugeMetricFamily(f"webhooks_{name}", documentation, value=figure or 0)
        try:
            length = probes.broker_queue_length(timeout=settings.WEBHOOK_READY_BROKER_TIMEOUT)
        except Exception:
            logger.warning("metrics: the broker did not answer", exc_info=True)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            yield GaugeMetricFamily(
                "webhooks_broker_queue_messages", "Task messages waiting in the broker.", value=length
            )
        yield up


def counters_registry() -> CollectorRegistry:
    """The counters and histograms of every process sharing PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return registry


def scrape_registry() -> CollectorRegistry:
    """What `GET /metrics` serves: the counters of all processes and the state gauges."""
    registry = counters_registry()
    registry.register(StateCollector())
    return registry


def start_worker_exporter(port: int) -> None:
    """Serve this host's worker figures on `port` (a worker on a host without the web)."""
    from prometheus_client import start_http_server

    start_http_server(port, registry=counters_registry())
    logger.info("metrics: serving the worker's counters on port %d", port)


def view(request):
    """GET /metrics: Prometheus text format. With WEBHOOK_METRICS_TOKEN, a bearer token is
    asked for (the figures name no endpoint or secret, but tell traffic and backlog)."""
    token = settings.WEBHOOK_METRICS_TOKEN
    if token and not constant_time_compare(request.headers.get("Authorization", ""), f"Bearer {token}"):
        response = HttpResponse("metrics: a bearer token is required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = "Bearer"
        return response
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)
