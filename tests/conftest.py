"""Shared fixtures: the real services, a real Celery worker process, a real HTTP receiver.

The suite needs PostgreSQL and Redis (tests/settings.py says where). If either is missing
the run stops with an error: service-backed tests are never skipped silently.
"""

import socket
import time
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from agents_hooks.models import Agent, ApiKey, Organization
from tests.receiver import RawServer, Receiver
from tests.support import AMQP_URL, Worker
from webhooks.models import Endpoint


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True, scope="session")
def _flush_survives_deadlocks():
    """Between end-to-end tests pytest-django empties the tables (TRUNCATE) while the worker
    process may still be writing a batch's log; PostgreSQL then cancels one of the two as a
    deadlock. If it picks the TRUNCATE, try it again rather than leak rows into the next test."""
    from django.core.management.commands import flush
    from django.db import OperationalError

    original = flush.Command.handle

    def handle(self, *args, **options):
        for attempt in range(5):
            try:
                return original(self, *args, **options)
            except Exception as exc:
                if attempt == 4 or not isinstance(exc.__cause__, OperationalError):
                    raise
                time.sleep(0.2)

    flush.Command.handle = handle
    yield
    flush.Command.handle = original


def pytest_sessionstart(session):
    db = settings.DATABASES["default"]
    broker = urlsplit(settings.CELERY_BROKER_URL)
    missing = []
    if db["ENGINE"] != "django.db.backends.postgresql":
        missing.append(f"PostgreSQL (DATABASE_URL is {db['ENGINE']})")
    elif not _reachable(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)):
        missing.append(f"PostgreSQL at {db.get('HOST')}:{db.get('PORT')}")
    if not _reachable(broker.hostname or "127.0.0.1", broker.port or 6379):
        missing.append(f"Redis at {broker.hostname}:{broker.port}")
    amqp = urlsplit(AMQP_URL)
    if not _reachable(amqp.hostname or "127.0.0.1", amqp.port or 5672):
        missing.append(f"RabbitMQ at {amqp.hostname}:{amqp.port}")
    if missing:
        pytest.exit("required services unreachable: " + ", ".join(missing) + " (see README, 'Tests')", returncode=3)


@pytest.fixture(scope="session")
def receiver():
    r = Receiver()
    yield r
    r.close()


class SharedWorker:
    """The suite's worker, started when a test needs it and stopped for tests that must have
    the database to their own workers (any worker's due loop sends whatever is due)."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.current: Worker | None = None
        self.starts = 0

    def running(self) -> Worker:
        if self.current is None or self.current.proc.poll() is not None:
            self.starts += 1
            # It never takes up stranded events within a test: tests of that start their own
            # worker, and must not have this one deliver for them.
            self.current = Worker(
                self.log_dir / f"worker-{self.starts}.log", extra_env={"WEBHOOK_STRANDED_AFTER": "3600"}
            )
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="session")
def shared_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    shared = SharedWorker(tmp_path_factory.mktemp("worker"))
    yield shared
    shared.stop()


@pytest.fixture
def worker(shared_worker):
    return shared_worker.running()


@pytest.fixture
def live(transactional_db, worker, receiver):
    """Committed data, a running worker and a clean receiver: the end-to-end setting."""
    receiver.reset()
    return receiver


@pytest.fixture
def receiver_only(transactional_db, shared_worker, receiver):
    """Committed data and a clean receiver, and no worker but those the test starts itself."""
    shared_worker.stop()
    receiver.reset()
    return receiver


@pytest.fixture
def org(db):
    return Organization.objects.create(name="Acme")


@pytest.fixture
def key(org) -> str:
    """An API key of `org` (shown once, as `create_api_key` prints it)."""
    return ApiKey.issue(org)[1]


@pytest.fixture
def api(key) -> APIClient:
    """The REST API as `org`'s key holder calls it."""
    return APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def agent(org):
    return Agent.objects.create(organization=org, name="helper")


@pytest.fixture
def make_endpoint(org, receiver):
    def make(path: str = "/hook", **fields) -> Endpoint:
        fields.setdefault("url", receiver.url(path))
        return Endpoint.objects.create(organization=org, **fields)

    return make


@pytest.fixture
def raw(settings):
    """A maker of raw-socket receivers (tests.receiver.RawServer) on loopback, each scripted
    by a `behaviour(conn)`, closed after the test."""
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8"]
    servers = []

    def make(behaviour):
        servers.append(RawServer(behaviour))
        return servers[-1]

    yield make
    for s in servers:
        s.close()
