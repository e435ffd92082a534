import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peerproj.settings")
app = Celery("peerproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _announce_ready(**kwargs):
    # The benchmark runs the worker at log level WARNING (no per-task log lines), so it
    # learns that the worker is ready from this file rather than from the log.
    if path := os.environ.get("PEER_READY_FILE"):
        Path(path).write_text("ready")
