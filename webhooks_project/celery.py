"""The Celery app. Configuration comes from Django settings (CELERY_* names)."""

import logging
import os
from pathlib import Path

from celery import Celery
from celery.signals import task_prerun, worker_init, worker_process_shutdown, worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webhooks_project.settings")

app = Celery("webhooks_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _mark_ready(**kwargs) -> None:
    """Readiness probe: with CELERY_READY_FILE set, the worker touches that file once it
    consumes (orchestrators and the benchmark wait for it)."""
    path = os.environ.get("CELERY_READY_FILE")
    if path:
        Path(path).touch()


@worker_init.connect
def _relaxed_commits(**kwargs) -> None:
    """A worker's writes are all bookkeeping: its connections commit without waiting for the
    WAL flush (deliveries.attempts.relaxed_commit says why that is safe). Pool processes
    forked later inherit the receiver."""
    from django.db.backends.signals import connection_created

    from deliveries.attempts import relax_session

    connection_created.connect(relax_session, weak=False)


@task_prerun.connect
def _check_connections(task=None, **kwargs) -> None:
    """What Django does before each request: drop a connection that failed or is too old,
    and health-check the rest on first use (CONN_HEALTH_CHECKS). Celery no longer closes them
    per task (CELERY_DB_REUSE_MAX), so a connection the database dropped is found here rather
    than by the task's first query."""
    from django.db import close_old_connections

    if task is not None and getattr(task.request, "is_eager", False):
        return  # runs inside the caller, perhaps in its transaction: leave its connection be
    close_old_connections()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _finish_slow_lane(**kwargs) -> None:
    """On a warm shutdown, requests still running in the slow lane are finished and recorded
    (up to the request timeout) rather than left to run out their lease and be sent again."""
    from django.conf import settings

    from deliveries import lanes

    if not lanes.drain(settings.WEBHOOK_CONNECT_TIMEOUT + settings.WEBHOOK_TIMEOUT):
        logging.getLogger("deliveries.lanes").warning("shutdown: slow-lane requests unfinished; the sweeper sends them")
