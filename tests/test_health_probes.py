"""Health probes: /health/live answers, /health/ready says whether the service can deliver and
names what stops it (no worker, no beat, the broker down, an overdue backlog), and
`manage.py health` tells an exec probe the same by its exit status.

The readiness story runs a real web server, worker, beat and a private redis-server as the
broker, all as processes of their own; the shared worker is stopped (its heartbeat would
answer for the worker these tests start).
"""

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from deliveries.models import Heartbeat
from tests.support import (
    ROOT,
    PrivateRedis,
    Worker,
    child_database_url,
    free_port,
    listening,
    logged_delivery,
    wait_until,
)

pytestmark = pytest.mark.slow


def child_env(extra: dict | None = None) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": child_database_url(),
        **(extra or {}),
    }


@contextlib.contextmanager
def running(name: str, cmd: list[str], env: dict, log_dir):
    """A child process in its own process group, stopped (SIGTERM, then SIGKILL) on the way out."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = lambda: log_path.read_text(errors="replace")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def still_running(proc) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"{proc.args[1:4]} exited ({proc.returncode}):\n{proc.log()[-3000:]}")
    return True


def get(url: str) -> tuple[int, dict, str]:
    """GET `url`: status, JSON body, raw body."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read().decode()
    return status, json.loads(raw), raw


def failing_only(url: str, names: list[str]) -> dict | None:
    """The readiness answer if exactly `names` fail, else None."""
    body = get(url)[1]
    return body if body["failing"] == names else None


def test_live_answers_and_health_stays_as_it_was(client):
    assert client.get("/health/").json() == {"status": "ok"}
    for path in ("/health/live", "/health/live/"):
        response = client.get(path)
        assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_waits_for_a_worker_and_beat_and_names_the_broker_while_it_is_down(receiver_only, tmp_path):
    redis = PrivateRedis()
    redis.start()
    env = {"CELERY_BROKER_URL": redis.url, "CELERY_QUEUE": f"health-{uuid.uuid4().hex[:8]}"}
    port = free_port()
    ready_url = f"http://127.0.0.1:{port}/health/ready"
    with contextlib.ExitStack() as stack:
        stack.callback(redis.stop)
        web_cmd = [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
        web = stack.enter_context(running("web", web_cmd, child_env(env), tmp_path))
        wait_until(lambda: still_running(web) and listening(port), 60, message="the web server to listen")

        # Nothing runs but the web: the database and the broker answer, nobody would deliver.
        status, body, _ = get(ready_url)
        assert status == 503 and body["status"] == "fail"
        assert body["failing"] == ["worker", "beat"]
        assert body["checks"]["worker"] == {
            "ok": False, "figure": None, "unit": "s", "threshold": 60.0, "detail": "no worker heartbeat recorded",
        }  # fmt: skip
        assert body["checks"]["database"]["ok"] and body["checks"]["database"]["unit"] == "ms"
        assert body["checks"]["broker"] == {"ok": True, "figure": 0, "unit": "messages"}
        assert body["checks"]["backlog"] == {"ok": True, "figure": 0.0, "unit": "s", "threshold": 300.0}

        # A worker starts: its due loop's heartbeat makes the worker check pass.
        worker = Worker(tmp_path / "worker.log", extra_env=env, beat=False)
        stack.callback(worker.stop)
        body = wait_until(lambda: failing_only(ready_url, ["beat"]), 20, message="only beat failing")
        assert 0 <= body["checks"]["worker"]["figure"] < 60
        assert Heartbeat.objects.filter(name__startswith="worker:").count() == 1  # the threads pool: one process

        # Beat starts with the project's scheduler (settings.CELERY_BEAT_SCHEDULER): ready.
        beat_cmd = [sys.executable, "-m", "celery", "-A", "webhooks_project", "beat", "-s", str(tmp_path / "schedule")]
        beat = stack.enter_context(running("beat", beat_cmd, child_env(env), tmp_path))
        wait_until(
            lambda: still_running(beat) and Heartbeat.objects.filter(name="beat").exists(), 30, message="beat heartbeat"
        )
        assert "webhooks_project.beat.HeartbeatScheduler" in beat.log()
        status, body, _ = get(ready_url + "/")
        assert status == 200 and body["status"] == "ok" and body["failing"] == []
        assert all(check["ok"] for check in body["checks"].values())

        # The broker stops: 503 naming it, at once, and saying nothing of where it is.
        redis.stop()
        started = time.monotonic()
        status, body, raw = get(ready_url)
        assert time.monotonic() - started < 2 + 1  # WEBHOOK_READY_BROKER_TIMEOUT, and then some
        assert status == 503 and body["failing"] == ["broker"]
        assert body["checks"]["broker"] == {
            "ok": False, "figure": None, "unit": "messages", "detail": "broker unreachable (OperationalError)",
        }  # fmt: skip
        assert str(redis.port) not in raw and "redis" not in raw

        # It comes back: so does readiness (the worker rode it out).
        redis.start()
        wait_until(lambda: get(ready_url)[0] == 200, 20, message="ready again once the broker is back")
        assert worker.proc.poll() is None


def test_ready_fails_on_a_delivery_long_overdue(receiver_only, make_endpoint, client):
    # A worker and beat alive (their rows as they write them), and no worker to deliver.
    Heartbeat.record("worker:elsewhere:1")
    Heartbeat.record("beat")
    endpoint = make_endpoint("/late")
    logged_delivery(endpoint, status="pending", codes=(), age=datetime.timedelta(seconds=30))
    response = client.get("/health/ready")
    assert response.status_code == 200, response.json()  # due 30 s ago: within the 300 s allowed

    logged_delivery(endpoint, status="pending", codes=(), age=datetime.timedelta(hours=1))
    for path in ("/health/ready", "/health/ready/"):
        response = client.get(path)
        body = response.json()
        assert response.status_code == 503 and body["failing"] == ["backlog"]
        backlog = body["checks"]["backlog"]
        assert not backlog["ok"] and 3600 <= backlog["figure"] < 3660 and backlog["threshold"] == 300.0
        assert backlog["detail"].startswith("a delivery due 36")


def test_the_health_command_exits_1_naming_what_fails_and_0_when_all_pass(transactional_db, shared_worker):
    shared_worker.stop()
    # Messages earlier tests published with no worker to take them would be counted as backlog.
    from webhooks_project.celery import app

    app.control.purge()

    def health(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "health", *args], cwd=ROOT, env=child_env(), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip

    result = health()
    assert result.returncode == 1, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert list(lines) == ["database", "broker", "worker", "beat", "backlog"]
    assert lines["worker"].split()[1] == "FAIL" and "no worker heartbeat recorded" in lines["worker"]
    assert lines["beat"].split()[1] == "FAIL"
    assert lines["database"].split()[1] == "ok" and lines["database"].split()[3] == "ms"
    assert lines["broker"].split()[1:4] == ["ok", "0", "messages"]

    Heartbeat.record("worker:elsewhere:1")
    Heartbeat.record("beat")
    result = health()
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["ok"] * 5

    result = health("--json")
    assert result.returncode == 0
    body = json.loads(result.stdout)
    assert body["status"] == "ok" and list(body["checks"]) == ["database", "broker", "worker", "beat", "backlog"]
