"""The README's "Production" section, run as written: with DJANGO_DEBUG=false and the settings
of deploy/agent-webhooks.env.example, on a PostgreSQL database of its own and a private Redis
queue, `migrate`, `collectstatic`, `check --deploy` without a warning, gunicorn serving the
admin with its stylesheet, a worker and beat starting and stopping cleanly. And the systemd
units and Procfile in deploy/ run those same commands."""

import configparser
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from cryptography.fernet import Fernet
from psycopg import sql

from tests.support import ROOT, free_port, wait_until

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
# The Production section's commands, as the test runs them (the venv's binaries); the systemd
# units and the Procfile must run the same ones. The port is the test's own.
MIGRATE = ["python", "manage.py", "migrate", "--noinput"]
COLLECTSTATIC = ["python", "manage.py", "collectstatic", "--noinput"]
CHECK_DEPLOY = ["python", "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
WEB = ["gunicorn", "webhooks_project.wsgi", "--workers", "2", "--threads", "8", "--bind", "127.0.0.1:{port}"]
WORKER = ["celery", "-A", "webhooks_project", "worker", "--pool", "prefork", "--concurrency", "2", "--loglevel", "INFO"]
BEAT = ["celery", "-A", "webhooks_project", "beat", "--loglevel", "INFO"]
HOST = "hooks.example.com"  # the env example's DJANGO_ALLOWED_HOSTS: the proxy passes it on


def documented_env() -> dict[str, str]:
    """The variables of deploy/agent-webhooks.env.example (KEY=VALUE lines)."""
    values = {}
    for line in (DEPLOY / "agent-webhooks.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def argv(command: list[str], **fields) -> list[str]:
    """`command` with the venv's interpreter or binary, as `.venv/bin/...` in the README."""
    name, *args = command
    executable = sys.executable if name == "python" else str(BIN / name)
    if name in ("gunicorn", "celery"):  # the venv's module, whatever its script's shebang says
        executable, args = sys.executable, ["-m", name, *args]
    return [executable, *(a.format(**fields) for a in args)]


@pytest.fixture
def production_db():
    """A PostgreSQL database of the test's own, dropped afterwards."""
    base = urlsplit(os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/webhooks"))
    name = f"webhooks_prod_{uuid.uuid4().hex[:10]}"
    admin = base._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield base._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def production_env(production_db, tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "CELERY_", "WEBHOOK", "DJANGO_", "PROMETHEUS_"))
    }
    documented = documented_env()
    placeholders = {k for k, v in documented.items() if "<" in v}
    env.update(documented)
    env.update(
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        WEBHOOK_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        DATABASE_URL=production_db,
        CELERY_BROKER_URL="redis://127.0.0.1:6379/12",
        CELERY_QUEUE=f"webhooks-prod-{uuid.uuid4().hex[:12]}",
        WEBHOOKS_VAR_DIR=str(tmp_path / "var"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    # Every placeholder of the example is one the test fills in; the rest is used as written.
    assert placeholders <= {"DJANGO_SECRET_KEY", "WEBHOOK_ENCRYPTION_KEYS", "DATABASE_URL"}, placeholders
    return env


class Process:
    """A long-running command with its output in a log file, stopped by SIGTERM."""

    def __init__(self, command: list[str], env: dict, log: Path):
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.proc.args} exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
        return True

    def stop(self) -> int:
        """SIGTERM; the exit status (a clean stop is 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # nothing left behind
        except ProcessLookupError:
            pass
        self._log.close()
        return self.proc.returncode


def get(port: int, path: str, proxied: bool = True):
    """(status, headers, body) of GET `path`, as the TLS-terminating proxy forwards it."""
    headers = {"Host": HOST, **({"X-Forwarded-Proto": "https"} if proxied else {})}

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def answers(port: int) -> bool:
    try:
        return get(port, "/health/live")[0] == 200
    except OSError:
        return False


def run(command: list[str], env: dict) -> str:
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def beat_heartbeat(database_url: str) -> bool:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT 1 FROM deliveries_heartbeat WHERE name = 'beat'").fetchone() is not None


def test_production_commands_serve_the_admin_styled_and_start_worker_and_beat(production_env, tmp_path):
    env = production_env
    run(argv(MIGRATE), env)
    assert "static files copied" in run(argv(COLLECTSTATIC), env)
    assert "System check identified no issues" in run(argv(CHECK_DEPLOY), env)

    port = free_port()
    processes = {
        "web": Process(argv(WEB, port=port), env, tmp_path / "web.log"),
        "worker": Process(argv(WORKER), env, tmp_path / "worker.log"),
        "beat": Process(argv(BEAT), env, tmp_path / "beat.log"),
    }
    try:
        web, worker, beat = processes.values()
        wait_until(lambda: web.alive() and answers(port), timeout=20, message="gunicorn to answer /health/live")

        status, headers, page = get(port, "/admin/login/")
        assert status == 200, page[:500]
        assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
        # The stylesheet the page links to, under its hashed name, served by WhiteNoise.
        css = re.search(rb'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page)
        assert css, page[:2000]
        for path in (css.group(1).decode(), "/static/admin/css/base.css"):
            status, headers, body = get(port, path)
            assert (status, headers.get_content_type()) == (200, "text/css"), path
            assert b"body" in body
        # Plain HTTP is sent to HTTPS, except the probes (load balancers call the host itself).
        status, headers, _ = get(port, "/admin/login/", proxied=False)
        assert (status, headers["Location"]) == (301, f"https://{HOST}/admin/login/")
        assert get(port, "/health/live", proxied=False)[0] == 200

        wait_until(lambda: worker.alive() and re.search(r"ready\.", worker.log()), 30, message="worker ready")
        wait_until(lambda: beat.alive() and beat_heartbeat(env["DATABASE_URL"]), 30, message="beat's heartbeat row")
        assert "beat: Starting" in beat.log()
    finally:
        codes = {name: process.stop() for name, process in processes.items()}
    assert codes == {"web": 0, "worker": 0, "beat": 0}, {n: p.log()[-2000:] for n, p in processes.items()}
    assert "Shutting down" in web.log()


def exec_start(unit: Path) -> list[str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read(unit)
    return shlex.split(parser["Service"]["ExecStart"])


def same_command(deployed: list[str], tested: list[str]) -> bool:
    """Whether `deployed` runs `tested`: the same program name and arguments, any bind address."""
    if Path(deployed[0]).name != tested[0] or len(deployed) != len(tested):
        return False
    return all(d == t or t.startswith("127.0.0.1:{") for d, t in zip(deployed[1:], tested[1:], strict=True))


@pytest.mark.parametrize(
    "unit, command",
    [("webhooks-web.service", WEB), ("webhooks-worker.service", WORKER), ("webhooks-beat.service", BEAT)],
)
def test_systemd_units_run_the_tested_commands_from_the_venv(unit, command):
    deployed = exec_start(DEPLOY / "systemd" / unit)
    assert deployed[0] == f"/srv/agent-webhooks/.venv/bin/{command[0]}"
    assert same_command(deployed, command), (deployed, command)
    text = (DEPLOY / "systemd" / unit).read_text()
    assert "Restart=always" in text
    assert "EnvironmentFile=/etc/agent-webhooks.env" in text
    assert "RuntimeDirectory=agent-webhooks/metrics" in text
    assert documented_env()["PROMETHEUS_MULTIPROC_DIR"] == "/run/agent-webhooks/metrics"
    if unit == "webhooks-web.service":  # the host's counter files emptied when the web starts
        assert "ExecStartPre=/bin/sh -c 'rm -f /run/agent-webhooks/metrics/*.db'" in text


def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart's binary to exist: the units as installed in this checkout.
    for unit in (DEPLOY / "systemd").glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace("/srv/agent-webhooks/.venv/bin", str(BIN)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "webhooks-" not in result.stderr, result.stderr  # no warning about our units


def test_procfile_runs_the_tested_commands():
    processes = dict(
        line.split(": ", 1) for line in (DEPLOY / "Procfile").read_text().splitlines() if line and line[0] != "#"
    )
    assert set(processes) == {"release", "web", "worker", "beat"}
    release = [shlex.split(part) for part in processes["release"].split(" && ")]
    assert release == [MIGRATE, COLLECTSTATIC]
    assert same_command(shlex.split(processes["web"].replace("0.0.0.0:$PORT", "127.0.0.1:{port}")), WEB)
    assert shlex.split(processes["worker"]) == WORKER
    assert shlex.split(processes["beat"]) == BEAT
