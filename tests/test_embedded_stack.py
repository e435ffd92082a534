"""The README's first command: web, worker and beat on the embedded defaults (SQLite and
the filesystem broker, no servers), delivering a real webhook, stopped cleanly by Ctrl-C."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

from tests.support import ROOT, free_port, wait_until

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


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def embedded_env(var_dir) -> dict:
    """The environment of `dev.py up` on a fresh machine: none of the suite's settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "CELERY_", "WEBHOOK", "DJANGO_", "PROMETHEUS_"))
    }
    env.update(DJANGO_SETTINGS_MODULE="webhooks_project.settings", WEBHOOKS_VAR_DIR=str(var_dir))
    return env


def test_runall_on_a_taken_port_says_so_and_exits_non_zero(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "runall", "--port", str(port)],
            cwd=ROOT, env=embedded_env(tmp_path), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert f"python3 dev.py up --port {port + 1}" in result.stderr
    assert "running" not in result.stdout  # nothing claimed to have started
    assert "Traceback" not in result.stderr


def test_runall_on_embedded_defaults_delivers_and_stops_on_ctrl_c(receiver, tmp_path):
    receiver.reset()
    env = embedded_env(tmp_path)
    port = free_port()
    log = open(tmp_path / "runall.log", "wb")
    stack = subprocess.Popen(
        [sys.executable, "manage.py", "runall", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: healthy(port), timeout=60, message="web server to answer /health/")
        # "running" is said once the web server answers, not before
        wait_until(lambda: "Webhook service running" in (tmp_path / "runall.log").read_text(), message="the banner")
        output = (tmp_path / "runall.log").read_text()
        assert f"http://127.0.0.1:{port}/admin/" in output
        # The login hint runs as typed: this interpreter (the venv's), not a bare `python`.
        python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
        assert f"create a login: {python} manage.py createsuperuser" in output
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


# Between the two blocks a person reads the answers: by then the step's delivery is done.
SETTLED = 'until api $API/deliveries/$DELIVERY/ | grep -q \'"status":"succeeded"\'; do sleep 0.2; done\n'


def readme_walkthrough() -> str:
    """The README's REST walkthrough: its two shell blocks, as a user would paste them."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## REST API walkthrough") :]
    blocks = []
    for _ in range(2):
        start = section.index("```sh\n") + len("```sh\n")
        end = section.index("```\n", start)
        blocks.append(section[start:end])
        section = section[end + 4 :]
    return blocks[0] + SETTLED + blocks[1]


def test_the_readme_walkthrough_runs_as_written(receiver, tmp_path):
    """Every command of the walkthrough, pasted into bash against `runall`: the only changes are
    the ports (8000, 9000) and the key (printed by its step 1, pasted by hand)."""
    receiver.reset()
    env = embedded_env(tmp_path)
    port = free_port()
    script = readme_walkthrough()
    assert "export KEY=ahk_…" in script and "http://127.0.0.1:9000/hook" in script
    script = (
        script.replace(".venv/bin/python", sys.executable)
        .replace("export KEY=ahk_…", f"export KEY=$(tail -1 {tmp_path}/key.txt)")
        .replace("--create-organization", f"--create-organization > {tmp_path}/key.txt")
        .replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        .replace("http://127.0.0.1:9000/hook", receiver.url("/hook"))
    )
    stack = subprocess.Popen(
        [sys.executable, "manage.py", "runall", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: healthy(port), timeout=60, message="web server to answer /health/")
        (tmp_path / "walkthrough.sh").write_text("set -euo pipefail\ncd " + str(ROOT) + "\n" + script)
        result = subprocess.run(
            ["bash", str(tmp_path / "walkthrough.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        stack.wait(30)
    assert result.returncode == 0, result.stdout + result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert "secret" in json.loads(result.stderr.splitlines()[-1])  # the endpoint, shown once by tee
    step, delivery, stats, test, rotated, retried, forced, pending, recovered, patched, types, filtered = answers[:12]
    tried, replay, replays, ordered, subscription, subscriptions = answers[12:]
    assert step["status"] == "success"
    assert delivery["status"] in ("pending", "succeeded")  # shown at once: its attempt may be under way
    assert stats["window"] == "24h"
    assert test["attempt"]["status_code"] == 200
    assert rotated["secret"].startswith("whsec_")
    assert "detail" in retried  # it succeeded already: the answer says to force
    assert forced["id"] == delivery["id"]
    assert pending in ({"retried": 0}, {"retried": 1})  # 1 while the forced one still waits its turn
    assert "recovered" in recovered
    assert patched["retry_schedule"] == [10, 60, 3600]
    assert any(t["name"] == "agent.step.completed" for t in types)
    assert filtered["filter"] == {"path": "data.status", "in": ["failed", "cancelled"]}
    assert tried["matches"] is False and "data.status is 'success'" in tried["reason"]
    assert replay["state"] in ("running", "done") and replays["results"][0]["id"] == replay["id"]
    assert ordered["ordering"] == "run"
    assert subscription["state"] == "active" and "secret" in subscription
    assert [s["id"] for s in subscriptions["results"]] == [subscription["id"]]
    assert {r.headers["X-Letta-Event-Type"] for r in receiver.requests if r.path == "/hook"} >= {
        "agent.step.completed",
        "webhook.test",
    }
