"""The behaviour of the seeds, kept: STEP_COMPLETE_WEBHOOK (seed 000) and run/job
callback_url (seed 003), through the same retried, logged pipeline."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from django.db import connection

from agents_hooks.models import Job, Run, Step
from deliveries.models import Attempt, Delivery, Event
from tests.support import ROOT, wait_until


def finish(obj, status):
    obj.status = status
    obj.save()
    return obj


@pytest.fixture(scope="module")
def seed_receiver(tmp_path_factory):
    """Seed 000's FastAPI example receiver, unchanged, under uvicorn."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("seed000") / "uvicorn.log"
    log = open(log_path, "wb")
    env = {**os.environ, "STEP_COMPLETE_KEY": "test-key-123", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.seed000_receiver:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_until(lambda: "Uvicorn running" in log_path.read_text(), timeout=30, message="uvicorn to start")
    yield f"http://127.0.0.1:{port}/api/webhooks/step-complete", log_path
    proc.terminate()
    proc.wait(10)
    log.close()


def test_step_complete_webhook_reaches_the_seed_receiver(live, agent, settings, seed_receiver):
    url, log_path = seed_receiver
    settings.STEP_COMPLETE_WEBHOOK = url  # the worker reads STEP_COMPLETE_KEY=test-key-123
    steps = [finish(Step.objects.create(agent=agent), s) for s in ("success", "failed", "cancelled")]
    finish(Step.objects.create(agent=agent), "pending")  # not terminal: nothing sent

    wait_until(
        lambda: Delivery.objects.filter(kind="step_complete", status="succeeded").count() == 3,
        message="three step_complete deliveries to succeed",
    )
    printed = log_path.read_text()
    for step in steps:
        assert f"Step completed: {step.id}" in printed
    for delivery in Delivery.objects.filter(kind="step_complete"):
        assert json.loads(delivery.body) in [{"step_id": s.id} for s in steps]
        (attempt,) = Attempt.objects.filter(delivery=delivery)
        assert attempt.status_code == 200
        # The receiver answers 401 without `Bearer test-key-123`; the key is never logged in clear.
        assert attempt.request_headers["Authorization"] == "[redacted]"


def test_no_step_complete_webhook_configured_sends_nothing(db, agent, settings):
    settings.STEP_COMPLETE_WEBHOOK = ""
    finish(Step.objects.create(agent=agent), "success")
    (event,) = Event.objects.all()
    assert event.targets == []


def test_run_callback_posts_once_and_records_the_answer(live, agent):
    run = Run.objects.create(agent=agent, callback_url=live.url("/run-callback"), metadata={"pipeline": "p-1"})
    finish(run, "running")
    finish(run, "completed")
    finish(run, "completed")
    (request,) = live.wait_for(1, path="/run-callback")
    body = json.loads(request.body)
    run.refresh_from_db()
    assert body == {
        "run_id": run.id,
        "status": "completed",
        "completed_at": run.completed_at.isoformat().replace("+00:00", "Z"),
        "metadata": {"pipeline": "p-1"},
    }
    assert request.headers["Content-Type"] == "application/json"
    wait_until(lambda: Run.objects.get(pk=run.pk).callback_status_code == 200, message="callback recorded")
    run.refresh_from_db()
    assert run.callback_sent_at is not None
    assert run.callback_error is None


def test_run_callback_server_errors_are_retried(live, agent):
    live.script("/run-callback", [500, 200])
    run = finish(Run.objects.create(agent=agent, callback_url=live.url("/run-callback")), "failed")
    live.wait_for(2, path="/run-callback")
    wait_until(lambda: Run.objects.get(pk=run.pk).callback_status_code == 200, message="second answer recorded")
    assert json.loads(live.received()[0].body)["status"] == "failed"


def test_run_callback_network_error_is_recorded_with_its_reason(live, agent):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/cb"
    run = finish(Run.objects.create(agent=agent, callback_url=dead_url), "cancelled")
    wait_until(lambda: Run.objects.get(pk=run.pk).callback_error, message="callback error recorded")
    run.refresh_from_db()
    assert "refused" in run.callback_error.lower()
    assert run.callback_status_code is None
    assert run.callback_sent_at is not None


def test_job_callback_on_completed_and_failed_but_not_cancelled(live, org, agent):
    done = finish(Job.objects.create(organization=org, callback_url=live.url("/job-callback")), "completed")
    failed = finish(Job.objects.create(organization=org, callback_url=live.url("/job-callback")), "failed")
    cancelled = finish(Job.objects.create(organization=org, callback_url=live.url("/job-callback")), "cancelled")
    bodies = [json.loads(r.body) for r in live.wait_for(2, path="/job-callback")]
    assert sorted((b["job_id"], b["status"]) for b in bodies) == sorted([(done.id, "completed"), (failed.id, "failed")])
    wait_until(lambda: Job.objects.get(pk=failed.pk).callback_status_code == 200, message="job callback recorded")
    assert Event.objects.filter(type="agent.job.completed").count() == 3  # the event still fires
    (cancelled_event,) = Event.objects.filter(dedupe_key__startswith=cancelled.id)
    assert cancelled_event.targets == []  # but no callback


def test_two_concurrent_terminal_updates_fire_one_callback(live, agent):
    run = finish(Run.objects.create(agent=agent, callback_url=live.url("/race")), "running")
    barrier = threading.Barrier(2)
    errors = []

    def complete(status):
        try:
            mine = Run.objects.get(pk=run.pk)  # both load it as running
            barrier.wait(5)
            finish(mine, status)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=complete, args=(s,)) for s in ("completed", "failed")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    live.wait_for(1, path="/race")
    assert Event.objects.filter(type="agent.run.completed").count() == 1
    assert Delivery.objects.filter(kind="run_callback").count() == 1
