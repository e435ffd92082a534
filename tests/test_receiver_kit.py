"""The receivers' kit (`webhooks/receiver.py`) and its examples, as a receiver's engineer uses
them: the Django and FastAPI examples run as their own processes and take real deliveries
from a real worker, through a secret rotation; forged, stale and replayed requests are
refused; the kit works with the standard library alone; replay stores in memory and Redis."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis

from deliveries.events import send_test
from deliveries.models import Delivery, DeliveryStatus
from tests.support import ROOT, free_port, listening, wait_until
from webhooks import receiver as kit
from webhooks import signing

REDIS_URL = "redis://127.0.0.1:6379/11"


class Example:
    """One of examples/*.py, running on a free port, its printed lines collected."""

    def __init__(self, name: str, secrets: list[str], **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        environment = {**os.environ, "WEBHOOK_SECRETS": ",".join(secrets), **env}
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / f"{name}.py"), f"127.0.0.1:{self.port}"],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(lambda: listening(self.port) or self.proc.poll() is not None, timeout=30, message=f"{name}")
        assert self.proc.poll() is None, f"{name} exited with {self.proc.returncode}"

    def _read(self):
        for line in self.proc.stdout:
            if line.strip() and not line.startswith(("Performing", "System", "Django", "Starting", "Quit")):
                self.lines.append(line.split())

    def handled(self, event_id: str) -> list[list[str]]:
        return [line for line in self.lines if len(line) == 3 and line[1] == event_id]

    def post(self, body: bytes, headers: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


EXAMPLES = [
    pytest.param("django_receiver", {"WEBHOOK_STYLES": "letta"}, "letta", id="django-letta-memory"),
    pytest.param("fastapi_receiver", {"WEBHOOK_STYLES": "standard", "REDIS_URL": REDIS_URL}, "standard",
                 id="fastapi-standard-redis"),
]  # fmt: skip


@pytest.fixture
def example():
    started = []

    def start(name, secrets, **env):
        started.append(Example(name, secrets, **env))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def delivered(endpoint, example: Example):
    """Send a webhook.test through the real pipeline; wait until the example printed it and the
    attempt log shows its 200."""
    delivery = send_test(endpoint)
    line = wait_until(lambda: example.handled(delivery.event_id), timeout=30, message="the example to handle it")
    wait_until(lambda: Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.SUCCEEDED, message="success")
    assert delivery.attempts.get().status_code == 200
    return line[0]


@pytest.mark.parametrize("name, env, style", EXAMPLES)
def test_examples_take_real_deliveries_through_a_secret_rotation(live, make_endpoint, example, name, env, style):
    endpoint = make_endpoint()
    old = endpoint.secret
    receiver = example(name, [old], **env)
    endpoint.url = receiver.url
    endpoint.save()
    assert delivered(endpoint, receiver)[::2] == ["webhook.test", style]

    # The service rotates; this receiver still has only the old secret, and keeps verifying
    # (both headers carry one signature per active secret).
    new = endpoint.rotate_secret()
    assert new != old
    assert delivered(endpoint, receiver)[::2] == ["webhook.test", style]

    # Given the new secret alone, a receiver verifies too.
    updated = example(name, [new], **env)
    endpoint.url = updated.url
    endpoint.save()
    assert delivered(endpoint, updated)[::2] == ["webhook.test", style]


def signed(secret: str, body: bytes, msg_id: str, timestamp: int | None = None) -> dict:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "X-Letta-Timestamp": str(timestamp),
        **signing.signature_headers([signing.secret_key(secret)], msg_id, timestamp, body),
    }


@pytest.mark.parametrize("name, env, style", EXAMPLES)
def test_examples_refuse_forgeries_stale_and_replayed_requests(example, name, env, style):
    secret = signing.generate_secret()
    receiver = example(name, [secret], **env)
    event_id = f"evt_{uuid.uuid4().hex}"
    body = json.dumps({"event_id": event_id, "event_type": "agent.step.completed", "data": {}}).encode()

    assert receiver.post(body, signed(secret, body, event_id)) == (200, {"status": "ok"})
    wait_until(lambda: receiver.handled(event_id), message="handled")

    # The same request again (a replay, or a retry after a lost answer): acknowledged, not handled again.
    status, answer = receiver.post(body, signed(secret, body, event_id))
    assert status == 200 and "duplicate" in json.dumps(answer)
    forged = body.replace(b"completed", b"failed")
    status, answer = receiver.post(forged, signed(secret, body, event_id))
    assert status == 400 and "no " + style + " signature matches" in json.dumps(answer)
    status, answer = receiver.post(body, signed(signing.generate_secret(), body, event_id))
    assert status == 400 and "matches any of the 1 accepted secrets" in json.dumps(answer)
    stale = int(time.time()) - 600
    status, answer = receiver.post(body, signed(secret, body, f"evt_{uuid.uuid4().hex}", stale))
    assert status == 400 and "the tolerance is 300 s" in json.dumps(answer)
    time.sleep(0.2)  # let any wrongly handled request reach the output before counting
    assert len(receiver.handled(event_id)) == 1


def test_the_kit_needs_only_the_standard_library(tmp_path):
    """Copied whole into a receiver's project, it imports and verifies with no site-packages."""
    shutil.copy(ROOT / "webhooks" / "receiver.py", tmp_path / "webhook_receiver.py")
    secret = signing.generate_secret()
    body = b'{"event_id": "evt_1", "event_type": "agent.run.completed"}'
    headers = signed(secret, body, "evt_1")
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import webhook_receiver as k\n"
        "try:\n    import django\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('site-packages seen')\n"
        "w = k.Receiver(sys.argv[2]).verify(sys.argv[3].encode(), json.loads(sys.argv[4]))\n"
        "print(w.id, w.event_type, w.style)\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-I", "-c", script, str(tmp_path), secret, body.decode(), json.dumps(headers)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["evt_1", "agent.run.completed", "standard"]


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        yield kit.MemoryReplayStore()
        return
    client = redis.Redis.from_url(REDIS_URL)
    yield kit.RedisReplayStore(client, prefix=f"test-{uuid.uuid4().hex}:")
    client.close()


def test_once_handles_an_id_once_and_lets_a_failed_one_be_retried(store):
    hooks = kit.Receiver(signing.generate_secret(), replay_store=store)
    webhook = kit.Webhook(id="evt_a", event_type="t", timestamp=0, style="standard", payload={})

    with pytest.raises(RuntimeError), hooks.once(webhook):
        raise RuntimeError("the handler failed")  # the sender will retry: the id is released
    with hooks.once(webhook):
        with pytest.raises(kit.Replayed) as in_flight, hooks.once(webhook):
            pass
        assert in_flight.value.in_flight  # a second copy while the first is in hand: 409
    with pytest.raises(kit.Replayed) as done, hooks.once(webhook):
        pass
    assert not done.value.in_flight  # handled: acknowledged as a duplicate


def test_redis_store_forgets_an_id_after_the_window():
    client = redis.Redis.from_url(REDIS_URL)
    store = kit.RedisReplayStore(client, prefix=f"test-{uuid.uuid4().hex}:")
    assert store.claim("evt_b", ttl=1) is None
    store.finish("evt_b", ttl=1)
    assert store.claim("evt_b", ttl=1) == kit.DONE
    wait_until(lambda: store.claim("evt_b", ttl=1) is None, timeout=5, message="the id to expire")
    client.close()


@pytest.mark.parametrize(
    "headers, message",
    [
        ({}, "no webhook-signature or X-Letta-Signature header"),
        ({"webhook-signature": "v1,x", "webhook-id": "evt", "webhook-timestamp": "soon"}, "not a Unix time"),
        ({"X-Letta-Signature": "sha256=00"}, "X-Letta-Timestamp is missing"),
    ],
)
def test_malformed_requests_say_what_is_wrong(headers, message):
    with pytest.raises(kit.VerificationError, match=message):
        kit.Receiver(signing.generate_secret()).verify(b"{}", headers)


def test_a_receiver_needs_a_secret_and_known_styles():
    with pytest.raises(ValueError, match="at least one secret"):
        kit.Receiver([])
    with pytest.raises(ValueError, match="styles"):
        kit.Receiver(signing.generate_secret(), styles=["hmac"])
    with pytest.raises(kit.VerificationError, match="whsec_"):
        kit.Receiver("not a secret!")


@pytest.mark.parametrize(
    "headers",
    [
        {"webhook-id": "evt_1", "webhook-timestamp": "{now}", "webhook-signature": "v1,é"},
        {"webhook-id": "évt", "webhook-timestamp": "{now}", "webhook-signature": "v1,abc"},
        {"X-Letta-Timestamp": "{now}", "X-Letta-Signature": "sha256=\udcff"},
    ],
)
def test_junk_in_signature_headers_is_refused_not_a_crash(headers):
    now = str(int(time.time()))
    filled = {k: v.replace("{now}", now) for k, v in headers.items()}
    with pytest.raises(kit.VerificationError):
        kit.Receiver(signing.generate_secret()).verify(b'{"event_id": "evt_1"}', filled)
