"""Prometheus metrics: GET /metrics shows what a real worker did (its counters reach the web
process through the shared multiprocess directory) and the state read at scrape time.

The figures are compared as differences: counters are cumulative over the test session.
"""

import datetime
import urllib.request

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from agents_hooks.models import Step
from deliveries.models import Delivery, Event
from tests.support import Worker, free_port, wait_until


def scrape(client: Client | None = None, **headers) -> dict[tuple, float]:
    """GET /metrics, as {(sample name, sorted labels): value}."""
    response = (client or Client()).get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def complete_a_step(agent) -> Step:
    step = Step.objects.create(agent=agent)
    step.status = "success"
    step.save()
    return step


def test_counters_move_as_deliveries_succeed_fail_and_die(live, agent, make_endpoint):
    before = scrape()
    make_endpoint("/ok")
    make_endpoint("/down")
    live.script("/down", [503] * 9)  # 3 deliveries x 3 attempts (the suite schedules 1 s, 3 s), then dead
    for _ in range(3):
        complete_a_step(agent)

    wait_until(lambda: not Delivery.objects.filter(status="pending").exists(), timeout=30, message="all finished")
    after = wait_until(
        lambda: (
            (s := scrape())
            and value(s, "webhooks_deliveries_finished_total", status="dead")
            - value(before, "webhooks_deliveries_finished_total", status="dead")
            == 3
            and s
        ),
        message="the worker's counts to reach /metrics",
    )

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("webhooks_events_published_total", event_type="agent.step.completed") == 3
    assert moved("webhooks_attempts_total", outcome="2xx") == 3
    assert moved("webhooks_attempts_total", outcome="5xx") == 9  # 3 deliveries x (1 + 2 retries)
    assert moved("webhooks_retries_scheduled_total") == 6
    assert moved("webhooks_deliveries_finished_total", status="succeeded") == 3
    assert moved("webhooks_deliveries_finished_total", status="dead") == 3
    assert moved("webhooks_attempt_duration_seconds_count") == 12
    assert moved("webhooks_delivery_latency_seconds_count") == 3
    # The attempt log agrees with the counters.
    assert Delivery.objects.filter(status="succeeded").count() == 3
    assert Delivery.objects.filter(status="dead", attempt_count=3).count() == 3


def test_an_unanswered_attempt_is_classed_as_a_connection_error(live, agent, make_endpoint):
    before = scrape()
    make_endpoint(url=f"http://127.0.0.1:{free_port()}/nobody-listens")
    complete_a_step(agent)
    after = wait_until(
        lambda: (
            (s := scrape())
            and value(s, "webhooks_attempts_total", outcome="connection_error")
            > value(before, "webhooks_attempts_total", outcome="connection_error")
            and s
        ),
        message="the refused connection to be counted",
    )
    assert value(after, "webhooks_attempts_total", outcome="2xx") == value(
        before, "webhooks_attempts_total", outcome="2xx"
    )


@pytest.mark.django_db
def test_gauges_read_the_backlog_at_scrape_time(org, make_endpoint):
    endpoint = make_endpoint()
    off = make_endpoint("/off", is_active=False)
    event = Event.objects.create(type="agent.step.completed", organization=org, body="{}", created_at=timezone.now())
    an_hour_ago = timezone.now() - datetime.timedelta(hours=1)
    common = {"event": event, "created_at": an_hour_ago}
    Delivery.objects.create(endpoint=endpoint, next_attempt_at=an_hour_ago, **common)  # due, an hour late
    Delivery.objects.create(endpoint=endpoint, next_attempt_at=timezone.now() + datetime.timedelta(hours=1), **common)
    Delivery.objects.create(endpoint=off, next_attempt_at=None, **common)  # held
    Delivery.objects.create(endpoint=endpoint, status="succeeded", **common)

    samples = scrape()
    assert value(samples, "webhooks_deliveries_pending") == 2
    assert value(samples, "webhooks_deliveries_due") == 1
    assert value(samples, "webhooks_deliveries_held") == 1
    assert 3590 < value(samples, "webhooks_oldest_due_age_seconds") < 3700
    assert 3590 < value(samples, "webhooks_oldest_pending_age_seconds") < 3700
    assert value(samples, "webhooks_events_waiting_fanout") == 1
    assert value(samples, "webhooks_endpoints_disabled") == 1
    assert value(samples, "webhooks_up", source="database") == 1
    assert value(samples, "webhooks_up", source="broker") == 1
    assert ("webhooks_broker_queue_messages", ()) in samples


@pytest.mark.django_db
def test_a_metrics_token_is_asked_for_when_set(settings):
    settings.WEBHOOK_METRICS_TOKEN = "s3cret-scrape"
    client = Client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused["WWW-Authenticate"] == "Bearer"
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert scrape(client, Authorization="Bearer s3cret-scrape")


@pytest.mark.django_db
def test_a_broker_that_does_not_answer_leaves_the_scrape_standing():
    from webhooks_project.celery import app

    previous = app.conf.broker_read_url
    app.conf.broker_read_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    try:
        samples = scrape()
    finally:
        app.conf.broker_read_url = previous
    assert value(samples, "webhooks_up", source="broker") == 0
    assert value(samples, "webhooks_up", source="database") == 1
    assert ("webhooks_broker_queue_messages", ()) not in samples
    assert ("webhooks_deliveries_due", ()) in samples


def test_a_worker_on_a_host_of_its_own_serves_its_counters(receiver_only, agent, make_endpoint, tmp_path):
    """WEBHOOK_METRICS_PORT: a prefork worker with a metrics directory of its own (as on
    another host) serves the counters of its pool processes, which the web cannot see."""
    port = free_port()
    worker = Worker(
        tmp_path / "worker.log",
        extra_env={"WEBHOOK_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")},
        pool="prefork",
        concurrency=2,
        beat=False,
    )
    try:
        make_endpoint("/elsewhere")
        complete_a_step(agent)
        receiver_only.wait_for(1, path="/elsewhere")

        def served() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        wait_until(lambda: 'webhooks_attempts_total{outcome="2xx"} 1.0' in served(), message="the worker's exporter")
        assert 'webhooks_deliveries_finished_total{status="succeeded"} 1.0' in served()
    finally:
        worker.stop()


def test_observing_a_batch_fills_the_buckets_as_observing_each_value():
    from prometheus_client import Histogram

    from deliveries import metrics

    values = [0.0, 0.005, 0.0051, 0.3, 2.5, 31.0, 1e9, 0.01, 0.01]
    each = Histogram("test_each_seconds", "", buckets=(0.005, 0.01, 2.5, 30), registry=None)
    batch = Histogram("test_batch_seconds", "", buckets=(0.005, 0.01, 2.5, 30), registry=None)
    for v in values:
        each.observe(v)
    metrics._observe_all(batch, values)
    assert [b.get() for b in batch._buckets] == [b.get() for b in each._buckets] == [2, 3, 2, 0, 2]
    assert batch._sum.get() == pytest.approx(each._sum.get())
