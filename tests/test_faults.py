"""Faults with real processes (issue #4): the worker's database connections dropped, Redis
stopped while agents keep saving, two workers racing over one backlog.

Each test runs its own workers on a private queue (and, for the Redis outage, a private
redis-server), with the suite's shared worker stopped, and publishes from an agent process of
its own on that queue. Waits are on conditions with deadlines, never fixed sleeps.
"""

import collections
import json
import re
import uuid

import pytest
from django.db import connection
from django.db.models import Count

from agents_hooks.models import Step
from deliveries.models import Attempt, Delivery, Event
from tests.receiver import Reply
from tests.support import (
    PrivateRedis,
    Worker,
    agent_finished,
    all_succeeded,
    child_database_url,
    complete_steps,
    start_agent,
    start_workers,
    wait_until,
    wait_until_settled,
    webhook_ids,
)

pytestmark = pytest.mark.slow

DELIVERED = re.compile(r"delivery \d+ to \S+ \(\S+\): 200 in")


def assert_one_successful_attempt_each(deliveries: int) -> None:
    assert Delivery.objects.count() == deliveries
    per_delivery = Delivery.objects.annotate(n=Count("attempts")).values_list("n", flat=True)
    assert collections.Counter(per_delivery) == {1: deliveries}
    assert set(Attempt.objects.values_list("status_code", flat=True)) == {200}


