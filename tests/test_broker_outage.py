"""The broker goes away while a worker is busy, and retries wait in the database, not in it.

Each test runs a private redis-server (killed, stopped, flushed at will) and its own worker
on it, with the suite's shared worker stopped; events are published by an agent process of
their own on that broker. The worker holds messages it has not acknowledged (tasks in
progress, prefetched ones) and deliveries wait for their retry when the broker dies: the state
in which celery/kombu 5.7.0 exit for good (issue #9). With the pinned versions the worker stays
up, its due loop keeps delivering from the database meanwhile, and it consumes again once the
broker is back.
"""

import re
import uuid

import pytest
from celery import Celery
from django.utils import timezone

from deliveries import pipeline
from deliveries.models import Attempt, Delivery
from tests.support import (
    BUSY_WORKER_ENV,
    PrivateRedis,
    Worker,
    agent_finished,
    busy_endpoints,
    complete_steps,
    fanned_out_here,
    start_agent,
    wait_until,
    wait_until_busy,
    wait_until_settled,
    webhook_ids,
)

pytestmark = pytest.mark.slow


def connections_made(worker: Worker, port: int) -> int:
    return len(re.findall(rf"Connected to redis://\S*127\.0\.0\.1:{port}/", worker.log()))


@pytest.mark.parametrize("fault, pool", [("kill", "prefork"), ("kill", "threads"), ("stop", "prefork")])
def test_a_busy_worker_rides_out_redis_going_away(receiver_only, agent, make_endpoint, tmp_path, fault, pool):
    receiver = receiver_only
    redis = PrivateRedis()
    redis.start()
    env = {"CELERY_BROKER_URL": redis.url, "CELERY_QUEUE": f"outage-{uuid.uuid4().hex[:8]}", **BUSY_WORKER_ENV}
    busy_endpoints(receiver, make_endpoint)
    steps = [agent.steps.create() for _ in range(40)]
    worker = Worker(tmp_path / "worker.log", extra_env=env, pool=pool, concurrency=2 if pool == "prefork" else 8)
    pid = worker.proc.pid
    try:
        # A task retry waiting in the worker (what a database blip leaves): a message it holds
        # unacknowledged until its countdown ends, as every retry did before issue #9.
        broker = Celery(set_as_current=False)
        with broker.connection_for_write(redis.url) as connection:
            broker.send_task(
                "deliveries.tasks.deliver_batch", ([],), countdown=60, queue=env["CELERY_QUEUE"], connection=connection
            )
        worker.wait_log(r"Task deliveries\.tasks\.deliver_batch\[[^\]]+\] received")
        publisher = start_agent(steps[:30], env)
        wait_until_busy(receiver)
        redis.kill() if fault == "kill" else redis.stop()
        agent_finished(publisher)

        # Redis is gone: the worker stays up, and its due loop delivers what it can from the
        # database: the retries, and the events whose messages died with Redis.
        receiver.wait_for(30, path="/slow", timeout=60)
        wait_until(
            lambda: Delivery.objects.filter(status="succeeded").count() == 60, timeout=60, message="all 60 delivered"
        )
        assert not redis.up()
        assert worker.proc.poll() is None, worker.log()[-3000:]

        redis.start()  # empty: everything it held is lost
        wait_until(lambda: connections_made(worker, redis.port) >= 2, 60, message="the worker to reconnect")
        complete_steps(steps[30:], env)  # published through the broker again, and consumed
        receiver.wait_for(40, path="/slow", timeout=30)
        wait_until_settled()
        assert worker.proc.poll() is None and worker.proc.pid == pid  # never restarted
    finally:
        worker.stop()
        redis.stop()

    slow = webhook_ids(receiver, "/slow")
    assert len(slow) == 40 and set(slow.values()) == {1}, "a delivery arrived twice, or not at all"
    failing = webhook_ids(receiver, "/failing")
    assert len(failing) == 40
    assert not Delivery.objects.exclude(status="succeeded").exists()
    assert Attempt.objects.filter(status_code=200).count() == 80  # one success each, never a second


def test_a_retry_due_in_an_hour_survives_a_worker_restart_and_a_broker_flush(
    receiver_only, org, make_endpoint, tmp_path
):
    receiver = receiver_only
    redis = PrivateRedis()
    redis.start()
    env = {"CELERY_BROKER_URL": redis.url, "CELERY_QUEUE": f"flush-{uuid.uuid4().hex[:8]}"}
    make_endpoint("/later", retry_schedule=[3600])
    receiver.script("/later", [503])  # then 200
    first = Worker(tmp_path / "first.log", extra_env=env, beat=False)
    try:
        (outcome,) = pipeline.send_claimed(fanned_out_here(org))
        assert outcome.status == "pending" and 3600 * 0.99 <= outcome.delay <= 3600 * 1.01
        delivery = Delivery.objects.get()
        # The wait is on the row, nowhere else: the broker holds nothing for it.
        client = redis.client()
        assert client.llen(env["CELERY_QUEUE"]) == 0
        assert not client.hlen("unacked") and not client.zcard("unacked_index")
    finally:
        first.stop()
    redis.client().flushall()  # and a broker that loses everything loses nothing of it

    second = Worker(tmp_path / "second.log", extra_env=env, beat=False)
    try:
        due = Delivery.objects.get().next_attempt_at
        assert due == delivery.next_attempt_at  # still waiting, the same time
        # The hour passes (the row is moved, not the clock): the new worker sends it then.
        Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        _, retry = receiver.wait_for(2, path="/later", timeout=20)
        wait_until(lambda: Delivery.objects.get(pk=delivery.pk).status == "succeeded", message="the retry succeeded")
    finally:
        second.stop()
        redis.stop()
    assert [a.status_code for a in Attempt.objects.order_by("number")] == [503, 200]
    assert retry.headers["webhook-id"] == Delivery.objects.get().event_id
