"""The Celery app. Configuration comes from Django settings (CELERY_* names)."""

import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_ready

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
