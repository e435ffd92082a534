"""The REST API for endpoints ("webhooks"): CRUD and its validation, the secret (shown on create
and on rotation only; both signatures sent during the grace period), test-send, bulk recovery,
and the event type catalog. Actions that deliver run through the real worker to a real receiver.
"""

import datetime
import json

import pytest
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from deliveries.models import Attempt, Delivery, Event
from tests.receiver import Reply
from tests.support import wait_until
from webhooks import catalog, signing
from webhooks.models import Endpoint

PUBLIC = "https://93.184.216.34/hook"  # a public address literal: valid without DNS


def create(api, **body):
    return api.post("/api/v1/webhooks/", {"url": PUBLIC, **body}, format="json")


def logged_delivery(endpoint, status, *, created_at=None, codes=(400,)) -> Delivery:
    """A delivery as the worker leaves it after `codes` answers (the log the API reads)."""
    created_at = created_at or timezone.now()
    event = Event.objects.create(
        type="agent.step.completed",
        organization_id=endpoint.organization_id,
        body=json.dumps({"event_type": "agent.step.completed", "data": {"step_id": "step-1"}}),
        created_at=created_at,
        fanned_out_at=created_at,
    )
    delivery = Delivery.objects.create(
        event=event,
        endpoint=endpoint,
        status=status,
        attempt_count=len(codes),
        series_start=0,
        created_at=created_at,
        last_attempt_at=created_at,
        last_status_code=codes[-1],
        finished_at=created_at,
    )
    for number, code in enumerate(codes, 1):
        Attempt.objects.create(
            delivery=delivery, number=number, started_at=created_at, url=endpoint.url, status_code=code, duration_ms=5
        )
    return delivery


# --- CRUD ----------------------------------------------------------------------------------


def test_create_answers_the_secret_once(api, org, agent):
    response = create(api, agent=agent.id, event_types=["agent.step.*"], description="billing", headers={"X-Team": "a"})
    assert response.status_code == 201
    body = response.json()
    assert body["id"].startswith("ep_")
    assert body["secret"].startswith("whsec_")
    signing.secret_key(body["secret"])  # decodes to a usable key
    endpoint = Endpoint.objects.get(pk=body["id"])
    assert endpoint.organization == org and endpoint.secret == body["secret"]
    assert (body["url"], body["agent"], body["event_types"], body["headers"], body["is_active"]) == (
        PUBLIC, agent.id, ["agent.step.*"], {"X-Team": "a"}, True,
    )  # fmt: skip

    assert "secret" not in api.get(f"/api/v1/webhooks/{body['id']}/").json()
    listed = api.get("/api/v1/webhooks/").json()
    assert listed["count"] == 1 and "secret" not in listed["results"][0]
    updated = api.patch(f"/api/v1/webhooks/{body['id']}/", {"description": "x"}, format="json").json()
    assert "secret" not in updated
    assert body["secret"] not in json.dumps(updated)


def test_update_and_delete(api, agent):
    endpoint_id = create(api).json()["id"]
    patched = api.patch(
        f"/api/v1/webhooks/{endpoint_id}/",
        {"agent": agent.id, "event_types": ["agent.run.completed"], "headers": {"X-Env": "prod"}},
        format="json",
    )
    assert patched.status_code == 200
    assert (patched.json()["agent"], patched.json()["event_types"]) == (agent.id, ["agent.run.completed"])
    replaced = api.put(f"/api/v1/webhooks/{endpoint_id}/", {"url": "https://93.184.216.34/v2"}, format="json")
    assert replaced.status_code == 200
    assert replaced.json()["url"] == "https://93.184.216.34/v2"
    assert api.patch(f"/api/v1/webhooks/{endpoint_id}/", {"agent": None}, format="json").json()["agent"] is None
    assert api.delete(f"/api/v1/webhooks/{endpoint_id}/").status_code == 204
    assert not Endpoint.objects.filter(pk=endpoint_id).exists()


