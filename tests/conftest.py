"""Shared fixtures: the real services, a real Celery worker process, a real HTTP receiver.

The suite needs PostgreSQL and Redis (tests/settings.py says where). If either is missing
the run stops with an error: service-backed tests are never skipped silently.
"""

import socket
import time
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from agents_hooks.models import Agent, Organization
from tests.receiver import Receiver
from tests.support import Worker
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
    if missing:
        pytest.exit("required services unreachable: " + ", ".join(missing) + " (see README, 'Tests')", returncode=3)


@pytest.fixture(scope="session")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="session")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    # Its sweeper never fires within a test: tests of the sweeper start their own worker, and
    # must not have this one deliver for them.
    w = Worker(tmp_path_factory.mktemp("worker") / "worker.log", extra_env={"WEBHOOK_SWEEP_GRACE": "3600"})
    yield w
    w.stop()


@pytest.fixture
def live(transactional_db, worker, receiver):
    """Committed data, a running worker and a clean receiver: the end-to-end setting."""
    receiver.reset()
    return receiver


@pytest.fixture
def org(db):
    return Organization.objects.create(name="Acme")


@pytest.fixture
def agent(org):
    return Agent.objects.create(organization=org, name="helper")


@pytest.fixture
def make_endpoint(org, receiver):
    def make(path: str = "/hook", **fields) -> Endpoint:
        fields.setdefault("url", receiver.url(path))
        return Endpoint.objects.create(organization=org, **fields)

    return make
