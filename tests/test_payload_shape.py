"""Per-endpoint payload shape (issue 16): an endpoint may receive the whole envelope, the
envelope without some fields of its `data` (`exclude_fields`), or a thin envelope (ids only,
and `links.event`). A real worker POSTs each shape to a real receiver, signed over the bytes
sent; the thin link answers the whole event to the organization's key and 404 to another's;
the pull feed hands out the same shape; bad input is a 400 (and an admin form error) naming the
field and the path; an endpoint without a shape pays nothing for the feature.
"""

import json
from types import SimpleNamespace

import orjson
import pytest
from django.contrib.admin.utils import quote
from django.db import transaction
from django.urls import reverse
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook

from agents_hooks.models import ApiKey, Organization
from deliveries import compose
from deliveries.events import publish
from deliveries.models import Delivery, DeliveryKind, Event
from tests.support import wait_until
from webhooks import payload_shape
from webhooks import receiver as kit
from webhooks.models import Endpoint

MESSAGE = {
    "message_id": "message-3e1f",
    "role": "user",
    "content": "my card number is 4111 1111 1111 1111",
    "step_id": "step-6f1c",
    "usage": {"prompt_tokens": 12, "total_tokens": 20},
    "tool_calls": [{"name": "lookup", "arguments": '{"q": "secret"}'}, {"name": "noop"}],
}
REDACTED = ["content", "usage.total_tokens", "tool_calls.arguments"]


