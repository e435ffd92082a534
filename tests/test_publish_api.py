"""Publishing over HTTP (`POST /api/v1/events/`): an event of a type the organization registered
is checked against its schema, signed and delivered by the real worker to a real receiver; an
`Idempotency-Key` makes a retry answer the first event (200), concurrent retries included; the
payload limits hold (413) and nothing is published when anything is refused."""

import datetime
import json
import threading
import time

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook

from agents_hooks.models import Agent, ApiKey, Organization
from deliveries import publishing, recovery
from deliveries.models import Event, PublishIdempotencyKey
from webhooks import event_types

SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_id": {"type": "string"},
        "amount": {"type": "number", "minimum": 0},
        "lines": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
    },
    "required": ["invoice_id", "amount"],
}
PAID = {"event_type": "billing.invoice.paid", "data": {"invoice_id": "inv_1", "amount": 42}}


def client_of(org) -> APIClient:
    _, key = ApiKey.issue(org)
    return APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def api(org) -> APIClient:
    event_types.register(org, name="billing.invoice.paid", description="An invoice was paid.", schema=SCHEMA)
    return client_of(org)


def publish(api, body=PAID, key=None):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return api.post("/api/v1/events/", body, format="json", **headers)


# --- publishing and delivery ----------------------------------------------------------------------


def test_a_published_event_is_signed_and_delivered_to_subscribed_endpoints(live, api, agent):
    endpoint = api.post(
        "/api/v1/webhooks/", {"url": live.url("/billing"), "event_types": ["billing.*"]}, format="json"
    ).json()
    api.post("/api/v1/webhooks/", {"url": live.url("/steps"), "event_types": ["agent.step.*"]}, format="json")

    response = publish(api, {**PAID, "agent": agent.id})
    assert response.status_code == 201
    event = response.json()
    assert event["id"].startswith("evt_") and event["event_type"] == "billing.invoice.paid"
    assert event["agent"] == agent.id and event["created_at"]
    assert event["payload"]["data"] == PAID["data"]
    assert api.get(f"/api/v1/events/{event['id']}/").json() == event

    (request,) = live.wait_for(1, path="/billing")
    sent = Webhook(endpoint["secret"]).verify(request.body, request.headers)
    assert sent == event["payload"]
    assert (sent["event_id"], sent["agent_id"]) == (event["id"], agent.id)
    assert sent["organization_id"] == agent.organization_id
    assert request.headers["X-Letta-Event-Type"] == "billing.invoice.paid"
    time.sleep(0.5)
    assert live.received("/steps") == []  # not subscribed to it


def test_an_endpoint_with_no_filter_gets_registered_events_too(live, api):
    api.post("/api/v1/webhooks/", {"url": live.url("/all")}, format="json")
    assert publish(api).status_code == 201
    (request,) = live.wait_for(1, path="/all")
    assert json.loads(request.body)["event_type"] == "billing.invoice.paid"


# --- what is refused --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        ({"invoice_id": "inv_1", "amount": -5}, ["$.amount: -5 is less than the minimum of 0"]),
        ({"amount": 1}, ["$: 'invoice_id' is a required property"]),
        (
            {"invoice_id": 7, "amount": 1, "lines": [{"sku": "a"}, {}]},
            ["$.invoice_id: 7 is not of type 'string'", "$.lines[1]: 'sku' is a required property"],
        ),
    ],
)
def test_data_failing_the_schema_is_a_400_naming_the_path(api, data, errors):
    response = publish(api, {"event_type": "billing.invoice.paid", "data": data})
    assert response.status_code == 400
    assert sorted(response.json()["data"]) == sorted(errors)
    assert not Event.objects.exists()


def test_data_must_be_a_json_object(api):
    for data in ([1, 2], "text", None):
        response = publish(api, {"event_type": "billing.invoice.paid", "data": data})
        assert response.status_code == 400 and list(response.json()) == ["data"], data
    huge = publish(api, {"event_type": "billing.invoice.paid", "data": {"invoice_id": "i", "amount": 2**70}})
    assert huge.status_code == 400 and "cannot be sent in a webhook event" in huge.json()["data"][0]