def test_deactivating_and_reactivating(api):
    endpoint_id = create(api).json()["id"]
    off = api.patch(f"/api/v1/webhooks/{endpoint_id}/", {"is_active": False}, format="json").json()
    assert off["is_active"] is False
    assert off["disabled_at"] is not None and off["disabled_reason"] == "disabled through the API"
    on = api.patch(f"/api/v1/webhooks/{endpoint_id}/", {"is_active": True}, format="json").json()
    assert on["is_active"] is True
    assert on["disabled_at"] is None and on["disabled_reason"] == ""


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "ftp://93.184.216.34/hook",
        "javascript:alert(1)",
        "http:///nohost",
        "https://user:secret@93.184.216.34/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://0xa9fea9fe/",  # 169.254.169.254 spelled in hex
        "http://[::ffff:10.0.0.1]/hook",
        "http://192.168.1.20:8080/hook",
        "https://93.184.216.34:99999/hook",
        "https://93.184.216.34/hook\r\nX-Injected: 1",
    ],
)
def test_bad_or_unsafe_urls_are_400_on_url(api, url):
    response = create(api, url=url)
    assert response.status_code == 400
    assert list(response.json()) == ["url"]
    assert "secret" not in json.dumps(response.json())
    assert not Endpoint.objects.exists()