def create(api, **fields) -> dict:
    response = api.post("/api/v1/webhooks/", fields, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def publish_message(org, agent=None) -> Event:
    with transaction.atomic():
        return publish("agent.message.sent", organization=org, agent=agent, data=MESSAGE)


def verified(endpoint: dict, request) -> dict:
    """The envelope of a POST received, after both signatures were checked over its exact bytes:
    Standard Webhooks' own library, and the receivers' kit (which checks X-Letta-Signature too)."""
    envelope = Webhook(endpoint["secret"]).verify(request.body, request.headers)
    letta = kit.Receiver(endpoint["secret"], styles=[kit.LETTA]).verify(request.body, request.headers)
    assert letta.payload == envelope
    return envelope


# --- delivery --------------------------------------------------------------------------------


def test_redacted_and_thin_payloads_arrive_as_configured_and_verify(live, api, org, agent):
    full = create(api, url=live.url("/full"))
    redacted = create(api, url=live.url("/redacted"), exclude_fields=REDACTED)
    thin = create(api, url=live.url("/thin"), payload="thin")
    assert (redacted["payload"], redacted["exclude_fields"]) == ("full", REDACTED)
    assert (thin["payload"], thin["exclude_fields"]) == ("thin", [])

    event = publish_message(org, agent)
    wait_until(lambda: all(live.received(p) for p in ("/full", "/redacted", "/thin")), message="three POSTs")
    (to_full,), (to_redacted,), (to_thin,) = (live.received(p) for p in ("/full", "/redacted", "/thin"))

    # Full: the envelope as recorded, byte for byte.
    assert to_full.body == event.body.encode()
    whole = verified(full, to_full)
    assert whole["data"] == MESSAGE

    # Redacted: the same envelope without the excluded fields, in every item of a list too.
    assert b"4111" not in to_redacted.body and b"secret" not in to_redacted.body
    envelope = verified(redacted, to_redacted)
    assert {k: v for k, v in envelope.items() if k != "data"} == {k: v for k, v in whole.items() if k != "data"}
    assert envelope["data"] == {
        "message_id": "message-3e1f",
        "role": "user",
        "step_id": "step-6f1c",
        "usage": {"prompt_tokens": 12},
        "tool_calls": [{"name": "lookup"}, {"name": "noop"}],
    }
    assert len(to_redacted.body) < len(to_full.body)

    # Thin: every top-level field, only the ids in data, and where to fetch the rest.
    envelope = verified(thin, to_thin)
    assert envelope == {
        **{k: v for k, v in whole.items() if k != "data"},
        "data": {"message_id": "message-3e1f", "step_id": "step-6f1c"},
        "links": {"event": f"/api/v1/events/{event.pk}/"},
    }
    assert to_thin.headers["webhook-id"] == event.pk
    # The log records each delivery as succeeded; the event itself is kept whole.
    wait_until(lambda: Delivery.objects.filter(event=event, status="succeeded").count() == 3, message="logged")
    assert json.loads(Event.objects.get(pk=event.pk).body)["data"] == MESSAGE


def test_a_thin_link_fetches_the_whole_event_only_with_the_right_key(db, api, org, agent):
    event = publish_message(org, agent)
    envelope = orjson.loads(payload_shape.shaped_body(event.body, "thin", []))
    link = envelope["links"]["event"]
    assert link == reverse("event-detail", args=[event.pk])  # the path is the API's own

    mine = api.get(link)
    assert mine.status_code == 200
    assert mine.json()["payload"] == json.loads(event.body)
    assert mine.json()["payload"]["data"]["content"] == MESSAGE["content"]

    other = Organization.objects.create(name="Other")
    theirs = APIClient(HTTP_AUTHORIZATION=f"Bearer {ApiKey.issue(other)[1]}").get(link)
    assert theirs.status_code == 404
    assert "4111" not in theirs.content.decode()
    assert APIClient().get(link).status_code in (401, 403)


@pytest.mark.django_db(transaction=True)
def test_the_pull_feed_hands_out_the_endpoint_s_shape_signed(api, org):
    pull = create(api, kind="pull", event_types=["agent.message.sent"], exclude_fields=["content"], payload="thin")
    plain = create(api, kind="pull", event_types=["agent.message.sent"])
    event = publish_message(org)

    def feed_of(endpoint: dict) -> dict:
        answer = api.get("/api/v1/events/feed/", {"endpoint": endpoint["id"], "wait": 5}).json()
        return answer["events"] and answer["events"][0]

    shaped = wait_until(lambda: feed_of(pull), message="the thin feed")
    envelope = Webhook(pull["secret"]).verify(shaped["body"], shaped["headers"])
    assert envelope["data"] == {"message_id": "message-3e1f", "step_id": "step-6f1c"}
    assert envelope["links"] == {"event": f"/api/v1/events/{event.pk}/"}

    whole = wait_until(lambda: feed_of(plain), message="the plain feed")
    assert whole["body"] == event.body  # untouched
    assert Webhook(plain["secret"]).verify(whole["body"], whole["headers"])["data"] == MESSAGE


# --- the API, the admin and the CLI -----------------------------------------------------------


def test_the_shape_is_set_changed_and_shown(api):
    endpoint = create(api, url="https://93.184.216.34/hook")
    assert (endpoint["payload"], endpoint["exclude_fields"]) == ("full", [])

    changed = api.patch(
        f"/api/v1/webhooks/{endpoint['id']}/",
        {"payload": "thin", "exclude_fields": ["content", "usage.total_tokens", "content"]},
        format="json",
    )
    assert changed.status_code == 200, changed.json()
    assert changed.json()["payload"] == "thin"
    assert changed.json()["exclude_fields"] == ["content", "usage.total_tokens"]  # each once
    stored = Endpoint.objects.get(pk=endpoint["id"])
    assert (stored.payload, stored.exclude_fields) == ("thin", ["content", "usage.total_tokens"])

    # A path no event has yet is kept: data differs between types, and organizations add their own.
    changed = api.patch(f"/api/v1/webhooks/{endpoint['id']}/", {"exclude_fields": ["invoice.card"]}, format="json")
    assert changed.status_code == 200 and changed.json()["exclude_fields"] == ["invoice.card"]


@pytest.mark.parametrize(
    "fields, name, words",
    [
        ({"exclude_fields": ["usage..total_tokens"]}, "exclude_fields", ["'usage..total_tokens'", "empty segment"]),
        ({"exclude_fields": ["content", ""]}, "exclude_fields", ["''", "is empty"]),
        ({"exclude_fields": ["data.content"]}, "exclude_fields", ["'data.content'", "write 'content'"]),
        ({"exclude_fields": ["usage.total tokens"]}, "exclude_fields", ["'usage.total tokens'", "space"]),
        ({"exclude_fields": ["x" * 201]}, "exclude_fields", ["at most 200 characters"]),
        ({"exclude_fields": [f"f{i}" for i in range(51)]}, "exclude_fields", ["at most 50 paths"]),
        ({"exclude_fields": "content"}, "exclude_fields", ["list"]),
        ({"payload": "skinny"}, "payload", ['"skinny" is not a valid choice']),
    ],
)
def test_bad_shape_input_is_a_400_naming_the_field_and_path(api, fields, name, words):
    response = api.post("/api/v1/webhooks/", {"url": "https://93.184.216.34/hook", **fields}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == [name]
    message = " ".join(map(str, response.json()[name]))
    for word in words:
        assert word in message, message
    assert not Endpoint.objects.exists()


def test_a_bad_path_on_update_changes_nothing(api, make_endpoint):
    endpoint = make_endpoint(exclude_fields=["content"])
    response = api.patch(f"/api/v1/webhooks/{endpoint.pk}/", {"exclude_fields": ["a.", "b"]}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "exclude_fields": ["'a.': has an empty segment (dotted names inside data: 'usage.total_tokens')"]
    }
    endpoint.refresh_from_db()
    assert endpoint.exclude_fields == ["content"]


def test_the_schema_documents_the_shape(api):
    schema = api.get("/api/schema/", {"format": "json"}).json()
    fields = schema["components"]["schemas"]["Endpoint"]["properties"]
    assert fields["exclude_fields"]["example"] == ["content", "usage.total_tokens"]
    assert fields["exclude_fields"]["maxItems"] == payload_shape.MAX_PATHS
    assert "links" in fields["payload"]["description"]


def change_url(pk) -> str:
    return reverse("admin:webhooks_endpoint_change", args=[quote(pk)])  # ids hold "_", the admin's escape


def form_data(endpoint, **fields) -> dict:
    return {"url": endpoint.url, "agent": "", "description": "", "event_types": "", "headers": "",
            "rate_limit": "", "retry_schedule": "", "is_active": "on", **fields}  # fmt: skip


def test_the_admin_form_sets_the_shape_with_the_api_s_rules(admin_client, make_endpoint):
    endpoint = make_endpoint()
    page = admin_client.get(change_url(endpoint.pk)).content.decode()
    assert 'name="payload"' in page and 'name="exclude_fields"' in page and "Excluded fields" in page

    typed = "content\nusage.total_tokens\n"
    response = admin_client.post(change_url(endpoint.pk), form_data(endpoint, payload="thin", exclude_fields=typed))
    assert response.status_code == 302, response.context["adminform"].form.errors
    endpoint.refresh_from_db()
    assert (endpoint.payload, endpoint.exclude_fields) == ("thin", ["content", "usage.total_tokens"])
    assert "usage.total_tokens" in admin_client.get(change_url(endpoint.pk)).content.decode()
    listing = admin_client.get(reverse("admin:webhooks_endpoint_changelist")).content.decode()
    assert 'class="quiet shaped" title="only ids in data, without content, usage.total_tokens">thin<' in listing

    # A form posted without the payload (a script's) keeps it.
    response = admin_client.post(change_url(endpoint.pk), form_data(endpoint, exclude_fields="content"))
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.payload, endpoint.exclude_fields) == ("thin", ["content"])

    response = admin_client.post(change_url(endpoint.pk), form_data(endpoint, exclude_fields="data.content"))
    assert response.status_code == 200
    (message,) = response.context["adminform"].form.errors["exclude_fields"]
    assert message == "'data.content': paths start inside data: write 'content'"
    endpoint.refresh_from_db()
    assert endpoint.exclude_fields == ["content"]


def test_the_cli_shows_the_shape(db, make_endpoint):
    from tests.test_cli import webhooks

    endpoint = make_endpoint(payload="thin", exclude_fields=["content", "usage.total_tokens"])
    shown = webhooks("endpoints", "show", endpoint.pk)
    assert shown.code == 0, shown
    assert "thin, without content, usage.total_tokens" in shown.out
    as_json = webhooks("endpoints", "show", endpoint.pk, "--json").json()
    assert (as_json["payload"], as_json["exclude_fields"]) == ("thin", ["content", "usage.total_tokens"])


# --- the shaping itself ------------------------------------------------------------------------


def test_shaping_never_changes_the_envelope_and_passes_over_what_is_absent():
    envelope = {"event_id": "evt_1", "event_type": "agent.message.sent", "data": json.loads(json.dumps(MESSAGE))}
    before = json.dumps(envelope)
    shaped = payload_shape.shape(envelope, "full", ["usage.total_tokens", "missing.path", "role.deeper"])
    assert json.dumps(envelope) == before  # shared by a batch's endpoints: never changed in place
    assert shaped["data"]["usage"] == {"prompt_tokens": 12}
    assert shaped["data"]["tool_calls"] is envelope["data"]["tool_calls"]  # only the path is copied
    assert payload_shape.shape(envelope, "full", ["nothing.here"])["data"] is envelope["data"]
    # The ids of a thin envelope: `id` and `…_id`, short ones, after the exclusions.
    assert payload_shape.shape(
        {"event_id": "evt_2", "data": {"id": 7, "run_id": "r" * 201, "step_id": None, "note_id": {"x": 1}}},
        "thin",
        ["id"],
    )["data"] == {"step_id": None}


def test_an_endpoint_without_a_shape_pays_nothing_and_a_batch_parses_once(db, org, monkeypatch):
    event = publish("agent.message.sent", organization=org, data=MESSAGE)
    plain = [Endpoint.objects.create(organization=org, url=f"https://93.184.216.34/{i}") for i in range(3)]
    shaped = [
        Endpoint.objects.create(organization=org, url=f"https://93.184.216.34/s{i}", exclude_fields=REDACTED)
        for i in range(5)
    ] + [Endpoint.objects.create(organization=org, url="https://93.184.216.34/t", payload="thin")]
    parsed = []
    counting = SimpleNamespace(loads=lambda text: parsed.append(1) or orjson.loads(text))
    monkeypatch.setattr(compose, "orjson", counting)  # compose's parses, no one else's

    cache: dict = {}
    bodies = [
        compose.build(Delivery(event=event, endpoint=e, kind=DeliveryKind.ENDPOINT), 1_700_000_000, cache).body
        for e in plain + shaped
    ]
    assert parsed == [1]  # one parse for the nine deliveries of the event
    assert bodies[:3] == [event.body.encode()] * 3
    assert len(set(bodies[3:8])) == 1 and b"4111" not in bodies[3]
    assert orjson.loads(bodies[8])["links"] == {"event": f"/api/v1/events/{event.pk}/"}

    fresh: dict = {}
    compose.build(Delivery(event=event, endpoint=plain[0], kind=DeliveryKind.ENDPOINT), 1_700_000_000, fresh)
    assert list(fresh) == [plain[0].pk]  # its keys, and nothing cached for a body it did not shape
