"""Bad configuration stops start-up naming the variable; secrets survive an encryption key
rotation and never sit in the database in clear."""

import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from tests.support import ROOT
from webhooks.models import Endpoint


@pytest.mark.parametrize(
    "variable, value",
    [
        ("WEBHOOK_RETRY_SCHEDULE", "5m,5s"),
        ("WEBHOOK_RETRY_SCHEDULE", "5 minutes"),
        ("WEBHOOK_RETRY_SCHEDULE", "2d"),
        ("WEBHOOK_RETRY_JITTER", "1.5"),
        ("WEBHOOK_RETRY_JITTER", "true"),
        ("WEBHOOK_DUE_POLL_INTERVAL", "0"),
        ("WEBHOOK_FEED_MAX_WAIT", "-1"),
        ("WEBHOOK_FEED_MAX_WAIT", "soon"),
        ("WEBHOOK_MAX_RETRIES", "10"),  # replaced by WEBHOOK_RETRY_SCHEDULE: said so, not ignored
        ("WEBHOOK_SWEEP_GRACE", "60"),
        ("WEBHOOK_TIMEOUT", "-1"),
        ("WEBHOOK_ALLOWED_CIDRS", "10.0.0.1/8"),
        ("WEBHOOK_ENCRYPTION_KEYS", "not-a-fernet-key"),
        ("DATABASE_URL", "nosuchdb://x"),
        ("DJANGO_DEBUG", "maybe"),
        ("WEBHOOK_STRAGGLER_AFTER", "0"),
        ("WEBHOOK_ENDPOINT_CONCURRENCY", "many"),
        ("WEBHOOK_RATE_LIMIT_HORIZON", "0"),
        ("WEBHOOK_RATE_LIMIT_REDIS_URL", "http://127.0.0.1:6379/0"),
        ("WEBHOOK_METRICS_ENABLED", "maybe"),
        ("WEBHOOK_METRICS_ENDPOINT_LABELS", "sometimes"),
        ("WEBHOOK_METRICS_PORT", "http"),
        ("WEBHOOK_METRICS_PORT", "-1"),
        ("WEBHOOK_HEARTBEAT_INTERVAL", "0"),
        ("WEBHOOK_READY_HEARTBEAT_MAX_AGE", "5"),
        ("WEBHOOK_READY_BACKLOG_MAX_AGE", "-1"),
        ("WEBHOOK_READY_BROKER_TIMEOUT", "abc"),
        ("WEBHOOK_FAILING_AFTER_FAILURES", "0"),
        ("WEBHOOK_FAILING_WINDOW", "0"),
        ("DJANGO_SECURE_SSL_REDIRECT", "perhaps"),
        ("DJANGO_SECURE_HSTS_SECONDS", "-1"),
        ("DJANGO_SECURE_PROXY_SSL_HEADER", "bad"),
    ],
)
def test_invalid_setting_stops_start_up_naming_the_variable(variable, value):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webhooks_project.settings", variable: value}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert variable in result.stderr.splitlines()[-1], result.stderr[-500:]


def test_production_without_encryption_keys_refuses_to_start():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webhooks_project.settings", "DJANGO_DEBUG": "false",
           "DJANGO_SECRET_KEY": "x" * 50, "WEBHOOK_ENCRYPTION_KEYS": ""}  # fmt: skip
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "WEBHOOK_ENCRYPTION_KEYS" in result.stderr


@pytest.mark.django_db
def test_secrets_are_encrypted_at_rest_and_survive_key_rotation(org, settings):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.WEBHOOK_ENCRYPTION_KEYS = [old_key]
    endpoint = Endpoint.objects.create(organization=org, url="https://hooks.example.com/x")
    secret = endpoint.secret
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret_encrypted FROM webhooks_endpoint WHERE id = %s", [endpoint.pk])
        (stored,) = cursor.fetchone()
    assert secret.startswith("whsec_") and secret not in stored

    settings.WEBHOOK_ENCRYPTION_KEYS = [new_key, old_key]  # rotation: new first, old still known
    call_command("reencrypt_secrets")
    settings.WEBHOOK_ENCRYPTION_KEYS = [new_key]  # the old key retired
    assert Endpoint.objects.get(pk=endpoint.pk).secret == secret

    settings.WEBHOOK_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]  # a key that never saw it
    with pytest.raises(CommandError, match="not in WEBHOOK_ENCRYPTION_KEYS"):
        call_command("reencrypt_secrets")
