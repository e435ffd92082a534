"""Minimal Django project around django-webhook 0.0.15, configured like our service where
they overlap: PostgreSQL with persistent connections, Redis broker, results ignored."""

import os

SECRET_KEY = "bench-peer-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_webhook",
    "peerapp",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PEER_DB_NAME", "bench_peer"),
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": 5432,
        "CONN_MAX_AGE": 600,
    }
}

# Only Item fires webhooks; Plain is the same table shape without any (the overhead baseline).
DJANGO_WEBHOOK = {"MODELS": ["peerapp.Item"]}

CELERY_BROKER_URL = os.environ.get("PEER_BROKER_URL", "redis://127.0.0.1:6379/14")
CELERY_TASK_DEFAULT_QUEUE = "bench_peer"
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
