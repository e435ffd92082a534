"""A receiver that is down or refusing: what gets retried, when, and what the log shows.

The suite runs with WEBHOOK_RETRY_SCHEDULE=1,3 and no jitter (tests/settings.py): two
retries, 1 s and then 3 s after the attempt before. Retries are sent by the worker's due
loop at the time written on the delivery, so the tests also check that time against the
moment the receiver saw the POST.
"""

import datetime
import random
import socket

import pytest
from django.conf import settings
from django.utils import timezone

from agents_hooks.models import Step
from deliveries import pipeline, policy
from deliveries.models import Attempt, Delivery
from tests.receiver import Reply
from tests.support import fanned_out_here, wait_until

RETRIES = len(settings.WEBHOOK_RETRY_SCHEDULE)
# How late past its due time (plus one due-loop poll) a retry may arrive: never early, and
# within seconds, not at some later sweep; a loaded machine can take a few seconds to send.
LATE = 5.0


def complete_a_step(agent) -> Step:
    step = Step.objects.create(agent=agent)
    step.status = "success"
    step.save()
    return step


def finished_delivery():
    return Delivery.objects.exclude(status="pending").first()


def attempts_of(delivery) -> list[Attempt]:
    return list(Attempt.objects.filter(delivery=delivery).order_by("number"))


def due_time_after_attempt(delivery_id: int, number: int) -> float:
    """The next_attempt_at written after attempt `number` was recorded, as a Unix time."""
    row = wait_until(
        lambda: Delivery.objects.filter(pk=delivery_id, attempt_count=number).first(),
        message=f"attempt {number} recorded",
    )
    return row.next_attempt_at.timestamp()


def test_server_errors_are_retried_on_the_schedule_at_the_time_the_log_shows(live, agent, make_endpoint):
    assert settings.WEBHOOK_RETRY_SCHEDULE == [1, 3] and not settings.WEBHOOK_RETRY_JITTER
    make_endpoint()
    live.script("/hook", [500, 500, 200])
    complete_a_step(agent)

    first = live.wait_for(1)[0]
    delivery = Delivery.objects.get()
    second_due = due_time_after_attempt(delivery.pk, 1)
    second = live.wait_for(2)[1]
    third_due = due_time_after_attempt(delivery.pk, 2)
    third = live.wait_for(3)[2]
    assert first.body == second.body == third.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    assert second.at - first.at >= 0.95  # the schedule's first wait
    assert third.at - second.at >= 2.95  # its second
    # next_attempt_at is when the attempt is made: not before, and within the due loop's reach.
    for arrival, due in ((second.at, second_due), (third.at, third_due)):
        assert due - 0.05 <= arrival <= due + settings.WEBHOOK_DUE_POLL_INTERVAL + LATE, (arrival, due)

    delivery = wait_until(finished_delivery, message="delivery to finish")
    assert delivery.status == "succeeded"
    assert delivery.attempt_count == 3 and delivery.next_attempt_at is None
    assert [(a.number, a.status_code) for a in attempts_of(delivery)] == [(1, 500), (2, 500), (3, 200)]
    assert all(a.duration_ms >= 0 for a in attempts_of(delivery))


def test_jitter_moves_every_retry_the_first_included_and_the_log_says_when(live, org, make_endpoint, settings):
    """Attempts made here with 50% jitter; the worker's due loop sends each retry at the
    jittered time written on its delivery."""
    settings.WEBHOOK_RETRY_JITTER = 0.5
    settings.WEBHOOK_RETRY_SCHEDULE = [2]
    make_endpoint("/jitter")
    live.script("/jitter", [503] * 6)
    started = timezone.now()
    outcomes = pipeline.send_claimed(fanned_out_here(org, 6))
    assert {o.status for o in outcomes} == {"pending"}
    delays = sorted(o.delay for o in outcomes)
    assert all(1.0 <= d <= 3.0 for d in delays), delays  # 2 s +/- 50%
    assert len(set(delays)) == 6  # each drawn on its own
    due = {d.pk: d.next_attempt_at for d in Delivery.objects.all()}
    assert all(started + datetime.timedelta(seconds=0.9) <= at for at in due.values())

    retries = live.wait_for(12, path="/jitter", timeout=20)[6:]
    by_event = {d.event_id: due[d.pk].timestamp() for d in Delivery.objects.all()}
    for request in retries:
        expected = by_event[request.headers["webhook-id"]]
        assert expected - 0.05 <= request.at <= expected + settings.WEBHOOK_DUE_POLL_INTERVAL + LATE


