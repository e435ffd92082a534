"""The README's first command: web, worker and beat on the embedded defaults (SQLite and
the filesystem broker, no servers), delivering a real webhook, stopped cleanly by Ctrl-C."""

import os
import signal
import socket
import subprocess
import sys
import urllib.request

from tests.support import ROOT, wait_until

SCRIPT = """
from agents_hooks.models import Agent, Organization, Step
from webhooks.models import Endpoint
org = Organization.objects.create(name="demo")
agent = Agent.objects.create(organization=org, name="demo")
Endpoint.objects.create(organization=org, url="{url}")
step = Step.objects.create(agent=agent)
step.status = "success"
step.save()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_runall_on_embedded_defaults_delivers_and_stops_on_ctrl_c(receiver, tmp_path):
    receiver.reset()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "CELERY_", "WEBHOOK", "DJANGO_", "PROMETHEUS_"))
    }
    env.update(DJANGO_SETTINGS_MODULE="webhooks_project.settings", WEBHOOKS_VAR_DIR=str(tmp_path))
    port = free_port()
    log = open(tmp_path / "runall.log", "wb")
    stack = subprocess.Popen(
        [sys.executable, "manage.py", "runall", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: healthy(port), timeout=60, message="web server to answer /health/")
        output = (tmp_path / "runall.log").read_text()
        assert f"http://127.0.0.1:{port}/admin/" in output
        # Development opens loopback to endpoints (DJANGO_DEBUG's default): said at start.
        assert "WARNING: WEBHOOK_ALLOWED_CIDRS=127.0.0.0/8,::1/128: endpoints may target" in output
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", SCRIPT.format(url=receiver.url("/embedded"))],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        (request,) = receiver.wait_for(1, path="/embedded", timeout=60)
        assert request.headers["X-Letta-Event-Type"] == "agent.step.completed"
        # The worker's counters reach the web's /metrics (one multiprocess directory).
        wait_until(
            lambda: 'webhooks_attempts_total{outcome="2xx"} 1.0' in metrics(port), message="the attempt in /metrics"
        )
        assert (tmp_path / "db.sqlite3").exists()
    finally:
        os.killpg(stack.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            stack.wait(30)
        finally:
            log.close()
    assert stack.returncode == 0
    assert "stopped" in (tmp_path / "runall.log").read_text()
