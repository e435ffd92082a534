"""What leaves the service about a receiver's URL never carries its secrets, and an API body
over the limit is refused with a 413 before it is read.

Receivers put tokens in their URLs: Slack's `/services/T…/B…/<secret>`, `?token=…`. The worker's
log names a target by endpoint id (or seed kind) and host; attempt rows and operational events
show the URL as `redact_url` does (`https://hooks.slack.com/services/…?[redacted]`); the URL
as configured stays on the endpoint (or the run), which only its organization sees.
(Real worker logging to its file, real receiver.)
"""

import importlib.util
import json
from pathlib import Path

import pytest
from django.test.client import FakePayload
from rest_framework.test import APIClient

from agents_hooks.models import Run
from deliveries.models import Attempt, Delivery
from tests.support import wait_until
from webhooks.models import redact_url, redacted_host

PATH_SECRET = "XyZsecret123456789abcdef"
QUERY_TOKEN = "qtok-5f1e9a7c"
SLACK_PATH = f"/services/T0001/B0002/{PATH_SECRET}?token={QUERY_TOKEN}"
CALLBACK_SECRET = "cb9Secret7Callback3Token"
CALLBACK_PATH = f"/callbacks/{CALLBACK_SECRET}"


# --- the URL as shown beyond its owner ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://hooks.slack.com{SLACK_PATH}", "https://hooks.slack.com/services/…?[redacted]"),
        ("https://hooks.zapier.com/hooks/catch/123456/abc1de2/", "https://hooks.zapier.com/hooks/…"),
        ("https://discord.com/api/webhooks/1234567890123456/tok-en", "https://discord.com/api/…"),
        ("https://hook.eu1.make.com/k8s2vq1x9w3e7r5t0y4u6i2o8p", "https://hook.eu1.make.com/…"),
        ("https://eo1abc2d3e4f5.m.pipedream.net/", "https://….m.pipedream.net/"),
        ("https://user:pa55@example.com:8443/letta#frag", "https://example.com:8443/letta"),
        ("http://127.0.0.1:9000/hook?token=s3cr3t", "http://127.0.0.1:9000/hook?[redacted]"),
        ("https://[2001:db8::1]/v1/", "https://[2001:db8::1]/v1/"),
        ("https://93.184.216.34", "https://93.184.216.34"),
    ],
    ids=["slack", "zapier", "discord", "make", "pipedream", "credentials", "query", "ipv6", "ipv4"],
)
def test_a_url_shown_beyond_its_owner_keeps_the_host_and_first_segment_only(url, shown):
    assert redact_url(url) == shown
    assert redacted_host(url) == shown.split("://")[1].split("/")[0].split("?")[0]


# --- the worker's log and the attempt rows ------------------------------------------------


def test_the_workers_log_names_endpoint_and_host_never_the_urls_secrets(live, worker, agent, make_endpoint):
    endpoint = make_endpoint(SLACK_PATH)
    run = Run.objects.create(agent=agent, callback_url=live.url(CALLBACK_PATH))
    run.status = "completed"
    run.save()  # agent.run.completed to the endpoint, and the run's own callback

    live.wait_for(1, path=SLACK_PATH)
    live.wait_for(1, path=CALLBACK_PATH)
    host = f"127.0.0.1:{live.port}"
    worker.wait_log(rf"delivery \d+ to {endpoint.pk} \({host}\): 200 in")
    worker.wait_log(rf"delivery \d+ to run_callback \({host}\): 200 in")
    log = worker.log()
    for secret in (PATH_SECRET, QUERY_TOKEN, CALLBACK_SECRET):
        assert secret not in log

    wait_until(lambda: Attempt.objects.count() == 2, message="both attempts recorded")
    assert sorted(Attempt.objects.values_list("url", flat=True)) == [
        live.url("/callbacks/…"),
        live.url("/services/…?[redacted]"),
    ]
    # Where the organization looks, the URLs are as configured.
    run.refresh_from_db()
    assert run.callback_url.endswith(CALLBACK_PATH)
    assert Delivery.objects.get(endpoint=endpoint).target_url == live.url(SLACK_PATH)


