"""RabbitMQ as a first-class broker: the pipeline tests that matter, on RabbitMQ.

A delivery and its retry, and a worker killed mid-delivery, run on the machine's RabbitMQ
(TEST_AMQP_URL, default 127.0.0.1:5672; the suite stops with an error if it is not there),
each on a queue of its own. The broker restart runs on a private node the test stops and
starts again with its data, as a server restart does. The suite's shared worker is stopped;
events are published by an agent process on the same broker.
"""

import collections
import re
import uuid

import pytest

from deliveries.models import Attempt, Delivery
from tests.receiver import Reply
from tests.support import (
    AMQP_URL,
    BUSY_WORKER_ENV,
    PrivateRabbit,
    Worker,
    agent_finished,
    all_succeeded,
    busy_endpoints,
    complete_steps,
    start_agent,
    wait_until,
    wait_until_busy,
    wait_until_settled,
    webhook_ids,
)

pytestmark = pytest.mark.slow


def on_rabbitmq(url: str = AMQP_URL, **settings: str) -> dict:
    return {"CELERY_BROKER_URL": url, "CELERY_QUEUE": f"rabbit-{uuid.uuid4().hex[:8]}", **settings}


def connections_made(worker: Worker) -> int:
    return len(re.findall(r"Connected to amqp://", worker.log()))


def test_a_delivery_and_its_retry_over_rabbitmq(receiver_only, agent, make_endpoint, tmp_path):
    receiver = receiver_only
    env = on_rabbitmq()
    make_endpoint("/rabbit")
    receiver.fail_first("/rabbit", 503)  # each event's first attempt fails; its retry (1 s) succeeds
    steps = [agent.steps.create() for _ in range(5)]
    worker = Worker(tmp_path / "worker.log", extra_env=env, pool="prefork", concurrency=2, beat=False)
    try:
        assert connections_made(worker) == 1
        complete_steps(steps, env)
        receiver.wait_for(10, path="/rabbit")
        wait_until(all_succeeded(5), message="every delivery to succeed")
        wait_until_settled()
    finally:
        worker.stop()
    assert set(webhook_ids(receiver, "/rabbit").values()) == {2}  # each event: one 503, one 200
    per_delivery = collections.defaultdict(list)
    for delivery_id, code in Attempt.objects.order_by("number").values_list("delivery_id", "status_code"):
        per_delivery[delivery_id].append(code)
    assert list(per_delivery.values()) == [[503, 200]] * 5


def test_a_worker_killed_mid_delivery_over_rabbitmq(receiver_only, agent, make_endpoint, tmp_path):
    """RabbitMQ hands the killed worker's unacknowledged message to the next one at once; the
    delivery itself goes out again when its lease ends (at least once, one webhook-id)."""
    receiver = receiver_only
    env = on_rabbitmq(WEBHOOK_LEASE_MARGIN="1")  # lease = connect 2 s + timeout 2 s + 1 s
    make_endpoint("/crash")
    receiver.script("/crash", [Reply(200, delay=30)])  # the first POST hangs until the worker is gone
    step = agent.steps.create()
    first = Worker(tmp_path / "first.log", extra_env=env, pool="prefork", concurrency=2, beat=False)
    try:
        complete_steps([step], env)
        receiver.wait_for(1, path="/crash")
        first.stop(sig_kill=True)
    finally:
        first.stop()
    assert Delivery.objects.get().attempt_count == 0  # nothing was recorded
    second = Worker(tmp_path / "second.log", extra_env=env, pool="prefork", concurrency=2, beat=False)
    try:
        receiver.wait_for(2, path="/crash", timeout=60)
        wait_until(all_succeeded(1), timeout=30, message="the delivery to succeed")
    finally:
        second.stop()
    assert set(webhook_ids(receiver, "/crash").values()) == {2}
    assert Attempt.objects.get().status_code == 200


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_busy_worker_rides_out_a_rabbitmq_restart(receiver_only, agent, make_endpoint, tmp_path, pool):
    receiver = receiver_only
    rabbit = PrivateRabbit(tmp_path / "rabbit")
    rabbit.start()
    env = on_rabbitmq(rabbit.url, **BUSY_WORKER_ENV)
    busy_endpoints(receiver, make_endpoint)
    steps = [agent.steps.create() for _ in range(40)]
    worker = Worker(tmp_path / "worker.log", extra_env=env, pool=pool, concurrency=2 if pool == "prefork" else 8)
    pid = worker.proc.pid
    try:
        publisher = start_agent(steps[:30], env)
        wait_until_busy(receiver)
        agent_finished(publisher)
        rabbit.stop()
        assert not rabbit.up()
        assert worker.proc.poll() is None
        rabbit.start()  # the same node and data: its durable queue and messages are back
        wait_until(lambda: connections_made(worker) >= 2, 60, message="the worker to reconnect")
        complete_steps(steps[30:], env)  # published through the broker again, and consumed
        receiver.wait_for(40, path="/slow", timeout=60)
        wait_until(all_succeeded(80), timeout=60, message="every delivery to succeed")
        wait_until_settled()
        assert worker.proc.poll() is None and worker.proc.pid == pid  # never restarted
    finally:
        worker.stop()
        rabbit.stop()

    # Messages redelivered after the restart find their deliveries sent or leased: nothing twice.
    slow = webhook_ids(receiver, "/slow")
    assert len(slow) == 40 and set(slow.values()) == {1}, slow.most_common(3)
    assert Attempt.objects.filter(status_code=200).count() == 80  # one success each
