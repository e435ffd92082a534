"""The pull feed over the API and `listen`, as a receiver behind NAT uses them: a pull endpoint
created through the API, the feed read with a key, and `webhooks/listen.py` (the stand-alone
script: an API URL and a key, no database) following it against a live server, forwarding
each event, signed, to a local receiver that verifies it; stopped and started again, it goes on
where it stopped. Bad parameters are 400s naming them."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from django.db import transaction

from deliveries.events import publish
from deliveries.models import Delivery
from tests.support import ROOT, wait_until
from webhooks import receiver as kit
from webhooks.models import Endpoint

FEED = "/api/v1/events/feed/"


def publish_now(org, event_type="agent.step.completed", **data):
    with transaction.atomic():
        return publish(event_type, organization=org, data=data)


def test_a_pull_endpoint_is_created_without_a_url(api, db):
    created = api.post("/api/v1/webhooks/", {"kind": "pull", "event_types": ["agent.step.*"]}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["kind"] == "pull" and body["url"] == "" and body["secret"].startswith("whsec_")

    assert api.post("/api/v1/webhooks/", {"kind": "pull", "url": "http://127.0.0.1:9/h"}, format="json").json() == {
        "url": ["a pull endpoint has no URL: its events are read from the feed"]
    }
    assert api.post("/api/v1/webhooks/", {}, format="json").json() == {
        "url": ["required for a push endpoint (or choose kind: pull)"]
    }
    changed = api.patch(f"/api/v1/webhooks/{body['id']}/", {"kind": "push"}, format="json")
    assert changed.status_code == 400 and "kind" in changed.json()
    assert api.post("/api/v1/webhooks/", {"kind": "poll"}, format="json").json()["kind"] == [
        '"poll" is not a valid choice.'
    ]


@pytest.mark.django_db(transaction=True)
def test_the_feed_over_the_api_pages_and_signs_for_a_pull_endpoint(api, org):
    pull = api.post("/api/v1/webhooks/", {"kind": "pull", "event_types": ["agent.step.*"]}, format="json").json()
    published = [publish_now(org, n=n).pk for n in range(3)]
    publish_now(org, "agent.message.sent")  # not for the pull endpoint
    first = wait_until(
        lambda: (r := api.get(FEED, {"limit": 2, "endpoint": pull["id"], "wait": 5}).json())["events"] and r,
        message="the feed",
    )
    rest = api.get(FEED, {"after": first["next"], "endpoint": pull["id"], "wait": 5}).json()
    got = first["events"] + rest["events"]
    assert [e["id"] for e in got] == published
    for event in got:
        webhook = kit.Receiver(pull["secret"]).verify(event["body"].encode(), event["headers"])
        assert webhook.id == event["id"] and webhook.event_type == "agent.step.completed"
    everything = api.get(FEED, {"wait": 5, "limit": 10}).json()
    assert len(everything["events"]) == 4 and "headers" not in everything["events"][0]


@pytest.mark.parametrize(
    "query, field, message",
    [
        ({"after": "garbage"}, "after", "is not a cursor of this feed"),
        ({"wait": "-1"}, "wait", "greater than or equal to 0"),
        ({"wait": "nan"}, "wait", "A valid number is required."),
        ({"wait": "inf"}, "wait", "A valid number is required."),
        ({"wait": "soon"}, "wait", "A valid number is required."),
        ({"limit": "0"}, "limit", "greater than or equal to 1"),
        ({"endpoint": "ep_nope"}, "endpoint", "does not exist"),
    ],
)
def test_bad_feed_parameters_are_400s_naming_them(api, query, field, message):
    answer = api.get(FEED, query)
    assert answer.status_code == 400
    assert message in json.dumps(answer.json()[field])


def test_a_push_endpoint_is_not_a_feed(api, org):
    push = Endpoint.objects.create(organization=org, url="https://example.com/h")
    answer = api.get(FEED, {"endpoint": push.pk})
    assert answer.status_code == 400 and "is a push endpoint" in answer.json()["endpoint"][0]


def test_another_organizations_pull_endpoint_does_not_exist(api, db):
    from agents_hooks.models import Organization

    other = Endpoint.objects.create(organization=Organization.objects.create(name="other"), kind="pull")
    assert "does not exist" in api.get(FEED, {"endpoint": other.pk}).json()["endpoint"][0]


def test_wait_is_capped_by_the_setting(api, settings, db):
    settings.WEBHOOK_FEED_MAX_WAIT = 0.2
    began = time.monotonic()
    assert api.get(FEED, {"wait": 600}).status_code == 200
    assert time.monotonic() - began < 5


class Listen:
    """webhooks/listen.py as a receiver runs it: its own process, an API URL and a key."""

    def __init__(self, server, key, *args, cwd):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "webhooks" / "listen.py"), "--api", f"{server}/api/v1", "--key", key, *args],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")), daemon=True).start()

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(10)


@pytest.mark.django_db(transaction=True)
def test_listen_forwards_signed_events_and_resumes_after_a_restart(live_server, receiver, key, org, tmp_path):
    receiver.reset()
    forward_to = receiver.url("/listened")
    first = Listen(live_server.url, key, "--forward-to", forward_to, "--from-start", cwd=tmp_path)
    try:
        created = wait_until(lambda: [ln for ln in first.lines if "signing secret" in ln], message="a pull endpoint")
        secret = created[0].split("shown once: ")[1].strip()
        endpoint = wait_until(lambda: [ln for ln in first.lines if "pass --endpoint" in ln])[0].split()[-1].rstrip(".")
        wait_until(lambda: any(ln.startswith("Forwarding") for ln in first.lines), message="listening")
        a = publish_now(org, n=1)
        (request,) = receiver.wait_for(1, path="/listened", timeout=30)
        webhook = kit.Receiver(secret).verify(request.body, request.headers)
        assert webhook.id == a.pk
        wait_until(lambda: any(a.pk in ln and "-> 200" in ln for ln in first.lines), message="the printed line")
    finally:
        assert first.stop() in (0, -15)

    b = publish_now(org, n=2)  # while nobody listens
    second = Listen(live_server.url, key, "--forward-to", forward_to, "--endpoint", endpoint, "--max-events", "1",
                    cwd=tmp_path)  # fmt: skip
    assert second.proc.wait(30) == 0  # forwarded one event, then stopped
    ids = [kit.Receiver(secret).verify(r.body, r.headers).id for r in receiver.wait_for(2, path="/listened")]
    assert ids == [a.pk, b.pk]  # b once, a not again: the saved position
    assert (tmp_path / ".webhooks-listen-cursor").read_text().strip()


def test_listen_refuses_a_bad_key_and_bad_arguments(live_server, tmp_path, db):
    run = [sys.executable, str(ROOT / "webhooks" / "listen.py"), "--api", f"{live_server.url}/api/v1"]
    refused = subprocess.run([*run, "--key", "ahk_wrong", "--forward-to", "http://127.0.0.1:9/"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert refused.returncode == 1 and "401" in refused.stderr and "Traceback" not in refused.stderr
    bad_url = subprocess.run([*run, "--key", "ahk_x", "--forward-to", "ftp://x"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad_url.returncode == 2 and "--forward-to: 'ftp://x' is not an http(s) URL" in bad_url.stderr
    env = {k: v for k, v in os.environ.items() if "WEBHOOKS_API" not in k}
    no_key = subprocess.run(run + ["--forward-to", "http://127.0.0.1:9/"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30, env=env)  # fmt: skip
    assert no_key.returncode == 2 and "--api and --key" in no_key.stderr


@pytest.mark.django_db(transaction=True)
def test_a_test_event_for_a_pull_endpoint_goes_to_its_feed(api, org):
    pull = api.post("/api/v1/webhooks/", {"kind": "pull"}, format="json").json()
    sent = api.post(f"/api/v1/webhooks/{pull['id']}/test/")
    assert sent.status_code == 202
    assert sent.json()["delivery"] is None and f"feed/?endpoint={pull['id']}" in sent.json()["detail"]
    page = api.get(FEED, {"endpoint": pull["id"], "wait": 10}).json()
    assert [e["type"] for e in page["events"]] == ["webhook.test"]
    assert kit.Receiver(pull["secret"]).verify(page["events"][0]["body"].encode(), page["events"][0]["headers"])


def test_a_disabled_pull_endpoint_has_no_feed(api, org):
    pull = Endpoint.objects.create(organization=org, kind="pull", is_active=False)
    assert api.get(FEED, {"endpoint": pull.pk}).json() == {
        "endpoint": [f"{pull.pk} is disabled: enable it to read its feed."]
    }


@pytest.mark.django_db(transaction=True)
def test_manage_py_webhooks_listen_forwards_from_the_database(receiver, org, tmp_path):
    from tests.test_cli import refused, webhooks

    receiver.reset()
    published = [publish_now(org, n=n).pk for n in range(2)]
    wait_until(lambda: len(feed_read(org)) == 2, message="the events in the feed")
    cursor = str(tmp_path / "cursor")
    run = webhooks("listen", "--organization", org.name, "--forward-to", receiver.url("/cli"), "--from-start",
                   "--max-events", "2", "--cursor-file", cursor)  # fmt: skip
    assert run.code == 0, run
    secret = run.out.split("shown once: ")[1].split()[0]
    requests = receiver.wait_for(2, path="/cli")
    assert [kit.Receiver(secret).verify(r.body, r.headers).id for r in requests] == published
    assert sum("-> 200 OK" in line for line in run.out.splitlines()) == 2 and "\n\n" not in run.out

    push = Endpoint.objects.create(organization=org, url=receiver.url("/push"))
    refused(webhooks("listen", "--endpoint", push.pk, "--forward-to", receiver.url("/cli")), 2, "is a push endpoint")
    refused(webhooks("listen", "--endpoint", "ep_nope", "--forward-to", receiver.url("/cli")), 2, "ep_nope")
    refused(webhooks("listen", "--forward-to", "ftp://nowhere"), 2, "is not an http(s) URL")
    pull = Endpoint.objects.create(organization=org, kind="pull")
    to = ["--endpoint", pull.pk, "--forward-to", receiver.url("/cli")]
    refused(webhooks("listen", *to, "--max-events", "0"), 2, "--max-events: a whole number from 1 up")
    refused(webhooks("listen", *to, "--after", "garbage", "--max-events", "1"), 2, "--after", "not a cursor")
    blocked = str(tmp_path / "no-such-dir" / "cursor")
    refused(webhooks("listen", *to, "--cursor-file", blocked), 2, "--cursor-file: cannot write")
    assert Delivery.objects.count() == 0 and len(receiver.requests) == 2  # nothing more was sent


def feed_read(org) -> list:
    from deliveries import feed

    return feed.read(org.pk, after=None).items


def test_listen_fetches_a_fresh_signature_for_an_event_it_could_not_forward_for_long(monkeypatch):
    """A local receiver down for minutes: the event is read again (signed anew) rather than sent
    with a timestamp the receiver would refuse as stale; nothing is skipped, nothing doubled."""
    import io

    from webhooks import listen as loop

    fetches, sent, calls = [], [], {"n": 0}

    def page(after, endpoint, wait):
        fetches.append(after)
        event = {"id": "evt_1", "type": "agent.step.completed", "cursor": "c1", "body": "{}",
                 "headers": {"webhook-timestamp": str(len(fetches))}}  # fmt: skip
        return {"events": [event], "next": "c1", "has_more": False}

    def forward(url, body, headers):
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionRefusedError("down")
        sent.append(headers["webhook-timestamp"])
        return "200 OK"

    monkeypatch.setattr(loop, "forward", forward)
    monkeypatch.setattr(loop, "RESIGN_AFTER", 0.05)  # each wait after a failure outlasts the signature
    listener = loop.Listener(
        page, "ep_1", "http://127.0.0.1:9/", max_events=1, out=io.StringIO(), sleep=lambda s: time.sleep(0.06)
    )
    listener.run(after="c0")
    assert fetches == ["c0", "c0", "c0"]  # the same position, read again after each failure
    assert sent == ["3"]  # sent once, with the signature of the last read


def test_listen_py_runs_with_the_standard_library_alone(tmp_path):
    """A receiver downloads one file and runs it: no project, no site-packages."""
    import shutil

    shutil.copy(ROOT / "webhooks" / "listen.py", tmp_path / "listen.py")
    result = subprocess.run([sys.executable, "-S", "-I", str(tmp_path / "listen.py"), "--help"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--forward-to" in result.stdout and "WEBHOOKS_API_KEY" in result.stdout


def test_listen_does_not_forward_what_the_feed_marks_unsent(monkeypatch):
    """An oversize event (a push endpoint gets a failed delivery for it) is said, not forwarded,
    and the position moves past it."""
    import io

    from webhooks import listen as loop

    sent, out = [], io.StringIO()
    events = [
        {"id": "evt_big", "type": "agent.step.completed", "cursor": "c1", "body": "{}", "unsent": "payload too large"},
        {"id": "evt_ok", "type": "agent.step.completed", "cursor": "c2", "body": "{}", "headers": {"h": "1"}},
    ]
    monkeypatch.setattr(loop, "forward", lambda url, body, headers: sent.append(headers) or "200 OK")
    listener = loop.Listener(lambda *a: {"events": events, "next": "c2", "has_more": False}, "ep_1",
                             "http://127.0.0.1:9/", max_events=1, out=out)  # fmt: skip
    listener.run(after=None)
    assert sent == [{"h": "1"}]
    assert "evt_big  not forwarded: payload too large" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_the_feed_keeps_credential_headers_out_and_marks_oversize_events(api, org, settings):
    pull = Endpoint.objects.create(
        organization=org, kind="pull", headers={"Authorization": "Bearer s3cret-t0ken", "X-Team": "ops"}
    )
    settings.WEBHOOK_MAX_PAYLOAD_BYTES = 600
    small = publish_now(org, n=1)
    big = publish_now(org, text="x" * 2000)
    page = wait_until(
        lambda: (r := api.get(FEED, {"endpoint": pull.pk, "wait": 5}).json())["events"] and len(r["events"]) == 2 and r,
        message="both events",
    )
    first, second = page["events"]
    assert first["id"] == small.pk and first["headers"]["X-Team"] == "ops"
    assert "Authorization" not in first["headers"] and "s3cret" not in json.dumps(page)
    assert second["id"] == big.pk and "headers" not in second
    assert second["unsent"].startswith("payload too large") and second["oversize_bytes"] > 600