def test_an_operational_event_carries_no_path_secret(live, worker, api, make_endpoint):
    make_endpoint("/ops", event_types=["endpoint.*"])
    hook = make_endpoint(SLACK_PATH)

    assert api.patch(f"/api/v1/webhooks/{hook.pk}/", {"is_active": False}, format="json").status_code == 200

    (request,) = live.wait_for(1, path="/ops")
    event = json.loads(request.body)
    assert event["event_type"] == "endpoint.disabled"
    assert event["data"]["endpoint_id"] == hook.pk
    assert event["data"]["url"] == live.url("/services/…?[redacted]")
    assert PATH_SECRET.encode() not in request.body and QUERY_TOKEN.encode() not in request.body
    worker.wait_log(r"delivery \d+ to ep_\w+ \(127\.0\.0\.1:\d+\): 200 in")
    assert PATH_SECRET not in worker.log()
    # The organization's own view of the endpoint keeps the URL as configured.
    assert api.get(f"/api/v1/webhooks/{hook.pk}/").json()["url"] == live.url(SLACK_PATH)


# --- API bodies over the limit ------------------------------------------------------------


class CountedPayload(FakePayload):
    """A request body that counts what the server read of it."""

    def __init__(self, content: bytes):
        super().__init__(content)
        self.bytes_read = 0

    def read(self, size=-1, /):
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def post_body(api: APIClient, body: bytes, **meta):
    """POST `body` to /api/v1/messages/, with `meta` overriding the WSGI environ (a lying
    Content-Length, a chunked request); return the response and what the server read."""
    payload = CountedPayload(body)
    environ = {"CONTENT_LENGTH": str(len(body)), "wsgi.input": payload, **meta}
    response = api.generic("POST", "/api/v1/messages/", "", content_type="application/json", **environ)
    return response, payload.bytes_read


def big_json(size: int) -> bytes:
    return json.dumps({"agent": "agent-x", "role": "user", "content": "x" * size}).encode()


@pytest.mark.parametrize("size", [1_500_000, 10 * 1024 * 1024])
def test_a_body_over_the_limit_is_a_413_in_json_before_it_is_read(db, api, size):
    response, read = post_body(api, big_json(size))
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    detail = response.json()["detail"]
    assert "API_MAX_BODY_BYTES" in detail and "1048576" in detail
    assert read == 0  # refused by its Content-Length: not a byte of it in memory


def test_the_content_length_decides_whatever_the_bytes_that_follow(db, api):
    # Declared over the limit, the rest not even sent yet: refused at once, nothing read.
    response, read = post_body(api, b'{"content": "', CONTENT_LENGTH=str(10 * 1024 * 1024))
    assert (response.status_code, read) == (413, 0)
    # Declared small, ten megabytes behind it: the body is the declared bytes, no more.
    response, read = post_body(api, big_json(10 * 1024 * 1024), CONTENT_LENGTH="40")
    assert response.status_code == 400 and read <= 40
    # No Content-Length (chunked): Django would read nothing and run the request without
    # its body; the API asks for one instead, naming the limit.
    response, read = post_body(api, big_json(10 * 1024 * 1024), CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked")
    assert (response.status_code, read) == (411, 0)
    assert "API_MAX_BODY_BYTES" in response.json()["detail"]


def test_the_admin_keeps_djangos_own_limit_and_the_api_never_trips_it(db, client, monkeypatch):
    # A form over the API's limit still reaches the admin (its login page answers with the form).
    response = client.post("/admin/login/", {"username": "x", "password": "y", "note": "x" * 1_500_000})
    assert response.status_code == 200

    # Django's cap on a body read whole follows the API's limit up, never below its default.
    path = Path(__file__).resolve().parent.parent / "webhooks_project" / "settings.py"
    for limit, expected in (("1048576", 2_621_440), ("8388608", 8_388_608)):
        monkeypatch.setenv("API_MAX_BODY_BYTES", limit)
        spec = importlib.util.spec_from_file_location("_settings_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.DATA_UPLOAD_MAX_MEMORY_SIZE == expected
        assert module.MIDDLEWARE[0] == "webhooks_project.api.body_limit_middleware"