def terminate_connections(application_name: str) -> int:
    """Kill every server process serving `application_name` on the test database, as an
    administrator (or a failover) would; return how many there were."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = %s",
            [application_name],
        )
        return len(cursor.fetchall())


def test_worker_recovers_when_its_database_connections_are_dropped(receiver_only, agent, make_endpoint, tmp_path):
    receiver = receiver_only
    env = {
        "CELERY_QUEUE": f"pgdrop-{uuid.uuid4().hex[:8]}",
        "WEBHOOK_LEASE_MARGIN": "1",  # lease = connect 2 s + timeout 2 s + 1 s
        "STEP_COMPLETE_TIMEOUT": "2",
        "WEBHOOK_STRANDED_AFTER": "1",
    }
    # libpq names the worker's connections, so exactly they can be told apart and killed.
    app_name = f"faults-worker-{uuid.uuid4().hex[:8]}"
    make_endpoint("/pg")
    steps = [agent.steps.create() for _ in range(7)]
    worker = Worker(tmp_path / "worker.log", extra_env={**env, "PGAPPNAME": app_name})
    pid = worker.proc.pid
    try:
        complete_steps(steps[:1], env)
        receiver.wait_for(1, path="/pg")
        wait_until(all_succeeded(1), message="the first delivery to succeed")

        # Mid-batch: while the POSTs are in flight (each answered after a second), every
        # connection the worker holds is killed, as soon as it holds one.
        receiver.script("/pg", [Reply(200, delay=1.0)] * 3)
        publisher = start_agent(steps[1:4], env)
        try:
            receiver.wait_for(2, path="/pg")
            wait_until(lambda: terminate_connections(app_name), timeout=10, message="a worker connection to kill")
        finally:
            agent_finished(publisher)
        wait_until(all_succeeded(4), timeout=40, message="the interrupted batch to succeed")

        # Between tasks: whatever the worker keeps open is killed again; then more steps,
        # answered slowly again, so their attempts are written on a connection opened or
        # checked after the kill.
        terminate_connections(app_name)
        receiver.script("/pg", [Reply(200, delay=1.0)] * 3)
        complete_steps(steps[4:], env)
        wait_until(all_succeeded(7), timeout=40, message="the later deliveries to succeed")
        wait_until_settled()
        assert worker.proc.poll() is None and worker.proc.pid == pid  # the same worker, never restarted
    finally:
        worker.stop()

    step_of_event = {
        json.loads(body)["data"]["step_id"]: event_id for event_id, body in Event.objects.values_list("id", "body")
    }
    assert set(step_of_event) == {s.id for s in steps}  # every save published once
    received = webhook_ids(receiver, "/pg")
    assert set(received) == set(step_of_event.values())  # none lost
    for step in steps[:1] + steps[4:]:  # sent when nothing was interrupted: exactly once
        assert received[step_of_event[step.id]] == 1, step.id
    for step in steps[1:4]:  # interrupted: at least once, the same webhook-id if twice
        assert received[step_of_event[step.id]] in (1, 2), step.id
    assert_one_successful_attempt_each(7)


def test_redis_down_while_agents_save_every_save_succeeds_and_every_delivery_arrives_once_meanwhile(
    receiver_only, agent, make_endpoint, tmp_path
):
    receiver = receiver_only
    redis = PrivateRedis()
    redis.start()
    env = {
        "CELERY_BROKER_URL": redis.url,
        "CELERY_QUEUE": f"outage-{uuid.uuid4().hex[:8]}",
        "WEBHOOK_STRANDED_AFTER": "1",
    }
    worker = Worker(tmp_path / "worker.log", extra_env=env)
    try:
        make_endpoint("/outage")
        steps = [agent.steps.create() for _ in range(50)]
        redis.stop()
        assert not redis.up()

        # (Each failed hand-off to the dead broker costs the agent's background thread ~6 s
        # of connection retries: the agent does not wait for them before it exits.)
        save_seconds = complete_steps(steps, env, flush_seconds=0)
        assert len(save_seconds) == 50
        slowest = max(save_seconds)
        assert slowest < 0.5, f"a save waited {slowest:.3f}s on the dead broker (all: {sorted(save_seconds)[-5:]})"
        assert Step.objects.filter(status="success").count() == 50
        assert Event.objects.count() == 50  # every event on record

        # The broker is still down: the worker's due loop takes the stranded events up from
        # the database and delivers them all the same.
        receiver.wait_for(50, path="/outage", timeout=60)
        wait_until(all_succeeded(50), timeout=30, message="every delivery to succeed")
        assert not redis.up()
        assert worker.proc.poll() is None

        redis.start()  # and when it is back, nothing is sent again
        connected = re.compile(rf"Connected to redis://\S*127\.0\.0\.1:{redis.port}")
        wait_until(lambda: len(connected.findall(worker.log())) >= 2, 60, message="the worker to reconnect")
        wait_until_settled()
    finally:
        worker.stop()
        redis.stop()

    received = webhook_ids(receiver, "/outage")
    assert set(received) == set(Event.objects.values_list("id", flat=True))
    assert set(received.values()) == {1}, "a delivery arrived more than once"
    bodies = [json.loads(r.body) for r in receiver.received("/outage")]
    assert sorted(b["data"]["step_id"] for b in bodies) == sorted(s.id for s in steps)
    assert_one_successful_attempt_each(50)


def test_two_workers_never_send_a_succeeded_delivery_again(receiver_only, agent, make_endpoint, tmp_path):
    receiver = receiver_only
    env = {
        "CELERY_QUEUE": f"race-{uuid.uuid4().hex[:8]}",
        # Three due loops look five times a second and take any event not yet fanned out for
        # stranded: they race the messages naming the same events, and each other, over
        # every event and every due delivery. Duplicate work, never duplicate POSTs.
        "WEBHOOK_DUE_POLL_INTERVAL": "0.2",
        "WEBHOOK_STRANDED_AFTER": "0",
    }
    paths = ["/race-a", "/race-b", "/race-c"]
    for path in paths:
        make_endpoint(path)
    # One receiver is slow at first (half a second per request), then fast again: batches
    # wait for it, or leave it behind, while the due loops and the other worker look on.
    receiver.script("/race-c", [Reply(200, delay=0.5)] * 10)
    steps = [agent.steps.create() for _ in range(100)]
    workers = start_workers(
        (tmp_path / "a.log", {"extra_env": env}),  # with the one beat
        (tmp_path / "b.log", {"extra_env": env, "pool": "prefork", "concurrency": 2, "beat": False}),
    )
    try:
        # Small messages (5 events each), so both workers get some, and each takes the
        # oldest waiting events along: the two race over one backlog.
        complete_steps(steps, {**env, "WEBHOOK_BATCH_SIZE": "5"})
        wait_until(all_succeeded(300), timeout=60, message="all 300 deliveries to succeed")
        wait_until_settled()
        for w in workers:
            assert w.proc.poll() is None
    finally:
        for w in workers:
            w.stop()

    events = set(Event.objects.values_list("id", flat=True))
    assert len(events) == 100
    for path in paths:
        received = webhook_ids(receiver, path)
        assert set(received) == events, path
        duplicates = {k: n for k, n in received.items() if n > 1}
        assert not duplicates, f"{path} received {len(duplicates)} webhooks more than once"
    assert_one_successful_attempt_each(300)
    delivered_by = [len(DELIVERED.findall(w.log())) for w in workers]
    assert sum(delivered_by) == 300
    assert all(delivered_by), f"one worker delivered everything ({delivered_by}): no race took place"


def test_a_connection_lost_during_the_posts_costs_the_log_nothing(live, org, make_endpoint, settings):
    """The worker's code, in this process: its connection is killed while a POST is out.
    The batch's log is written on a new connection, so the POST is logged once, not sent twice."""
    import threading

    import psycopg

    from deliveries import pipeline
    from tests.support import fanned_out_here

    settings.WEBHOOK_STRAGGLER_AFTER = 10  # recorded by the batch itself, not the slow lane
    make_endpoint("/held")
    live.script("/held", [Reply(200, delay=1.0)])
    (delivery,) = fanned_out_here(org)
    backend = connection.connection.info.backend_pid

    def kill_once_the_post_arrives():
        live.wait_for(1, path="/held")
        with psycopg.connect(child_database_url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend])

    killer = threading.Thread(target=kill_once_the_post_arrives)
    killer.start()
    (outcome,) = pipeline.send_claimed([delivery])
    killer.join()
    assert outcome.status == "succeeded"
    assert connection.connection.info.backend_pid != backend  # a new connection wrote the log
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and delivery.lease is None
    assert Attempt.objects.get(delivery=delivery).status_code == 200
    assert len(live.received("/held")) == 1