def test_without_a_schema_any_object_goes(org):
    event_types.register(org, name="crm.contact.created", description="A contact was created.")
    response = publish(client_of(org), {"event_type": "crm.contact.created", "data": {"anything": [1, {"x": None}]}})
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("event_type", "words"),
    [
        ("billing.invoice.sent", "is not an event type of your organization: register it first"),
        ("agent.step.completed", "is a built-in event type: the platform publishes it itself"),
        ("webhook.test", "is a built-in event type"),
    ],
)
def test_only_the_organizations_registered_types_can_be_published(api, event_type, words):
    response = publish(api, {**PAID, "event_type": event_type})
    assert response.status_code == 400
    assert list(response.json()) == ["event_type"] and words in response.json()["event_type"][0]
    assert not Event.objects.exists()


def test_another_organizations_type_or_agent_is_refused(api, org):
    other = Organization.objects.create(name="Other")
    event_types.register(other, name="other.thing.happened", description="Theirs.")
    theirs = publish(api, {"event_type": "other.thing.happened", "data": {}})
    assert theirs.status_code == 400 and list(theirs.json()) == ["event_type"]
    stranger = Agent.objects.create(organization=other, name="not yours")
    response = publish(api, {**PAID, "agent": stranger.id})
    assert response.status_code == 400 and list(response.json()) == ["agent"]
    assert not Event.objects.exists()


def test_an_event_over_the_payload_limit_is_a_413_before_anything_is_published(api, settings):
    settings.WEBHOOK_MAX_PAYLOAD_BYTES = 2048
    big = {"event_type": "billing.invoice.paid", "data": {"invoice_id": "x" * 3000, "amount": 1}}
    response = publish(api, big, key="big-1")
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "over the limit of 2048 bytes (WEBHOOK_MAX_PAYLOAD_BYTES)" in detail
    assert not Event.objects.exists() and not PublishIdempotencyKey.objects.exists()
    # Nothing was kept under the key: the same key with less data publishes.
    assert publish(api, PAID, key="big-1").status_code == 201


def test_a_request_body_over_the_api_limit_is_a_413(api, settings):
    settings.API_MAX_BODY_BYTES = 1024
    body = {"event_type": "billing.invoice.paid", "data": {"invoice_id": "x" * 2000, "amount": 1}}
    response = publish(api, body)
    assert response.status_code == 413 and "API_MAX_BODY_BYTES" in response.json()["detail"]
    assert not Event.objects.exists()


def test_an_event_that_could_not_be_recorded_is_a_503_and_keeps_no_key(api, monkeypatch):
    monkeypatch.setattr(publishing, "publish", lambda *args, **kwargs: None)  # publish logs, returns None
    response = publish(api, key="k-503")
    assert response.status_code == 503
    assert "nothing was published" in response.json()["detail"]
    assert not PublishIdempotencyKey.objects.exists()
    monkeypatch.undo()
    assert publish(api, key="k-503").status_code == 201


def test_no_key_no_publishing(db):
    assert APIClient().post("/api/v1/events/", PAID, format="json").status_code == 401


# --- Idempotency-Key --------------------------------------------------------------------------------


def test_a_retry_with_the_same_key_answers_the_first_event(api):
    first = publish(api, key="order-7-paid")
    assert first.status_code == 201
    reordered = {"data": {"amount": 42, "invoice_id": "inv_1"}, "event_type": "billing.invoice.paid"}
    again = publish(api, reordered, key="order-7-paid")
    assert again.status_code == 200
    assert again.json() == first.json()
    assert Event.objects.count() == 1
    # Even after the type's schema changed: the retry gets the first answer, not a new check.
    api.patch("/api/v1/event-types/billing.invoice.paid/", {"schema": {"required": ["other"]}}, format="json")
    assert publish(api, key="order-7-paid").json()["id"] == first.json()["id"]


