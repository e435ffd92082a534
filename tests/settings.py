"""Settings for the test suite: the real services on 127.0.0.1 and short retry delays.

Variables already set in the environment win, so CI or a developer can point the suite at
other servers (TEST_DATABASE_URL, TEST_BROKER_URL). The worker processes the tests start
import this module too, with the same environment.
"""

import os
import uuid

_defaults = {
    "DATABASE_URL": os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/webhooks"),
    "CELERY_BROKER_URL": os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/15"),
    # One queue per test session, so runs sharing a Redis never see each other's messages.
    "CELERY_QUEUE": f"webhooks-test-{uuid.uuid4().hex[:12]}",
    "WEBHOOKS_VAR_DIR": f"/tmp/webhooks-test-var-{os.getpid()}",
    # Two retries, 1 s and then 3 s after the attempt before; no jitter unless a test asks.
    "WEBHOOK_RETRY_SCHEDULE": "1,3",
    "WEBHOOK_RETRY_JITTER": "0",
    "WEBHOOK_TIMEOUT": "2",
    "WEBHOOK_CONNECT_TIMEOUT": "2",
    "WEBHOOK_STRANDED_AFTER": "3",
    # The slow lane (deliveries/lanes.py) at a scale a test can watch.
    "WEBHOOK_STRAGGLER_AFTER": "0.3",
    "WEBHOOK_ENDPOINT_CONCURRENCY": "2",
    "STEP_COMPLETE_KEY": "test-key-123",
    # The tests' receivers live on loopback, which production refuses (webhooks/urlsafety.py).
    "WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8,::1/128",
    "DJANGO_DEBUG": "true",
}
for _name, _value in _defaults.items():
    os.environ.setdefault(_name, _value)

from webhooks_project.settings import *  # noqa: E402,F403
