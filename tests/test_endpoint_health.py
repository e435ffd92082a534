"""An endpoint that keeps failing is disabled after the window, its deliveries held, and
enabling it sends them. (The worker's attempt code runs in this process here, so the window
can be set per test; the resumed deliveries go through the real worker.)"""

import datetime
import logging

from django.utils import timezone

from deliveries import pipeline, recovery
from deliveries.models import Attempt, Delivery
from tests.support import fanned_out_here, wait_until
from webhooks.models import Endpoint


def record_event(org):
    """An event fanned out here (not by the worker), so this test makes the first attempt."""
    return fanned_out_here(org)


def test_failing_endpoint_is_disabled_after_the_window_and_resumed_by_enabling(live, org, make_endpoint, settings):
    settings.WEBHOOK_DISABLE_AFTER_HOURS = 1
    endpoint = make_endpoint("/down")
    live.script("/down", [503, 503])
    # Failing for two hours already (every attempt since then failed).
    Endpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now() - datetime.timedelta(hours=2))

    (delivery,) = record_event(org)
    (outcome,) = pipeline.send_claimed([delivery])
    assert outcome.status == "pending"  # a retry is due; the delivery is not dropped
    endpoint.refresh_from_db()
    assert endpoint.is_active is False
    assert endpoint.disabled_at is not None
    assert endpoint.disabled_reason == "every attempt failed for 1 hours"

    # Its retry comes due while it is disabled: the worker holds it and sends nothing.
    wait_until(
        lambda: Delivery.objects.filter(pk=delivery.pk, status="pending", next_attempt_at__isnull=True).exists(),
        message="the retry to be held",
    )
    assert len(live.received("/down")) == 1

    assert recovery.resume_endpoint(endpoint) == 1
    live.wait_for(2, path="/down")  # the held delivery, sent by the worker
    wait_until(lambda: Delivery.objects.get(pk=delivery.pk).attempt_count == 2, message="second attempt logged")
    endpoint.refresh_from_db()
    assert endpoint.is_active and endpoint.disabled_at is None and endpoint.failing_since is not None


def test_a_success_resets_the_failure_clock(live, org, make_endpoint, settings):
    settings.WEBHOOK_DISABLE_AFTER_HOURS = 1
    endpoint = make_endpoint("/flaky")
    Endpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now() - datetime.timedelta(minutes=50))
    pipeline.send_claimed(record_event(org))  # answers 200
    endpoint.refresh_from_db()
    assert endpoint.is_active and endpoint.failing_since is None


def test_first_failure_starts_the_clock_without_disabling(live, org, make_endpoint, settings):
    endpoint = make_endpoint("/first")
    live.script("/first", [500])
    pipeline.send_claimed(record_event(org))
    endpoint.refresh_from_db()
    assert endpoint.is_active and endpoint.failing_since is not None


def test_log_lines_name_the_endpoint_and_host_not_the_url(live, org, make_endpoint, caplog):
    endpoint = make_endpoint("/hook?token=s3cr3t-in-the-url")
    with caplog.at_level(logging.INFO, logger="deliveries"):
        pipeline.send_claimed(record_event(org))
    assert f"to {endpoint.pk} (127.0.0.1:{live.port}): 200" in caplog.text
    assert "s3cr3t" not in caplog.text
    # Nor the attempt log (tests/test_url_secrets_and_limits.py): the endpoint keeps the URL.
    assert Attempt.objects.get().url == live.url("/hook?[redacted]")