def test_changing_the_url_to_an_unsafe_one_is_400(api):
    endpoint_id = create(api).json()["id"]
    response = api.patch(f"/api/v1/webhooks/{endpoint_id}/", {"url": "http://169.254.169.254/"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["url"]
    assert Endpoint.objects.get(pk=endpoint_id).url == PUBLIC


def test_unknown_event_types_are_400_and_point_at_the_catalog(api):
    response = create(api, event_types=["agent.step.completed", "agent.step.done", "nope.*"])
    assert response.status_code == 400
    (message,) = response.json()["event_types"]
    assert "agent.step.done" in message and "nope.*" in message and "/api/v1/event-types/" in message
    assert "agent.step.completed" not in message
    for patterns in (["agent.*"], ["*"], ["webhook.test", "tool.execution.completed"], []):
        assert create(api, event_types=patterns).status_code == 201, patterns
    assert "event_types" in create(api, event_types="agent.step.completed").json()


@pytest.mark.parametrize(
    "name",
    ["Content-Type", "content-length", "Webhook-Signature", "webhook-id", "X-Letta-Signature", "Host", "User-Agent"],
)
def test_headers_that_would_override_ours_are_400(api, name):
    response = create(api, headers={name: "mine"})
    assert response.status_code == 400
    assert list(response.json()) == ["headers"]
    assert "cannot be overridden" in str(response.json()["headers"])


@pytest.mark.parametrize(
    "headers",
    [{"Bad Header": "x"}, {"X-Ok": "line\r\nX-Injected: 1"}, {"X-Ok": {"nested": 1}}, ["X-A"]],
    ids=["space-in-name", "crlf-in-value", "non-string-value", "not-an-object"],
)
def test_malformed_headers_are_400(api, headers):
    response = create(api, headers=headers)
    assert response.status_code == 400
    assert list(response.json()) == ["headers"]


def test_too_many_headers_are_400(api):
    response = create(api, headers={f"X-H{i}": "v" for i in range(21)})
    assert response.status_code == 400
    assert list(response.json()) == ["headers"]


def test_missing_url_and_other_bad_fields_name_themselves(api):
    assert "url" in api.post("/api/v1/webhooks/", {}, format="json").json()
    assert "is_active" in create(api, is_active="sometimes").json()
    assert "description" in create(api, description="x" * 501).json()
    assert "agent" in create(api, agent="agent-nope").json()


# --- the secret: rotation -----------------------------------------------------------------


def test_rotate_secret_returns_a_new_secret_and_the_grace_deadline(api):
    old = create(api).json()
    before = timezone.now()
    response = api.post(f"/api/v1/webhooks/{old['id']}/rotate-secret/")
    assert response.status_code == 200
    body = response.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != old["secret"]
    expires = datetime.datetime.fromisoformat(body["previous_secret_expires_at"])
    assert datetime.timedelta(hours=23, minutes=59) < expires - before < datetime.timedelta(hours=24, minutes=1)
    endpoint = Endpoint.objects.get(pk=old["id"])
    assert endpoint.secret == body["secret"]
    assert len(endpoint.signing_keys()) == 2
    assert "secret" not in api.get(f"/api/v1/webhooks/{old['id']}/").json()


def test_after_rotation_both_secrets_verify_the_same_request(live, api, agent):
    old = create(api, url=live.url("/rotated")).json()
    new = api.post(f"/api/v1/webhooks/{old['id']}/rotate-secret/").json()["secret"]

    sent = api.post(f"/api/v1/webhooks/{old['id']}/test/?wait=15")
    assert sent.status_code == 202
    assert sent.json()["attempt"]["status_code"] == 200
    (request,) = live.wait_for(1, path="/rotated")
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old["secret"]).verify(request.body, request.headers)["event_type"] == "webhook.test"
    assert Webhook(new).verify(request.body, request.headers)["event_type"] == "webhook.test"
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(request.body, request.headers)
    # X-Letta-Signature as well: the current secret's signature first, then the old one's.
    timestamp = int(request.headers["X-Letta-Timestamp"])
    assert request.headers["X-Letta-Signature"] == " ".join(
        signing.letta_signature(signing.secret_key(s), timestamp, request.body) for s in (new, old["secret"])
    )


# --- test-send ---------------------------------------------------------------------------


def test_test_send_without_wait_answers_the_queued_delivery(api):
    endpoint_id = create(api).json()["id"]
    response = api.post(f"/api/v1/webhooks/{endpoint_id}/test/")
    assert response.status_code == 202
    body = response.json()
    assert body["attempt"] is None
    delivery = body["delivery"]
    assert (delivery["webhook"], delivery["event_type"], delivery["status"], delivery["kind"]) == (
        endpoint_id, "webhook.test", "pending", "endpoint",
    )  # fmt: skip
    assert api.get(f"/api/v1/deliveries/{delivery['id']}/").status_code == 200


@pytest.mark.parametrize("wait", ["abc", "-1", "31", "nan", "inf"])
def test_test_send_wait_must_be_0_to_30_seconds(api, wait):
    endpoint_id = create(api).json()["id"]
    response = api.post(f"/api/v1/webhooks/{endpoint_id}/test/?wait={wait}")
    assert response.status_code == 400
    assert list(response.json()) == ["wait"]
    assert not Delivery.objects.exists()


def test_test_send_with_wait_reports_the_first_attempt(live, api, agent):
    live.script("/probe", [Reply(200, body=b'{"ok": true, "note": "hello from the receiver"}')])
    endpoint = create(
        api, url=live.url("/probe"), agent=agent.id, event_types=["agent.step.*"], headers={"X-Team": "blue"}
    )
    endpoint = endpoint.json()

    response = api.post(f"/api/v1/webhooks/{endpoint['id']}/test/?wait=15")
    assert response.status_code == 202
    attempt = response.json()["attempt"]
    assert attempt["number"] == 1
    assert attempt["status_code"] == 200
    assert attempt["duration_ms"] >= 0
    assert attempt["response_body"] == '{"ok": true, "note": "hello from the receiver"}'
    assert attempt["url"] == live.url("/probe")

    (request,) = live.wait_for(1, path="/probe")
    envelope = Webhook(endpoint["secret"]).verify(request.body, request.headers)
    # Sent to this endpoint although it filters on agent.step.* and on one agent.
    assert envelope["event_type"] == "webhook.test"
    assert envelope["data"]["endpoint_id"] == endpoint["id"]
    assert request.headers["X-Team"] == "blue"
    delivery_id = response.json()["delivery"]["id"]
    wait_until(lambda: api.get(f"/api/v1/deliveries/{delivery_id}/").json()["status"] == "succeeded")


def test_test_send_with_wait_reports_a_failing_endpoint(live, api):
    live.script("/down", [Reply(500, body=b"database on fire")])
    endpoint_id = create(api, url=live.url("/down")).json()["id"]
    attempt = api.post(f"/api/v1/webhooks/{endpoint_id}/test/?wait=15").json()["attempt"]
    assert attempt["status_code"] == 500
    assert attempt["response_body"] == "database on fire"


def test_test_send_wait_gives_up_after_the_wait(live, api):
    live.script("/slow", [Reply(200, delay=1.5)])
    endpoint_id = create(api, url=live.url("/slow")).json()["id"]
    body = api.post(f"/api/v1/webhooks/{endpoint_id}/test/?wait=0.2").json()
    assert body["attempt"] is None
    assert body["delivery"]["status"] == "pending"
    wait_until(lambda: api.get(f"/api/v1/deliveries/{body['delivery']['id']}/").json()["status"] == "succeeded")


# --- bulk recovery -----------------------------------------------------------------------


def test_recover_validates_since(api):
    endpoint_id = create(api).json()["id"]
    assert api.post(f"/api/v1/webhooks/{endpoint_id}/recover/", {}, format="json").json().keys() == {"since"}
    response = api.post(f"/api/v1/webhooks/{endpoint_id}/recover/", {"since": "yesterday"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["since"]


def test_recover_counts_failed_and_dead_deliveries_since_then(api, org):
    endpoint = Endpoint.objects.create(organization=org, url=PUBLIC)
    other = Endpoint.objects.create(organization=org, url=PUBLIC)
    now = timezone.now()
    failed = logged_delivery(endpoint, "failed", created_at=now - datetime.timedelta(minutes=5))
    dead = logged_delivery(endpoint, "dead", created_at=now - datetime.timedelta(minutes=4), codes=(503, 503, 503))
    old = logged_delivery(endpoint, "failed", created_at=now - datetime.timedelta(days=2))
    fine = logged_delivery(endpoint, "succeeded", created_at=now - datetime.timedelta(minutes=3), codes=(200,))
    elsewhere = logged_delivery(other, "failed", created_at=now - datetime.timedelta(minutes=5))

    since = (now - datetime.timedelta(hours=1)).isoformat()
    response = api.post(f"/api/v1/webhooks/{endpoint.id}/recover/", {"since": since}, format="json")
    assert response.status_code == 202
    assert response.json() == {"recovered": 2}
    statuses = {d.pk: d.status for d in Delivery.objects.all()}
    assert statuses == {
        failed.pk: "pending",
        dead.pk: "pending",
        old.pk: "failed",
        fine.pk: "succeeded",
        elsewhere.pk: "failed",
    }
    # Already pending: nothing more to recover.
    assert api.post(f"/api/v1/webhooks/{endpoint.id}/recover/", {"since": since}, format="json").json() == {
        "recovered": 0
    }


def test_recover_sends_them_again_through_the_pipeline(live, api, org):
    live.script("/recover", [])  # 200 from now on
    endpoint = Endpoint.objects.create(organization=org, url=live.url("/recover"))
    start = timezone.now() - datetime.timedelta(minutes=1)
    failed = logged_delivery(endpoint, "failed")
    dead = logged_delivery(endpoint, "dead", codes=(503, 503, 503))

    response = api.post(f"/api/v1/webhooks/{endpoint.id}/recover/", {"since": start.isoformat()}, format="json")
    assert response.json() == {"recovered": 2}
    live.wait_for(2, path="/recover")

    def finished():
        rows = {d.pk: d for d in Delivery.objects.filter(pk__in=[failed.pk, dead.pk])}
        return all(d.status == "succeeded" for d in rows.values()) and rows

    rows = wait_until(finished, message="recovered deliveries to succeed")
    assert rows[failed.pk].attempt_count == 2 and rows[dead.pk].attempt_count == 4
    detail = api.get(f"/api/v1/deliveries/{dead.pk}/").json()
    assert [(a["number"], a["status_code"]) for a in detail["attempts"]] == [(1, 503), (2, 503), (3, 503), (4, 200)]


# --- event types -------------------------------------------------------------------------


def test_event_types_catalog(api):
    response = api.get("/api/v1/event-types/")
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()}
    assert set(types) == set(catalog.EVENT_TYPES)
    assert types["agent.step.completed"]["example"]["status"] == "success"
    assert all(t["description"] for t in types.values())
    assert APIClient().get("/api/v1/event-types/").status_code == 401


def test_credential_headers_are_never_shown_back(api):
    created = api.post(
        "/api/v1/webhooks/",
        {"url": PUBLIC, "headers": {"Authorization": "Bearer s3cret", "X-Team": "a"}},
        format="json",
    )
    assert created.status_code == 201
    listed = api.get("/api/v1/webhooks/").json()["results"][0]
    assert listed["headers"] == {"Authorization": "[redacted]", "X-Team": "a"}
    assert "s3cret" not in str(created.json()) and "s3cret" not in str(listed)


def test_test_send_to_a_disabled_endpoint_is_refused(api):
    created = api.post("/api/v1/webhooks/", {"url": PUBLIC, "is_active": False}, format="json").json()
    response = api.post(f"/api/v1/webhooks/{created['id']}/test/")
    assert response.status_code == 409 and "disabled" in response.json()["detail"]


@pytest.mark.parametrize("value", [0, -1, 100_001, "fast"])
def test_a_bad_rate_limit_is_400_on_rate_limit(api, value):
    response = create(api, rate_limit=value)
    assert response.status_code == 400
    assert "rate_limit" in response.json()


def test_rate_limit_is_set_shown_and_cleared(api):
    created = create(api, rate_limit=25).json()
    assert created["rate_limit"] == 25
    url = f"/api/v1/webhooks/{created['id']}/"
    assert api.patch(url, {"rate_limit": None}, format="json").json()["rate_limit"] is None
