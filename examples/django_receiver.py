"""A Django receiver of this service's webhooks, whole in one file.

    WEBHOOK_SECRETS=whsec_… python examples/django_receiver.py 127.0.0.1:3000

then point an endpoint at http://127.0.0.1:3000/hook. It prints one line per webhook handled.

WEBHOOK_SECRETS  the endpoint's secret; several, comma-separated, during a rotation (optional:
                 while the service rotates, the old secret alone keeps verifying for 24 h)
WEBHOOK_STYLES   which signature to check: `standard` (webhook-signature), `letta`
                 (X-Letta-Signature) or both, comma-separated, the default
REDIS_URL        share the replay store between processes (optional: memory otherwise)

In your own project: copy `webhooks/receiver.py` beside your code as `webhook_receiver.py` and
decorate your view as below; the rest of this file is the smallest Django project there is.
"""

import os
import sys
from pathlib import Path

import django
from django.conf import settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "webhooks"))  # the kit, from this repository
import receiver as webhook_receiver  # noqa: E402

settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="example-only", MIDDLEWARE=[])
django.setup()

from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


def replay_store():
    if os.environ.get("REDIS_URL"):
        import redis

        return webhook_receiver.RedisReplayStore(redis.Redis.from_url(os.environ["REDIS_URL"]))
    return webhook_receiver.MemoryReplayStore()


hooks = webhook_receiver.Receiver(
    os.environ["WEBHOOK_SECRETS"].split(","),
    styles=os.environ.get("WEBHOOK_STYLES", "standard,letta").split(","),
    replay_store=replay_store(),
)


@webhook_receiver.django_view(hooks)
def hook(request, webhook):
    # Your handling here. Answer 2xx when done; an exception or another status has it retried.
    print(f"{webhook.event_type} {webhook.id} {webhook.style}", flush=True)
    return JsonResponse({"status": "ok"})


urlpatterns = [path("hook", hook)]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line([sys.argv[0], "runserver", "--noreload", *(sys.argv[1:] or ["127.0.0.1:3000"])])