def test_the_same_key_with_another_body_is_a_409(api):
    first = publish(api, key="order-8")
    other = publish(api, {**PAID, "data": {"invoice_id": "inv_2", "amount": 1}}, key="order-8")
    assert other.status_code == 409
    assert "different body" in other.json()["detail"] and "order-8" in other.json()["detail"]
    assert list(Event.objects.values_list("id", flat=True)) == [first.json()["id"]]


def test_keys_are_per_organization_and_without_one_every_post_publishes(api):
    other = Organization.objects.create(name="Other")
    event_types.register(other, name="billing.invoice.paid", description="Theirs.")
    assert publish(api, key="shared").status_code == 201
    assert publish(client_of(other), key="shared").status_code == 201
    assert publish(api).status_code == 201 and publish(api).status_code == 201
    assert Event.objects.count() == 4


def test_a_refused_request_does_not_use_up_its_key(api):
    bad = publish(api, {**PAID, "data": {"invoice_id": "inv_1", "amount": -1}}, key="k-400")
    assert bad.status_code == 400
    assert publish(api, key="k-400").status_code == 201


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_a_400_naming_the_header(api, key):
    response = api.post("/api/v1/events/", PAID, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert response.status_code == 400
    assert list(response.json()) == ["Idempotency-Key"]
    assert "1 to 255 printable ASCII characters" in response.json()["Idempotency-Key"][0]
    assert publish(api, key="x" * 255).status_code == 201


def test_a_key_lasts_24_hours_then_publishes_afresh_and_is_purged(api, org):
    first = publish(api, key="daily").json()
    PublishIdempotencyKey.objects.update(created_at=timezone.now() - datetime.timedelta(hours=25))
    again = publish(api, {**PAID, "data": {"invoice_id": "inv_9", "amount": 9}}, key="daily")
    assert again.status_code == 201 and again.json()["id"] != first["id"]

    publish(api, key="old")
    PublishIdempotencyKey.objects.filter(key="old").update(created_at=timezone.now() - datetime.timedelta(hours=25))
    assert recovery.purge_idempotency_keys() == 1
    assert list(PublishIdempotencyKey.objects.values_list("key", flat=True)) == ["daily"]
    beat = django_settings.CELERY_BEAT_SCHEDULE.values()
    assert {"task": "deliveries.tasks.purge_idempotency_keys", "schedule": 3600.0} in beat


def test_concurrent_retries_with_one_key_publish_one_event(transactional_db, monkeypatch):
    """Eight requests at once with one key, each on its own PostgreSQL connection; the first to
    claim the key holds it for a while (a slow publish), so the others are all in flight."""
    org = Organization.objects.create(name="Racing")
    event_types.register(org, name="billing.invoice.paid", description="Paid.", schema=SCHEMA)
    _, key = ApiKey.issue(org)
    publish_now = publishing.publish

    def slow_publish(*args, **kwargs):
        time.sleep(0.5)
        return publish_now(*args, **kwargs)

    claim, claims = publishing._claim, []

    def counted_claim(*args, **kwargs):
        record, fresh = claim(*args, **kwargs)
        claims.append(fresh)
        return record, fresh

    monkeypatch.setattr(publishing, "publish", slow_publish)
    monkeypatch.setattr(publishing, "_claim", counted_claim)
    start, answers = threading.Barrier(8), []

    def request():
        try:
            start.wait()
            client = APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")
            answers.append(publish(client, key="same-key"))
        finally:
            connection.close()

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    # They raced for the key itself (not only the cheap look-up first): one claimed it, the
    # others waited for it on the unique index and answered its event.
    assert claims.count(True) == 1 and claims.count(False) >= 2, claims
    assert Event.objects.filter(organization=org).count() == 1
    assert PublishIdempotencyKey.objects.filter(organization=org).count() == 1
