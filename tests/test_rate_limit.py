"""An endpoint's rate limit holds across worker processes (counted in Redis), and the
deliveries over it wait for their second instead of being dropped or counted as attempts."""

import logging
import time
import uuid
from collections import Counter

from agents_hooks.models import Step
from deliveries.models import Attempt, Delivery
from tests.support import Worker, free_port, wait_until
from webhooks import ratelimit


def complete_steps(agent, count: int) -> None:
    for _ in range(count):
        step = Step.objects.create(agent=agent)
        step.status = "success"
        step.save()


def per_second(arrivals) -> Counter:
    return Counter(int(r.at) for r in arrivals)


def test_rate_limit_spreads_deliveries_across_seconds_and_workers(live, agent, make_endpoint, tmp_path):
    limited = make_endpoint("/limited", rate_limit=3)
    make_endpoint("/free")
    # A second worker (two processes) beside the suite's: three processes share the limit.
    extra = Worker(tmp_path / "extra.log", pool="prefork", concurrency=2, beat=False)
    try:
        complete_steps(agent, 12)
        live.wait_for(12, path="/free", timeout=20)
        wait_until(
            lambda: Delivery.objects.filter(endpoint=limited, status="succeeded").count() == 12,
            timeout=30,
            message="every limited delivery sent",
        )
    finally:
        extra.stop()
    received = live.received("/limited")
    assert sorted(r.headers["webhook-id"] for r in received) == sorted(
        Delivery.objects.filter(endpoint=limited).values_list("event_id", flat=True)
    )  # each exactly once
    # The limit is on when POSTs are sent (each attempt's start, the worker's clock): their
    # arrival can slip into the next second on a loaded machine.
    started = Counter(
        int(t.timestamp())
        for t in Attempt.objects.filter(delivery__endpoint=limited).values_list("started_at", flat=True)
    )
    assert max(started.values()) <= 3, started
    assert len(started) >= 4  # 12 at 3 a second
    assert max(per_second(live.received("/free")).values()) > 3  # the other endpoint is not held back
    # Waiting for a slot is not an attempt.
    assert set(Attempt.objects.filter(delivery__endpoint=limited).values_list("number", flat=True)) == {1}


def test_reservations_fill_this_second_then_the_next(settings):
    settings.WEBHOOK_RATE_LIMIT_HORIZON = 2
    while True:
        endpoint_id = f"ep_{uuid.uuid4().hex}"
        began = time.time()
        first = ratelimit.reserve(endpoint_id, 5, 4)
        second = ratelimit.reserve(endpoint_id, 5, 9)
        ended = time.time()
        if int(began) == int(ended):  # both within one second of the clock: same windows
            break
    assert first == [(0.0, 4)]
    # 1 left in this second, 5 in the next, 3 in the one after; nothing is over-promised.
    assert [n for _, n in second] == [1, 5, 3]
    assert 0 < second[1][0] <= 1 < second[2][0] <= 2
    third = ratelimit.reserve(endpoint_id, 5, 10)
    assert sum(n for _, n in third) <= 5  # only what is left within the horizon


def test_without_redis_the_limit_is_kept_in_this_process(settings, caplog):
    settings.WEBHOOK_RATE_LIMIT_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    settings.WEBHOOK_RATE_LIMIT_HORIZON = 1
    endpoint_id = f"ep_{uuid.uuid4().hex}"
    with caplog.at_level(logging.WARNING, logger="webhooks"):
        slots = ratelimit.reserve(endpoint_id, 2, 10)
    assert sum(n for _, n in slots) <= 4 and slots[0] == (0.0, 2)  # this second's 2, the next's 2
    assert "counted in this process" in caplog.text
