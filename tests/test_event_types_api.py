"""An organization's own event types (`/api/v1/event-types/`): registering one (the name rule, the
JSON Schema checked when registered), listing, reading, changing and deleting it, endpoints
subscribing to it, and the admin's page for them."""

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from agents_hooks.models import ApiKey, Organization
from tests.test_admin import add_form
from webhooks import catalog
from webhooks.models import Endpoint, EventType

PUBLIC = "https://93.184.216.34/hook"
INVOICE_SCHEMA = {
    "type": "object",
    "properties": {"invoice_id": {"type": "string"}, "amount": {"type": "number", "minimum": 0}},
    "required": ["invoice_id", "amount"],
}


def nested(levels: int) -> dict:
    schema: dict = {}
    for _ in range(levels - 1):
        schema = {"not": schema}
    return schema


def client_of(org) -> APIClient:
    _, key = ApiKey.issue(org)
    return APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def api(org) -> APIClient:
    return client_of(org)


def register(api, name="billing.invoice.paid", description="An invoice was paid.", **body):
    return api.post("/api/v1/event-types/", {"name": name, "description": description, **body}, format="json")


# --- registering --------------------------------------------------------------------------


def test_register_then_list_read_change_delete(api, org):
    created = register(api, schema=INVOICE_SCHEMA)
    assert created.status_code == 201
    body = created.json()
    assert (body["name"], body["description"], body["schema"], body["built_in"]) == (
        "billing.invoice.paid", "An invoice was paid.", INVOICE_SCHEMA, False,
    )  # fmt: skip
    assert body["created_at"] and body["example"] is None
    assert EventType.objects.get(organization=org).name == "billing.invoice.paid"

    listed = {t["name"]: t for t in api.get("/api/v1/event-types/").json()}
    assert set(listed) == {*catalog.EVENT_TYPES, "billing.invoice.paid"}
    assert listed["billing.invoice.paid"] == body
    assert listed["agent.step.completed"]["built_in"] is True
    assert listed["agent.step.completed"]["example"]["status"] == "success"

    assert api.get("/api/v1/event-types/billing.invoice.paid/").json() == body
    changed = api.patch(
        "/api/v1/event-types/billing.invoice.paid/", {"description": "Paid in full.", "schema": None}, format="json"
    )
    assert changed.status_code == 200
    assert (changed.json()["description"], changed.json()["schema"]) == ("Paid in full.", None)

    assert api.delete("/api/v1/event-types/billing.invoice.paid/").status_code == 204
    missing = api.get("/api/v1/event-types/billing.invoice.paid/")
    assert missing.status_code == 404 and "billing.invoice.paid" in missing.json()["detail"]
    assert not EventType.objects.exists()


def test_a_schema_is_optional(api):
    response = register(api, name="crm.contact.created", description="A contact was created.")
    assert response.status_code == 201 and response.json()["schema"] is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("Billing.Invoice", "lower-case dotted segments"),
        ("billing", "lower-case dotted segments"),
        ("billing..paid", "lower-case dotted segments"),
        ("billing.paid.", "lower-case dotted segments"),
        ("1billing.paid", "lower-case dotted segments"),
        ("billing.invoice-paid", "lower-case dotted segments"),
        ("agent.step.completed", "built-in"),
        ("agent.custom.thing", "reserved"),
        ("tool.mine", "reserved"),
        ("webhook.mine", "reserved"),
        ("endpoint.mine", "reserved"),
        ("delivery.mine", "reserved"),
        ("a." + "b" * 99, "no more than 100 characters"),
    ],
)
def test_names_follow_the_rule(api, name, words):
    response = register(api, name=name)
    assert response.status_code == 400
    assert list(response.json()) == ["name"]
    assert words in response.json()["name"][0]


def test_a_name_is_registered_once_per_organization(api, org):
    assert register(api).status_code == 201
    again = register(api)
    assert again.status_code == 400 and again.json() == {"name": ["billing.invoice.paid is already registered"]}
    other = client_of(Organization.objects.create(name="Other"))
    assert register(other).status_code == 201  # another organization's name space


def test_a_description_is_required(api):
    response = api.post("/api/v1/event-types/", {"name": "billing.invoice.paid"}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["description"]


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "strin"}, "not a valid JSON Schema at /type"),
        ({"properties": {"amount": {"minimum": "zero"}}}, "not a valid JSON Schema at /properties/amount/minimum"),
        ({"required": "amount"}, "not a valid JSON Schema"),
        ([1, 2], "must be a JSON object"),
        ("object", "must be a JSON object"),
        ({"$ref": "https://example.com/schema.json"}, "only references within the schema"),
        ({"$ref": "#/$defs/missing"}, "points at nothing"),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, "only JSON Schema Draft 2020-12"),
        ({"properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}}, "repeats a group"),
        ({"properties": {"code": {"type": "string", "pattern": "^(a|aa)+$"}}}, "repeats a group"),
        ({"properties": {"code": {"type": "string", "pattern": "^(\\w|\\d)*$"}}}, "repeats a group"),
        ({"patternProperties": {"(x*)*": {}}}, "repeats a group"),
        ({"properties": {"code": {"pattern": "(unclosed"}}}, "not a valid JSON Schema"),
        ({"enum": ["x" * 100] * 400}, "bytes as JSON; at most 32768"),
        (nested(34), "nested more than 32"),
    ],
)
def test_an_invalid_schema_is_a_400_saying_what_is_wrong(api, schema, words):
    response = register(api, schema=schema)
    assert response.status_code == 400
    assert list(response.json()) == ["schema"]
    assert words in response.json()["schema"][0], response.json()
    assert not EventType.objects.exists()


