"""deploy/: the alert rules pass promtool and their own unit tests, the dashboard asks only for
metrics the service serves, and a real Prometheus server scraping the whole system (web,
worker and beat, `manage.py runall`) sees a counter that a real delivery moved.

Needs Debian's `prometheus` package (promtool and the server). `.ci/run` installs it when
missing and sets CI, under which its absence fails these tests; elsewhere they are skipped.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, free_port, wait_until

DEPLOY = Path(ROOT) / "deploy"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: apt-get install -y prometheus"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_alert_rules_pass_promtool_and_their_unit_tests():
    promtool = tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml")], capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr


SERVED = {
    "webhooks_events_published_total",
    "webhooks_events_oversize_total",
    "webhooks_attempts_total",
    "webhooks_deliveries_finished_total",
    "webhooks_retries_scheduled_total",
    "webhooks_attempt_duration_seconds_bucket",
    "webhooks_delivery_latency_seconds_bucket",
    "webhooks_deliveries_pending",
    "webhooks_deliveries_due",
    "webhooks_deliveries_held",
    "webhooks_oldest_due_age_seconds",
    "webhooks_oldest_pending_age_seconds",
    "webhooks_events_waiting_fanout",
    "webhooks_endpoints_disabled",
    "webhooks_broker_queue_messages",
    "webhooks_worker_heartbeat_age_seconds",
    "webhooks_beat_heartbeat_age_seconds",
    "webhooks_up",
}


def test_the_dashboard_and_the_alerts_ask_for_metrics_that_exist():
    """A renamed metric would leave a panel or an alert silently empty."""
    dashboard = json.loads((DEPLOY / "grafana" / "agent-webhooks.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += re.findall(r"expr: (.+)", (DEPLOY / "prometheus" / "alerts.yml").read_text())
    asked = {name for e in exprs for name in re.findall(r"\bwebhooks_\w+", e)}
    assert asked and asked <= SERVED, asked - SERVED
    assert len(exprs) > 10


def test_a_real_prometheus_sees_a_counter_a_real_delivery_moved(receiver, tmp_path):
    prometheus = tool("prometheus")
    receiver.reset()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "CELERY_", "WEBHOOK", "DJANGO_", "PROMETHEUS_"))
    }
    env.update(DJANGO_SETTINGS_MODULE="webhooks_project.settings", WEBHOOKS_VAR_DIR=str(tmp_path / "var"))
    web_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: webhooks\n    static_configs: [{{targets: ['127.0.0.1:{web_port}']}}]\n"
    )
    stack_log = open(tmp_path / "runall.log", "wb")
    prom_log = open(tmp_path / "prometheus.log", "wb")
    stack = subprocess.Popen(
        [sys.executable, "manage.py", "runall", "--port", str(web_port)],
        cwd=ROOT, env=env, stdout=stack_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    server = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=prom_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def query(expr: str) -> float | None:
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                result = json.load(r)["data"]["result"]
        except OSError:
            return None
        return sum(float(s["value"][1]) for s in result) if result else None

    try:
        wait_until(lambda: query("up{job='webhooks'}") == 1, timeout=60, message="Prometheus to scrape the web")
        script = (
            "from agents_hooks.models import Agent, Organization, Step\n"
            "from webhooks.models import Endpoint\n"
            "org = Organization.objects.create(name='demo')\n"
            "agent = Agent.objects.create(organization=org, name='demo')\n"
            f"Endpoint.objects.create(organization=org, url='{receiver.url('/scraped')}')\n"
            "step = Step.objects.create(agent=agent)\n"
            "step.status = 'success'\n"
            "step.save()\n"
        )
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", script],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        receiver.wait_for(1, path="/scraped", timeout=60)
        wait_until(
            lambda: query('webhooks_attempts_total{outcome="2xx"}') == 1,
            timeout=30,
            message="Prometheus to see the worker's successful attempt",
        )
        assert query('webhooks_deliveries_finished_total{status="succeeded"}') == 1
        assert query('webhooks_events_published_total{event_type="agent.step.completed"}') == 1
        assert query("webhooks_deliveries_due") == 0
    finally:
        for proc in (server, stack):
            os.killpg(proc.pid, signal.SIGINT)
        for proc in (server, stack):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        stack_log.close()
        prom_log.close()