def test_the_policy_jitters_each_wait_within_its_bounds(settings):
    settings.WEBHOOK_RETRY_JITTER = 0.2
    schedule = [5, 300, 1800]
    rng = random.Random(7)
    for made, base in enumerate(schedule, 1):
        draws = [policy.next_delay(made, schedule, rng=rng) for _ in range(200)]
        assert min(draws) >= base * 0.8 and max(draws) <= base * 1.2
        assert max(draws) - min(draws) > base * 0.3  # spread, not a constant
    assert policy.next_delay(len(schedule) + 1, schedule, rng=rng) is None  # used up: dead
    settings.WEBHOOK_RETRY_JITTER = 0
    assert [policy.next_delay(n, schedule) for n in (1, 2, 3)] == [5, 300, 1800]


def test_retry_after_counts_only_when_longer_and_up_to_the_cap(settings):
    settings.WEBHOOK_RETRY_JITTER = 0
    settings.WEBHOOK_RETRY_AFTER_MAX = 60
    assert policy.next_delay(1, [5], retry_after=30, status_code=429) == 30
    assert policy.next_delay(1, [5], retry_after=30, status_code=503) == 30
    assert policy.next_delay(1, [5], retry_after=2, status_code=503) == 5  # shorter than the schedule
    assert policy.next_delay(1, [5], retry_after=3600, status_code=429) == 60  # capped
    assert policy.next_delay(1, [5], retry_after=30, status_code=500) == 5  # only 429 and 503 ask


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
    assert [a.status_code for a in attempts_of(delivery)] == [503] * (RETRIES + 1)
    assert delivery.finished_at is not None and delivery.next_attempt_at is None
    assert len(live.received()) == RETRIES + 1


def test_an_endpoints_own_schedule_replaces_the_default(live, agent, make_endpoint):
    make_endpoint(retry_schedule=[2])  # one retry, after 2 s
    live.script("/hook", [503] * 10)
    complete_a_step(agent)
    delivery = wait_until(finished_delivery, timeout=30, message="delivery to be given up")
    assert delivery.status == "dead"
    first, second = live.received()
    assert second.at - first.at >= 1.95
    assert [a.status_code for a in attempts_of(delivery)] == [503, 503]


def test_an_empty_schedule_never_retries(live, agent, make_endpoint):
    make_endpoint(retry_schedule=[])
    live.script("/hook", [503])
    complete_a_step(agent)
    delivery = wait_until(finished_delivery, message="delivery to be given up")
    assert delivery.status == "dead" and delivery.attempt_count == 1


def test_retry_after_longer_than_the_schedule_is_honoured(live, agent, make_endpoint):
    make_endpoint()
    live.script("/hook", [Reply(429, headers={"Retry-After": "3"}), 200])
    complete_a_step(agent)
    first, second = live.wait_for(2)
    assert second.at - first.at >= 2.9  # not the 1 s of the schedule
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
    assert len(attempts) == RETRIES + 1
    assert all(a.status_code is None and "refused" in a.error.lower() for a in attempts)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_which_answers_are_retried(status):
    assert policy.judge(status) is policy.Verdict.RETRY


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 413, 422, 301, 302, 304])
def test_which_answers_fail_at_once(status):
    assert policy.judge(status) is policy.Verdict.FAILED


def test_no_answer_is_retried_and_a_refused_url_is_not():
    assert policy.judge(None) is policy.Verdict.RETRY
    assert policy.judge(None, refused=True) is policy.Verdict.FAILED