def test_a_schema_may_use_local_references(api):
    schema = {"$defs": {"money": {"type": "number", "minimum": 0}}, "properties": {"amount": {"$ref": "#/$defs/money"}}}
    assert register(api, schema=schema).status_code == 201


def test_a_changed_schema_is_checked_too(api):
    register(api)
    response = api.patch("/api/v1/event-types/billing.invoice.paid/", {"schema": {"type": 5}}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["schema"]
    renamed = api.patch("/api/v1/event-types/billing.invoice.paid/", {"name": "billing.invoice.sent"}, format="json")
    assert renamed.status_code == 400 and "cannot be changed" in renamed.json()["name"][0]


# --- built-in types and other organizations ---------------------------------------------------


def test_built_in_types_can_be_read_but_not_changed_or_deleted(api):
    shown = api.get("/api/v1/event-types/agent.step.completed/")
    assert shown.status_code == 200 and shown.json()["built_in"] is True
    for response in (
        api.delete("/api/v1/event-types/agent.step.completed/"),
        api.patch("/api/v1/event-types/agent.step.completed/", {"description": "mine"}, format="json"),
    ):
        assert response.status_code == 405
        assert response.json()["detail"].startswith("agent.step.completed is a built-in event type")
        assert response["Allow"] == "GET, HEAD, OPTIONS"
    assert "agent.step.completed" in catalog.EVENT_TYPES


def test_another_organizations_types_are_not_yours(api):
    other = client_of(Organization.objects.create(name="Other"))
    register(other, name="secret.project.done")
    assert api.get("/api/v1/event-types/secret.project.done/").status_code == 404
    assert api.delete("/api/v1/event-types/secret.project.done/").status_code == 404
    assert "secret.project.done" not in {t["name"] for t in api.get("/api/v1/event-types/").json()}
    refused = api.post("/api/v1/webhooks/", {"url": PUBLIC, "event_types": ["secret.project.done"]}, format="json")
    assert refused.status_code == 400 and "secret.project.done" in refused.json()["event_types"][0]


def test_no_key_no_event_types(db):
    assert APIClient().post("/api/v1/event-types/", {}, format="json").status_code == 401


# --- endpoints subscribe to them ------------------------------------------------------------------


def test_endpoints_subscribe_to_registered_types_and_patterns_over_them(api):
    register(api)
    for patterns in (["billing.invoice.paid"], ["billing.*"], ["billing.invoice.paid", "agent.step.*"]):
        created = api.post("/api/v1/webhooks/", {"url": PUBLIC, "event_types": patterns}, format="json")
        assert created.status_code == 201, created.json()
    refused = api.post("/api/v1/webhooks/", {"url": PUBLIC, "event_types": ["billing.refund.*"]}, format="json")
    assert refused.status_code == 400
    assert "billing.refund.*" in refused.json()["event_types"][0]


# --- admin ----------------------------------------------------------------------------------------


def test_admin_lists_registers_and_refuses_what_the_api_refuses(admin_client, org):
    add = "/admin/webhooks/eventtype/add/"
    bad = {"organization": org.pk, "name": "billing.invoice.paid", "description": "Paid.", "schema": '{"type": 5}'}
    page = admin_client.post(add, bad)
    assert page.status_code == 200 and "not a valid JSON Schema" in page.content.decode()
    reserved = admin_client.post(add, {**bad, "name": "agent.mine", "schema": ""})
    assert "reserved for the service" in reserved.content.decode()
    good = admin_client.post(add, {**bad, "schema": '{"type": "object", "required": ["invoice_id"]}'})
    assert good.status_code == 302
    event_type = EventType.objects.get(organization=org, name="billing.invoice.paid")
    assert event_type.schema == {"type": "object", "required": ["invoice_id"]}

    listing = admin_client.get("/admin/webhooks/eventtype/").content.decode()
    assert "billing.invoice.paid" in listing and "Acme" in listing
    change = admin_client.get(f"/admin/webhooks/eventtype/{event_type.pk}/change/").content.decode()
    assert '"required": [\n    "invoice_id"' in change.replace("&quot;", '"')  # indented to be edited


def test_the_endpoint_list_filters_by_a_registered_type(api):
    register(api)
    listening = api.post(
        "/api/v1/webhooks/", {"url": "http://127.0.0.1:9/a", "event_types": ["billing.*"]}, format="json"
    )
    api.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/b", "event_types": ["agent.step.*"]}, format="json")
    found = api.get("/api/v1/webhooks/", {"event_type": "billing.invoice.paid"}).json()["results"]
    assert [e["id"] for e in found] == [listening.json()["id"]]
    refused = api.get("/api/v1/webhooks/", {"event_type": "billing.invoice.refunded"})
    assert refused.status_code == 400 and "unknown event type" in refused.json()["event_type"][0]


def test_an_endpoint_added_in_the_admin_may_subscribe_to_a_registered_type(api, admin_client, org):
    register(api)
    response = admin_client.post(reverse("admin:webhooks_endpoint_add"), add_form(org, event_types="billing.*"))
    assert response.status_code == 302
    assert Endpoint.objects.get(description="made in the admin").event_types == ["billing.*"]
