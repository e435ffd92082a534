"""A slow receiver must not hold up the others (deliveries/lanes.py).

The test worker runs with WEBHOOK_STRAGGLER_AFTER=0.3 and WEBHOOK_ENDPOINT_CONCURRENCY=2
(tests/settings.py), and a 2 s request timeout; the slow receiver here answers in 1.5 s.
"""

import re
import uuid

from django.db import transaction

from agents_hooks.models import Step
from deliveries.events import publish
from deliveries.fanout import fan_out
from deliveries.models import Attempt, Delivery
from deliveries.tasks import deliver_batch
from tests.receiver import Reply
from tests.support import Worker, wait_until

SLOW = 1.5
STRAGGLED = r"requests still running after 0.3s go on in the slow lane"


def complete_steps(agent, count: int) -> None:
    for _ in range(count):
        step = Step.objects.create(agent=agent)
        step.status = "success"
        step.save()


def most_at_once(arrivals: list[float], held_for: float) -> int:
    """The most requests a receiver that holds each for `held_for` seconds had open at once
    (a little under, so a request that arrives just as another is answered is not counted)."""
    window = held_for * 0.9
    return max(sum(1 for a in arrivals if t - window < a <= t) for t in arrivals)


def test_fast_endpoint_is_recorded_without_waiting_for_a_slow_one(live, agent, make_endpoint):
    slow, fast = make_endpoint("/slow"), make_endpoint("/fast")
    live.script("/slow", [Reply(200, delay=SLOW)] * 4)
    complete_steps(agent, 4)  # each event goes to both, in the same batch

    wait_until(
        lambda: Delivery.objects.filter(endpoint=fast, status="succeeded").count() == 4,
        timeout=10,
        message="the fast endpoint's deliveries recorded",
    )
    # Recorded while every slow request was still being answered: nobody waited for them.
    assert not Delivery.objects.filter(endpoint=slow, status="succeeded").exists()

    wait_until(
        lambda: Delivery.objects.filter(endpoint=slow, status="succeeded").count() == 4,
        timeout=30,
        message="the slow endpoint's deliveries recorded by the slow lane",
    )
    assert len(live.received("/slow")) == 4  # each sent once
    for attempt in Attempt.objects.filter(delivery__endpoint=slow):
        assert attempt.number == 1 and attempt.status_code == 200
        assert attempt.duration_ms >= SLOW * 1000 - 50


def test_a_slow_endpoint_gets_a_few_requests_at_a_time_and_every_delivery(live, worker, agent, make_endpoint):
    slow = make_endpoint("/slow")
    live.script("/slow", [Reply(200, delay=SLOW)] * 6)
    marked = len(re.findall(STRAGGLED, worker.log()))
    complete_steps(agent, 1)
    wait_until(lambda: len(re.findall(STRAGGLED, worker.log())) > marked, message="the endpoint marked slow")
    complete_steps(agent, 5)  # these go to the slow lane, or wait in the database for it

    wait_until(
        lambda: Delivery.objects.filter(endpoint=slow, status="succeeded").count() == 6,
        timeout=30,
        message="every deferred delivery sent",
    )
    received = live.received("/slow")
    assert sorted(r.headers["webhook-id"] for r in received) == sorted(
        Delivery.objects.filter(endpoint=slow).values_list("event_id", flat=True)
    )
    assert most_at_once([r.at for r in received], SLOW) <= 2  # WEBHOOK_ENDPOINT_CONCURRENCY
    assert not Attempt.objects.filter(delivery__endpoint=slow).exclude(number=1).exists()


