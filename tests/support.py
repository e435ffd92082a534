"""Helpers shared by the tests: waiting on conditions, child processes on the test database."""

import collections
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from tests.receiver import Reply

ROOT = Path(__file__).resolve().parent.parent
# The machine's RabbitMQ, for the tests that run the pipeline on it (tests/test_rabbitmq.py).
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def wait_until(condition, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def child_database_url() -> str:
    """DATABASE_URL of the test database (pytest-django's test_ copy), for child processes."""
    d = connection.settings_dict
    auth = d["USER"] + (f":{d['PASSWORD']}" if d["PASSWORD"] else "")
    return f"postgres://{auth}@{d['HOST'] or '127.0.0.1'}:{d['PORT'] or 5432}/{d['NAME']}"


class Worker:
    """A `celery worker` process (with embedded beat, unless `beat=False`) on the test database."""

    def __init__(
        self,
        log_path: Path,
        extra_env: dict | None = None,
        pool: str = "threads",
        concurrency: int = 8,
        beat: bool = True,
    ):
        self.log_path = log_path
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": child_database_url()}
        env.update(extra_env or {})
        self.env = env
        cmd = [
            sys.executable, "-m", "celery", "-A", "webhooks_project", "worker",
            *(["-B", "-s", str(log_path.with_suffix(".beat"))] if beat else []), "--pool", pool, "-c", str(concurrency),
            "-l", "info", "-Q", env["CELERY_QUEUE"], "-n", self.name, "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self.wait_log(r"ready\.", timeout=60)
        except BaseException:
            self.stop()  # not left running when it never became ready
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match:
        def found():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            return re.search(pattern, self.log())

        return wait_until(found, timeout, message=f"worker log to show {pattern!r}")

    def stop(self, sig_kill: bool = False) -> None:
        """SIGTERM (warm shutdown) or SIGKILL the worker and everything it started (embedded
        beat, pool processes): its own process group."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGKILL if sig_kill else signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(5)
        self._signal_group(signal.SIGKILL)  # stragglers, if the leader went first
        if not self._log.closed:
            self._log.close()

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


def on_sqlite(tmp_path, script: str) -> str:
    """Run `script` in `manage.py shell` on a fresh SQLite database (the embedded default of
    `dev.py up`) in `tmp_path`; its output, once it has exited 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DJANGO_"))}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3", DJANGO_SETTINGS_MODULE="webhooks_project.settings")
    for command in (["migrate", "-v0"], ["shell", "-c", script]):
        result = subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateRedis:
    """A redis-server of the test's own (same binary as the suite's Redis), on `port`, that
    the test can stop and start again without disturbing anything else. No persistence: a
    restart comes back empty, as a broker that lost its messages."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        binary = shutil.which("redis-server")
        if not binary:
            pytest.fail("redis-server binary not found: the broker outage tests need it (they are not skipped)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self.up, timeout=10, message="private redis to start")

    def stop(self):
        """A clean stop (SIGTERM: Redis shuts down as SHUTDOWN does)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self):
        """A crash: SIGKILL, connections reset, everything in it lost."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def up(self) -> bool:
        return listening(self.port)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)


class PrivateRabbit:
    """A RabbitMQ node of the test's own, beside the machine's (rabbit@localhost on 5672): its
    own node name, AMQP and distribution ports, config, data and Erlang cookie under `base`,
    so it can be stopped, killed and restarted, keeping its data (durable queues, persistent
    messages) as a restarted server does. Starting takes ~10 s. Uses the real scripts under
    /usr/lib/rabbitmq/bin: the /usr/sbin wrappers switch to the rabbitmq user and write the
    shared node's startup log."""

    BIN = Path("/usr/lib/rabbitmq/bin")

    def __init__(self, base: Path, port: int | None = None):
        self.base, self.port = base, port or free_port()
        self.name = f"test{self.port}@localhost"
        home = base / "home"
        for folder in (base / "mnesia", base / "log", home):
            folder.mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "HOME": str(home),  # the node and rabbitmqctl share this Erlang cookie
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "PATH": f"{self.BIN}:{os.environ.get('PATH', '')}",
        }
        self.proc = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        if not (self.BIN / "rabbitmq-server").exists():
            pytest.fail("rabbitmq-server not found under /usr/lib/rabbitmq/bin: the RabbitMQ tests need it")
        log = open(self.base / "log" / "console.log", "ab")
        self.proc = subprocess.Popen(
            [str(self.BIN / "rabbitmq-server")], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        log.close()
        pid_file = self.base / "node.pid"
        # rabbitmqctl wait reads a pid file caught half-written as "garbage": wait for a whole one.
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(), 60, message="node pid file")
        self._ctl("wait", "--timeout", "60", str(pid_file))
        self._ctl("await_startup", "--timeout", "60")
        wait_until(self.up, timeout=30, message="private RabbitMQ to accept connections")

    def stop(self) -> None:
        """A clean stop, as `systemctl stop rabbitmq-server` does."""
        if self.proc and self.proc.poll() is None:
            self._ctl("stop", str(self.base / "node.pid"))
            self.proc.wait(30)
            (self.base / "node.pid").unlink(missing_ok=True)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            pid = int((self.base / "node.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def up(self) -> bool:
        return listening(self.port)

    def queue_depth(self, queue: str) -> tuple[int, int]:
        """(messages ready, messages unacknowledged) of `queue`."""
        out = self._ctl("list_queues", "-q", "name", "messages_ready", "messages_unacknowledged")
        for line in out.splitlines():
            name, ready, unacked = line.split()
            if name == queue:
                return int(ready), int(unacked)
        return 0, 0

    def _ctl(self, *args: str) -> str:
        result = subprocess.run(
            [str(self.BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env, capture_output=True, text=True,
            timeout=90,
        )  # fmt: skip
        if result.returncode:
            raise AssertionError(f"rabbitmqctl {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout


def logged_delivery(
    endpoint,
    status: str = "succeeded",
    codes=(200,),
    *,
    age: datetime.timedelta = datetime.timedelta(0),
    event_type: str = "agent.step.completed",
    agent=None,
    data: dict | None = None,
):
    """An event and its delivery to `endpoint` as the worker leaves them, `age` ago, with one
    attempt per status code (attempt n took 10n ms and answered "answer n: <code>")."""
    from django.utils import timezone

    from deliveries.models import Attempt, Delivery, Event

    created = timezone.now() - age
    event = Event.objects.create(
        type=event_type,
        organization_id=endpoint.organization_id,
        agent=agent,
        body=json.dumps({"event_type": event_type, "agent_id": getattr(agent, "pk", None), "data": data or {}}),
        created_at=created,
        fanned_out_at=created,
    )
    delivery = Delivery.objects.create(
        event=event,
        endpoint=endpoint,
        status=status,
        attempt_count=len(codes),
        created_at=created,
        last_attempt_at=created if codes else None,
        last_status_code=codes[-1] if codes else None,
        next_attempt_at=created if status == "pending" else None,
        finished_at=None if status == "pending" else created,
    )
    for number, code in enumerate(codes, 1):
        Attempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=created,
            url=endpoint.url,
            status_code=code,
            duration_ms=10 * number,
            response_body=f"answer {number}: {code}",
        )
    return delivery


def fanned_out_here(organization, count: int = 1, event_type: str = "agent.custom.thing") -> list:
    """Publish `count` events and fan them out in this process, in one transaction, so the
    worker never sees them first (its message finds them fanned out); return the deliveries,
    leased to this process for their first attempt (`pipeline.send_claimed`)."""
    from django.db import transaction

    from deliveries.events import publish
    from deliveries.fanout import fan_out

    with transaction.atomic():
        events = [publish(event_type, organization=organization, data={"n": n}) for n in range(count)]
        return fan_out([e.pk for e in events])


# --- an agent process of its own, and workers started together ------------------------------

AGENT_SCRIPT = """
import json, sys, time
import django
django.setup()
from agents_hooks.models import Step
from deliveries import enqueue
flush_seconds, step_ids = float(sys.argv[1]), sys.argv[2:]
seconds = []
for step_id in step_ids:
    step = Step.objects.get(pk=step_id)
    step.status = "success"
    started = time.perf_counter()
    step.save()
    seconds.append(time.perf_counter() - started)
enqueue.flush(flush_seconds)
print(json.dumps({"save_seconds": seconds}))
"""


def start_agent(steps: list, env: dict, flush_seconds: float = 10.0) -> subprocess.Popen:
    """An agent process of its own that completes `steps`, one save each, and publishes with
    `env` (broker, queue)."""
    child_env = {**os.environ, **env, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": child_database_url()}
    return subprocess.Popen(
        [sys.executable, "-c", AGENT_SCRIPT, str(flush_seconds), *(s.id for s in steps)],
        cwd=ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def agent_finished(agent: subprocess.Popen) -> list[float]:
    """Wait for the agent process; return each save's duration in seconds."""
    stdout, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])["save_seconds"]


def complete_steps(steps: list, env: dict, flush_seconds: float = 10.0) -> list[float]:
    return agent_finished(start_agent(steps, env, flush_seconds))


def start_workers(*specs: tuple[Path, dict]) -> list[Worker]:
    """Start a Worker per (log path, keyword arguments) at the same time; all or none."""
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = [pool.submit(Worker, log_path, **kwargs) for log_path, kwargs in specs]
    errors = [f.exception() for f in futures if f.exception()]
    if errors:
        for f in futures:
            if not f.exception():
                f.result().stop()
        raise errors[0]
    return [f.result() for f in futures]


def wait_until_settled(timeout: float = 30.0) -> None:
    """Wait until no delivery is pending or leased: from then on nothing can be sent again (a
    claim needs a pending delivery), and any second POST already arrived (a worker that sent
    one holds the lease until it has recorded it)."""
    from django.db.models import Q

    from deliveries.models import Delivery

    unsettled = Delivery.objects.filter(Q(status="pending") | Q(lease__isnull=False))
    wait_until(lambda: not unsettled.exists(), timeout, message="every delivery finished and released")


def webhook_ids(receiver, path: str) -> collections.Counter:
    return collections.Counter(r.headers["webhook-id"] for r in receiver.received(path))


def all_succeeded(count: int):
    from deliveries.models import Delivery

    return lambda: Delivery.objects.filter(status="succeeded").count() == count


# --- a worker with work in every state, for the broker fault tests -------------------------

# One event per message and per task, and tasks that wait for their slow POSTs: a worker busy
# with these holds unacknowledged messages (in progress and prefetched) when the broker goes.
BUSY_WORKER_ENV = {
    "WEBHOOK_STRANDED_AFTER": "2",
    "WEBHOOK_BATCH_SIZE": "1",
    "WEBHOOK_FANOUT_BATCH": "1",
    "WEBHOOK_STRAGGLER_AFTER": "5",
}


def busy_endpoints(receiver, make_endpoint) -> None:
    """/slow answers in 0.5 s; /failing fails every message's first POST, its retry in 2 s."""
    make_endpoint("/slow")
    make_endpoint("/failing", retry_schedule=[2])
    receiver.script("/slow", [Reply(200, delay=0.5)] * 40)
    receiver.fail_first("/failing", 503)


def wait_until_busy(receiver) -> None:
    """POSTs in flight, and a retry waiting for its time."""
    from deliveries.models import Delivery

    receiver.wait_for(4, path="/slow")
    waiting = Delivery.objects.filter(endpoint__url__endswith="/failing", status="pending", attempt_count=1)
    wait_until(waiting.exists, message="a retry waiting")