def allow_connections(database: str, allowed: bool) -> None:
    """Let new connections into `database`, or refuse them all (those open stay open), as a
    database restarting or failing over does; from the server's maintenance database."""
    import psycopg

    admin_url = child_database_url().rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')


def test_a_task_that_cannot_reach_the_database_is_retried_by_celery(receiver_only, agent, make_endpoint, tmp_path):
    """The database refuses connections when the worker takes up a published event: Celery's
    autoretry runs the task again after a short, growing wait, and it delivers once the
    database answers. (Stranded events are left alone here, so only the retry can deliver.)"""
    receiver = receiver_only
    app_name = f"dbdown-worker-{uuid.uuid4().hex[:8]}"
    env = {"WEBHOOK_STRANDED_AFTER": "3600", "PGAPPNAME": app_name}
    make_endpoint("/dbdown")
    step = agent.steps.create()
    worker = Worker(tmp_path / "worker.log", extra_env=env, beat=False)  # on the suite's queue: we publish here
    database = connection.settings_dict["NAME"]
    try:
        try:
            allow_connections(database, False)
            terminate_connections(app_name)
            step.status = "success"
            step.save()  # this process keeps its connection: the event is on record
            worker.wait_log(r"Task deliveries\.tasks\.deliver_events\[[^\]]+\] retry: Retry in \d+s: OperationalError")
            assert receiver.received("/dbdown") == []
        finally:
            allow_connections(database, True)
        (request,) = receiver.wait_for(1, path="/dbdown", timeout=90)
        wait_until(all_succeeded(1), message="the delivery to succeed")
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    assert json.loads(request.body)["data"]["step_id"] == step.id