def test_a_slow_failure_is_retried_from_the_slow_lane(live, agent, make_endpoint):
    endpoint = make_endpoint("/slow")
    live.script("/slow", [Reply(500, delay=SLOW), Reply(200)])
    complete_steps(agent, 1)

    live.wait_for(2, path="/slow", timeout=20)
    wait_until(lambda: Delivery.objects.get(endpoint=endpoint).status == "succeeded", message="retry recorded")
    first, second = Attempt.objects.filter(delivery__endpoint=endpoint).order_by("number")
    assert (first.status_code, second.status_code) == (500, 200)
    assert first.duration_ms >= SLOW * 1000 - 50
    # Retried after the backoff (1 s in the tests), counted from the slow answer.
    assert (second.started_at - first.started_at).total_seconds() >= SLOW + 1 - 0.1


def test_a_warm_shutdown_finishes_and_records_the_slow_lane(live, org, make_endpoint, tmp_path):
    make_endpoint("/slow")
    live.script("/slow", [Reply(200, delay=SLOW)])
    queue = f"shutdown-{uuid.uuid4().hex[:8]}"
    own = Worker(tmp_path / "own.log", extra_env={"CELERY_QUEUE": queue}, beat=False)
    try:
        with transaction.atomic():  # fanned out here before the suite's worker hears of it
            event = publish("agent.custom.thing", organization=org, data={"n": 1})
            (delivery,) = fan_out([event.pk])
        Delivery.objects.filter(pk=delivery.pk).update(lease=None, locked_until=None)
        deliver_batch.apply_async(([delivery.pk],), queue=queue)
        live.wait_for(1, path="/slow")
        own.wait_log(r"go on in the slow lane")  # the task is done; the POST still running
        own.stop()  # SIGTERM while the receiver still holds the request
    finally:
        own.stop()
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and delivery.lease is None
    (attempt,) = Attempt.objects.filter(delivery=delivery)
    assert attempt.status_code == 200 and attempt.duration_ms >= SLOW * 1000 - 50
    assert len(live.received("/slow")) == 1


def test_one_batch_full_of_a_slow_endpoint_does_not_hold_up_its_other_delivery(live, org, make_endpoint, tmp_path):
    """Eight requests to a slow endpoint and one to a fast one, in one batch, on a worker with
    two HTTP threads: the fast one is not queued behind the slow ones, and the slow ones that
    had not started wait in the database instead of holding the batch."""
    slow, fast = make_endpoint("/slow"), make_endpoint("/fast")
    live.script("/slow", [Reply(200, delay=SLOW)] * 8)
    ids = []
    for endpoint in [slow] * 8 + [fast]:  # the fast delivery last
        with transaction.atomic():  # fanned out here before the suite's worker hears of it
            event = publish("agent.custom.thing", organization=org, data={}, endpoint=endpoint)
            ids += [d.pk for d in fan_out([event.pk])]
    Delivery.objects.filter(pk__in=ids).update(lease=None, locked_until=None)
    queue = f"burst-{uuid.uuid4().hex[:8]}"
    own = Worker(tmp_path / "own.log", extra_env={"CELERY_QUEUE": queue, "WEBHOOK_HTTP_CONCURRENCY": "2"}, beat=False)
    try:
        deliver_batch.apply_async((ids,), queue=queue)
        wait_until(
            lambda: Delivery.objects.filter(endpoint=fast, status="succeeded").exists(),
            timeout=10,
            message="the fast delivery recorded",
        )
        wait_until(
            lambda: Delivery.objects.filter(endpoint=slow, status="succeeded").count() == 8,
            timeout=40,
            message="every slow delivery sent",
        )
    finally:
        own.stop()
    # Both HTTP threads were held by slow requests for 1.5 s: the fast request arrived before
    # either was answered, so it was not queued behind them. (Arrival times at the receiver, not
    # when the worker got round to recording, which a loaded machine can push past 1.5 s.)
    first_slow = min(r.at for r in live.received("/slow"))
    (fast_request,) = live.received("/fast")
    assert fast_request.at < first_slow + SLOW
    assert len(live.received("/slow")) == 8  # each once
    assert set(Attempt.objects.filter(delivery__endpoint=slow).values_list("number", flat=True)) == {1}
