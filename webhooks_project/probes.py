"""Health: what `GET /health/live`, `GET /health/ready` and `manage.py health` report.

Live says the web process answers, nothing more (restart it if not). Ready says the service
can deliver, each check with its figure:

* database: `SELECT 1` answers (ms);
* broker: the Celery broker answers within WEBHOOK_READY_BROKER_TIMEOUT (messages waiting
  in the tasks' queue);
* worker, beat: a heartbeat at most WEBHOOK_READY_HEARTBEAT_MAX_AGE old (seconds). Each
  worker process's due loop writes one (deliveries/dueloop.py), beat another
  (webhooks_project/beat.py), in the database, which every process shares whatever the broker;
* backlog: the oldest due delivery (pending, its time come) is at most
  WEBHOOK_READY_BACKLOG_MAX_AGE late (seconds; 0 when nothing is due).

No check raises, hangs past its timeout, or shows a URL, a host or a secret: a failure says
only the kind of error (logged in full). The probes need no login.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.db.models import Max, Q
from django.http import JsonResponse
from django.utils import timezone

logger = logging.getLogger("deliveries.probes")


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness check: `figure` in `unit` (None when it could not be measured), and the
    `threshold` it is held to, if any; `detail` says why it failed."""

    name: str
    ok: bool
    figure: float | int | None
    unit: str
    threshold: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Readiness:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failing(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def as_dict(self) -> dict:
        """The JSON answer: {"status": "ok"|"fail", "failing": [names], "checks": {name: {"ok",
        "figure", "unit", and "threshold", "detail" when they apply}}}."""
        checks = {}
        for c in self.checks:
            checks[c.name] = {"ok": c.ok, "figure": c.figure, "unit": c.unit}
            if c.threshold is not None:
                checks[c.name]["threshold"] = c.threshold
            if c.detail:
                checks[c.name]["detail"] = c.detail
        return {"status": "ok" if self.ok else "fail", "failing": self.failing, "checks": checks}


def broker_queue_length(timeout: float = 2.0) -> int:
    """Messages waiting in the tasks' queue (CELERY_TASK_DEFAULT_QUEUE) on the Celery broker:
    Redis, RabbitMQ or the filesystem transport. A queue not declared yet counts 0. Raises if
    the broker does not answer within `timeout` seconds (TimeoutError) or refuses."""
    outcome: dict = {}

    def measure() -> None:
        try:
            outcome["length"] = _queue_length(timeout)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    # Socket timeouts bound each step; the thread bounds them all, however the transport
    # behaves on a server that accepts connections and then says nothing.
    thread = threading.Thread(target=measure, name="webhooks-broker-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"the broker did not answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["length"]


def _queue_length(timeout: float) -> int:
    from amqp.exceptions import NotFound
    from kombu.exceptions import ChannelError

    from webhooks_project.celery import app

    # Redis's and py-amqp's socket timeouts (each transport ignores the other's), over the
    # configured transport options.
    options = dict.fromkeys(("socket_connect_timeout", "socket_timeout", "read_timeout", "write_timeout"), timeout)
    with app.connection_for_read(connect_timeout=timeout, transport_options=options) as conn:
        conn.ensure_connection(max_retries=0, timeout=timeout)
        try:
            return conn.default_channel.queue_declare(queue=app.conf.task_default_queue, passive=True).message_count
        except (NotFound, ChannelError):
            return 0  # not declared yet (Redis: an empty queue has no key)


def heartbeat_ages() -> dict[str, float | None]:
    """Seconds since the latest heartbeat of any worker process, and of beat; None if there
    has never been one. One query; raises if the database does not answer."""
    from deliveries.models import Heartbeat

    latest = Heartbeat.objects.aggregate(
        worker=Max("at", filter=Q(name__startswith="worker:")), beat=Max("at", filter=Q(name="beat"))
    )
    now = timezone.now()
    return {kind: None if at is None else max(0.0, (now - at).total_seconds()) for kind, at in latest.items()}


def oldest_due_age() -> float:
    """How late the longest-due delivery is, in seconds (0 when nothing is due): one read of
    the due loop's index."""
    from deliveries.models import Delivery, DeliveryStatus

    now = timezone.now()
    due = Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
    oldest = due.order_by("next_attempt_at").values_list("next_attempt_at", flat=True).first()
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())


def checks() -> list[Check]:
    """Every readiness check, in order: database, broker, worker, beat, backlog."""
    results = [_database(), _broker()]
    try:
        ages = heartbeat_ages()
    except Exception as exc:
        ages = {"worker": exc, "beat": exc}
    max_age = settings.WEBHOOK_READY_HEARTBEAT_MAX_AGE
    for kind in ("worker", "beat"):
        age = ages[kind]
        if isinstance(age, Exception):
            results.append(_failed(kind, "s", max_age, "database", age))
        elif age is None:
            results.append(Check(kind, False, None, "s", max_age, f"no {kind} heartbeat recorded"))
        else:
            detail = "" if age <= max_age else f"last {kind} heartbeat {age:.0f} s ago"
            results.append(Check(kind, age <= max_age, round(age, 1), "s", max_age, detail))
    results.append(_backlog())
    return results


def ready() -> Readiness:
    """All checks, and whether all passed."""
    return Readiness(checks())


def _database() -> Check:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return _failed("database", "ms", None, "database", exc)
    return Check("database", True, round((time.perf_counter() - started) * 1000, 1), "ms")


def _broker() -> Check:
    try:
        length = broker_queue_length(settings.WEBHOOK_READY_BROKER_TIMEOUT)
    except Exception as exc:
        return _failed("broker", "messages", None, "broker", exc)
    return Check("broker", True, length, "messages")


def _backlog() -> Check:
    max_age = settings.WEBHOOK_READY_BACKLOG_MAX_AGE
    try:
        age = oldest_due_age()
    except Exception as exc:
        return _failed("backlog", "s", max_age, "database", exc)
    detail = "" if age <= max_age else f"a delivery due {age:.0f} s ago waits"
    return Check("backlog", age <= max_age, round(age, 1), "s", max_age, detail)


def _failed(name: str, unit: str, threshold: float | None, source: str, exc: Exception) -> Check:
    """A check that could not be made: the error in full in the log, only its kind in the
    answer (an error's text may name hosts or users)."""
    logger.warning("health: %s check failed: %s: %s", name, type(exc).__name__, exc)
    if isinstance(exc, TimeoutError):
        detail = f"{source} did not answer in time"
    else:
        detail = f"{source} unreachable ({type(exc).__name__})"
    return Check(name, False, None, unit, threshold, detail)


# --- views: no login (probes), JSON ---------------------------------------------------------


def live_view(request) -> JsonResponse:
    """GET /health/live: this process answers."""
    return JsonResponse({"status": "ok"})


def ready_view(request) -> JsonResponse:
    """GET /health/ready: 200 when every check passes, else 503; the checks either way."""
    readiness = ready()
    return JsonResponse(readiness.as_dict(), status=200 if readiness.ok else 503)
