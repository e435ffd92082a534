"""A receiver that is down or refusing: what gets retried, when, and what the log shows.

The test worker runs with WEBHOOK_RETRY_BACKOFF=1, WEBHOOK_MAX_RETRIES=2, jitter off and a
2 s timeout (tests/settings.py): retries come 1 s and then 2 s after the attempt before.
"""

import socket

from django.conf import settings

from agents_hooks.models import Step
from deliveries.models import Attempt, Delivery
from tests.receiver import Reply
from tests.support import wait_until


def complete_a_step(agent) -> Step:
    step = Step.objects.create(agent=agent)
    step.status = "success"
    step.save()
    return step


def finished_delivery():
    return Delivery.objects.exclude(status="pending").first()


def attempts_of(delivery) -> list[Attempt]:
    return list(Attempt.objects.filter(delivery=delivery).order_by("number"))


def test_server_errors_are_retried_with_growing_delays(live, agent, make_endpoint):
    assert settings.WEBHOOK_RETRY_BACKOFF == 1 and not settings.WEBHOOK_RETRY_JITTER
    make_endpoint()
    live.script("/hook", [500, 500, 200])
    complete_a_step(agent)

    first, second, third = live.wait_for(3)
    assert first.body == second.body == third.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    gap1, gap2 = second.at - first.at, third.at - second.at
    assert gap1 >= 0.9, gap1  # backoff * 2**0
    assert gap2 >= 1.9, gap2  # backoff * 2**1
    assert gap2 > gap1

    delivery = wait_until(finished_delivery, message="delivery to finish")
    assert delivery.status == "succeeded"
    assert delivery.attempt_count == 3
    assert [(a.number, a.status_code) for a in attempts_of(delivery)] == [(1, 500), (2, 500), (3, 200)]
    assert all(a.duration_ms >= 0 for a in attempts_of(delivery))


def test_client_error_fails_at_once(live, agent, make_endpoint):
    make_endpoint()
    live.script("/hook", [Reply(400, body=b'{"error": "bad payload"}')])
    complete_a_step(agent)
    delivery = wait_until(finished_delivery, message="delivery to finish")
    assert delivery.status == "failed"
    (attempt,) = attempts_of(delivery)
    assert attempt.status_code == 400
    assert attempt.response_body == '{"error": "bad payload"}'
    assert len(live.received()) == 1


def test_gone_fails_and_deactivates_the_endpoint(live, agent, make_endpoint):
    endpoint = make_endpoint()
    live.script("/hook", [410])
    complete_a_step(agent)
    delivery = wait_until(finished_delivery, message="delivery to finish")
    assert delivery.status == "failed"
    endpoint.refresh_from_db()
    assert endpoint.is_active is False


def test_retries_exhausted_marks_the_delivery_dead(live, agent, make_endpoint):
    make_endpoint()
    live.script("/hook", [503] * 10)
    complete_a_step(agent)
    delivery = wait_until(finished_delivery, timeout=30, message="delivery to be given up")
    assert delivery.status == "dead"
    assert [a.status_code for a in attempts_of(delivery)] == [503] * (settings.WEBHOOK_MAX_RETRIES + 1)
    assert delivery.finished_at is not None
    assert len(live.received()) == settings.WEBHOOK_MAX_RETRIES + 1


def test_retry_after_longer_than_backoff_is_honoured(live, agent, make_endpoint):
    make_endpoint()
    live.script("/hook", [Reply(429, headers={"Retry-After": "3"}), 200])
    complete_a_step(agent)
    first, second = live.wait_for(2)
    assert second.at - first.at >= 2.9  # not the 1 s backoff
    delivery = wait_until(finished_delivery, message="delivery to finish")
    assert delivery.status == "succeeded"
    assert [a.status_code for a in attempts_of(delivery)] == [429, 200]


def test_timeouts_are_logged_and_retried(live, agent, make_endpoint):
    make_endpoint()
    live.script("/hook", [Reply(200, delay=settings.WEBHOOK_TIMEOUT + 1), 200])
    complete_a_step(agent)
    delivery = wait_until(finished_delivery, timeout=30, message="delivery to finish")
    assert delivery.status == "succeeded"
    first, second = attempts_of(delivery)
    assert first.status_code is None
    assert "timeout" in first.error.lower()
    assert first.duration_ms >= settings.WEBHOOK_TIMEOUT * 1000 * 0.9
    assert second.status_code == 200


def test_connection_refused_is_retried_then_dead(live, agent, make_endpoint):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make_endpoint(url=f"http://127.0.0.1:{port}/hook")
    complete_a_step(agent)
    delivery = wait_until(finished_delivery, timeout=30, message="delivery to be given up")
    assert delivery.status == "dead"
    attempts = attempts_of(delivery)
    assert len(attempts) == settings.WEBHOOK_MAX_RETRIES + 1
    assert all(a.status_code is None and "refused" in a.error.lower() for a in attempts)
