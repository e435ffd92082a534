"""The Celery app. Configuration comes from Django settings (CELERY_* names)."""

import logging
import os
from pathlib import Path

from celery import Celery, bootsteps
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webhooks_project.settings")

app = Celery("webhooks_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _mark_ready(**kwargs) -> None:
    """Once the worker consumes: its metrics exporter starts (WEBHOOK_METRICS_PORT), and with
    CELERY_READY_FILE set it touches that file (orchestrators and the benchmark wait for it)."""
    from django.conf import settings

    if settings.WEBHOOK_METRICS_PORT:
        from webhooks_project import monitoring

        monitoring.start_worker_exporter(settings.WEBHOOK_METRICS_PORT)
    path = os.environ.get("CELERY_READY_FILE")
    if path:
        Path(path).touch()


@worker_init.connect
def _relaxed_commits(**kwargs) -> None:
    """A worker's writes are all bookkeeping: its connections commit without waiting for the
    WAL flush (deliveries.store.relaxed_commit says why that is safe). Pool processes
    forked later inherit the receiver."""
    from django.db.backends.signals import connection_created

    from deliveries.store import relax_session

    connection_created.connect(relax_session, weak=False)


@task_prerun.connect
def _task_takes_its_turn(task=None, **kwargs) -> None:
    """Tasks and the due loop take turns in a worker process, tasks first (deliveries/dueloop.py)."""
    from deliveries.dueloop import turns

    if task is None or not getattr(task.request, "is_eager", False):
        turns.task_started()


@task_postrun.connect
def _task_ends_its_turn(task=None, **kwargs) -> None:
    from deliveries.dueloop import turns

    if task is None or not getattr(task.request, "is_eager", False):
        turns.task_finished()


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


@worker_process_init.connect
def _start_due_loop_in_child(**kwargs) -> None:
    """Each pool process (prefork child, or the solo pool's one) runs a due loop
    (deliveries/dueloop.py): retries and everything else due are sent from the database."""
    from deliveries import dueloop

    dueloop.start()


class DueLoopStep(bootsteps.StartStopStep):
    """With a pool of threads the tasks run in the worker's own process: so does the due
    loop. Started with the pool, before the worker connects to the broker, so a worker
    started while the broker is down delivers what is due all the same."""

    requires = {"celery.worker.components:Pool"}

    def start(self, worker) -> None:
        from celery.concurrency.prefork import TaskPool as PreforkPool

        from deliveries import dueloop

        if not isinstance(worker.pool, PreforkPool):  # prefork children start their own
            dueloop.start()


app.steps["worker"].add(DueLoopStep)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _finish_in_hand(**kwargs) -> None:
    """On a warm shutdown, the due loop stops after its batch in hand, and requests still
    running in the slow lane are finished and recorded (up to the request timeout), rather
    than left to run out their lease and be sent again."""
    from django.conf import settings

    from deliveries import dueloop, lanes

    timeout = settings.WEBHOOK_CONNECT_TIMEOUT + settings.WEBHOOK_TIMEOUT
    if not dueloop.stop(timeout):
        logging.getLogger("deliveries.dueloop").warning(
            "shutdown: a due batch unfinished; its deliveries come due again"
        )
    if not lanes.drain(timeout):
        logging.getLogger("deliveries.lanes").warning("shutdown: slow-lane requests unfinished; they come due again")
