"""A worker killed with SIGKILL in the middle of a delivery: once a worker runs again, the
delivery completes. (At least once: the receiver saw the interrupted POST too, whose answer
never reached us; the webhook-id lets it recognise the repeat.)

Runs its own workers on a private queue, with a short lease, and publishes from a child process
on that queue, with the suite's shared worker stopped.
"""

import json
import os
import subprocess
import sys
import uuid

from deliveries.models import Attempt, Delivery
from tests.receiver import Reply
from tests.support import ROOT, Worker, child_database_url, wait_until

AGENT_SCRIPT = """
import django
django.setup()
from agents_hooks.models import Step
step = Step.objects.get(pk="{step_id}")
step.status = "success"
step.save()
from deliveries import enqueue
enqueue.flush(10)
"""


def test_worker_killed_mid_delivery_delivers_after_restart(receiver_only, agent, make_endpoint, tmp_path):
    live = receiver_only
    env = {
        "CELERY_QUEUE": f"crash-{uuid.uuid4().hex[:8]}",
        "WEBHOOK_LEASE_MARGIN": "1",  # lease = connect 2 s + timeout 2 s + 1 s
    }
    make_endpoint("/crash")
    live.script("/crash", [Reply(200, delay=30)])  # the first POST hangs until the worker is gone
    step = agent.steps.create()
    first = Worker(tmp_path / "first.log", extra_env=env)
    try:
        child_env = {
            **os.environ,
            **env,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": child_database_url(),
        }
        subprocess.run(
            [sys.executable, "-c", AGENT_SCRIPT.format(step_id=step.id)],
            cwd=ROOT, env=child_env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        live.wait_for(1, path="/crash")  # the POST is in flight
        first.stop(sig_kill=True)
    finally:
        first.stop()
    delivery = Delivery.objects.get()
    assert delivery.status == "pending" and delivery.attempt_count == 0  # nothing was recorded

    second = Worker(tmp_path / "second.log", extra_env=env)
    try:
        live.wait_for(2, path="/crash", timeout=60)
        wait_until(lambda: Delivery.objects.filter(status="succeeded").exists(), timeout=30, message="succeeded")
    finally:
        second.stop()
    first_body, second_body = (json.loads(r.body) for r in live.received("/crash"))
    assert first_body == second_body  # the same event, same webhook-id
    assert Attempt.objects.get().status_code == 200
