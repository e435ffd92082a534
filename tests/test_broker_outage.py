"""The broker is down while an agent saves a step: the save succeeds at full speed, and the
webhook arrives once the broker is back (the sweeper re-enqueues the committed delivery).

Runs a private redis-server (same binary as the suite's Redis) so it can be stopped without
disturbing anything else, with its own worker and beat.
"""

import json
import os
import socket
import subprocess
import sys
import uuid

from deliveries.models import Delivery, Event
from tests.support import ROOT, PrivateRedis, Worker, child_database_url, wait_until

AGENT_SCRIPT = """
import json, time
import django
django.setup()
from agents_hooks.models import Step
step = Step.objects.get(pk="{step_id}")
step.status = "success"
started = time.perf_counter()
step.save()
print(json.dumps({{"save_seconds": time.perf_counter() - started}}))
"""


def test_broker_down_during_save_then_delivered_by_the_sweeper(live, agent, make_endpoint, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    redis = PrivateRedis(port)
    redis.start()
    broker_env = {"CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0", "CELERY_QUEUE": f"outage-{uuid.uuid4().hex[:8]}"}
    worker = Worker(tmp_path / "worker.log", extra_env=broker_env)
    try:
        make_endpoint("/outage")
        step = agent.steps.create()
        redis.stop()
        assert not redis.up()

        # The agent process saves its step while the broker is unreachable.
        env = {
            **os.environ,
            **broker_env,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": child_database_url(),
        }
        agent_run = subprocess.run(
            [sys.executable, "-c", AGENT_SCRIPT.format(step_id=step.id)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert agent_run.returncode == 0, agent_run.stderr
        save_seconds = json.loads(agent_run.stdout.strip().splitlines()[-1])["save_seconds"]
        assert save_seconds < 0.5, f"the save waited {save_seconds:.3f}s on the dead broker"
        step.refresh_from_db()
        assert step.status == "success"
        event = Event.objects.get()  # on record, waiting for the broker
        assert event.fanned_out_at is None
        assert live.received("/outage") == []

        redis.start()
        (request,) = live.wait_for(1, path="/outage", timeout=90)
        assert json.loads(request.body)["data"]["step_id"] == step.id
        wait_until(lambda: Delivery.objects.filter(status="succeeded").exists(), message="delivery succeeded")
        worker.wait_log(r"sweep: re-enqueued 1 stranded events and overdue deliveries")
        worker.wait_log(rf"delivery {Delivery.objects.get().pk} to .*/outage: 200")
    finally:
        worker.stop()
        redis.stop()
