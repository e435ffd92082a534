"""Content filters: an endpoint receives, of the events its types take, only those whose envelope
passes its `filter`. A real worker delivers to a real receiver only the passing events; bad
filters are 400s (and admin form errors) naming the bad part; test-filter says whether a sample
passes and, if not, which part failed and why; fan-out filters without a query per event.
"""

import json

import pytest
from django.contrib.admin.utils import quote
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from deliveries.events import publish
from deliveries.fanout import fan_out
from deliveries.models import Delivery, Event
from tests.support import wait_until
from webhooks import content_filter
from webhooks.models import Endpoint

PUBLIC = "https://93.184.216.34/hook"  # a public address literal: valid without DNS
FAILED_OR_CANCELLED = {"path": "data.status", "in": ["failed", "cancelled"]}
BIG_USAGE = {"path": "data.usage.total_tokens", "gt": 10000}


def step_event(org, agent, status="success", tokens=42, error=None) -> Event:
    data = {"step_id": f"step-{status}-{tokens}", "status": status, "usage": {"total_tokens": tokens}, "error": error}
    return publish("agent.step.completed", organization=org, agent=agent, data=data)


def change_url(pk) -> str:
    return reverse("admin:webhooks_endpoint_change", args=[quote(pk)])  # ids hold "_", the admin's escape


# --- delivery -------------------------------------------------------------------------------


def test_the_worker_delivers_only_the_events_that_pass(live, org, agent, make_endpoint):
    failures = make_endpoint("/failures", filter=FAILED_OR_CANCELLED)
    big = make_endpoint("/big", filter={"and": [BIG_USAGE, {"not": {"path": "data.error", "exists": True}}]})
    everything = make_endpoint("/all")

    ok = step_event(org, agent)
    failed = step_event(org, agent, status="failed", error="tool call timed out")
    large = step_event(org, agent, tokens=20_000)
    large_failed = step_event(org, agent, status="cancelled", tokens=50_000, error="cancelled by user")

    everything_got = live.wait_for(4, "/all")
    assert {json.loads(r.body)["event_id"] for r in everything_got} == {ok.pk, failed.pk, large.pk, large_failed.pk}
    wait_until(lambda: len(live.received("/failures")) == 2 and len(live.received("/big")) == 1, message="filtered")
    assert {json.loads(r.body)["event_id"] for r in live.received("/failures")} == {failed.pk, large_failed.pk}
    assert [json.loads(r.body)["event_id"] for r in live.received("/big")] == [large.pk]
    # A filtered-out event is no delivery at all: nothing in the endpoint's log.
    assert Delivery.objects.filter(endpoint=failures).count() == 2
    assert Delivery.objects.filter(endpoint=big).count() == 1
    assert Delivery.objects.filter(endpoint=everything).count() == 4


def test_filters_see_the_whole_envelope(db, org, agent, make_endpoint):
    by_agent = make_endpoint("/a", filter={"path": "agent_id", "eq": agent.id})
    by_type = make_endpoint("/t", filter={"path": "event_type", "in": ["agent.step.failed"]})
    by_index = make_endpoint("/i", filter={"path": "data.items.1.name", "eq": "b"})
    event = publish(
        "agent.step.completed", organization=org, agent=agent, data={"items": [{"name": "a"}, {"name": "b"}]}
    )
    fan_out([event.pk])
    # by_type wants another event_type than the envelope's: nothing for it.
    assert set(Delivery.objects.values_list("endpoint_id", flat=True)) == {by_agent.pk, by_index.pk}
    assert not Delivery.objects.filter(endpoint=by_type).exists()


def test_fan_out_filters_without_a_query_per_event(db, org, agent, make_endpoint):
    for i in range(5):
        make_endpoint(f"/f{i}", filter={"or": [FAILED_OR_CANCELLED, BIG_USAGE]})
    make_endpoint("/plain")

    def queries_for(events: int) -> int:
        ids = [step_event(org, agent, status="failed" if i % 2 else "success").pk for i in range(events)]
        with CaptureQueriesContext(connection) as queries:
            fan_out(ids)
        return len(queries)

    assert queries_for(1) == queries_for(20)
    assert Delivery.objects.count() == 1 + 20 + 10 * 5  # the plain one all, the filtered ones the failed


def test_an_oversize_event_is_not_filtered_its_endpoints_hear_why(db, org, agent, make_endpoint, settings):
    settings.WEBHOOK_MAX_PAYLOAD_BYTES = 2000
    filtered = make_endpoint(filter=FAILED_OR_CANCELLED)
    event = publish(
        "agent.step.completed", organization=org, agent=agent, data={"status": "success", "error": "x" * 5000}
    )
    assert event.oversize_bytes
    fan_out([event.pk])
    delivery = Delivery.objects.get(endpoint=filtered)
    assert delivery.status == "failed" and delivery.last_error.startswith("payload too large")


def test_a_test_event_reaches_a_filtered_endpoint(db, org, make_endpoint):
    endpoint = make_endpoint(filter={"path": "data.status", "eq": "never"})
    event = publish("webhook.test", organization=org, data={"message": "hello"}, endpoint=endpoint)
    assert [d.endpoint_id for d in fan_out([event.pk])] == [endpoint.pk]


def test_an_invalid_stored_filter_is_ignored_not_fatal(db, org, agent, make_endpoint, caplog):
    # Only code or SQL around the API can store one: its events are delivered, and the log says why.
    endpoint = make_endpoint(filter={"path": "data.status", "gt": "x"})
    fan_out([step_event(org, agent).pk])
    assert Delivery.objects.filter(endpoint=endpoint).count() == 1
    assert f"endpoint {endpoint.pk}: invalid content filter ignored (gt: expects a number, got 'x')" in caplog.text


# --- the API: create, update, 400s ------------------------------------------------------------


def test_create_and_change_a_filter(api):
    response = api.post("/api/v1/webhooks/", {"url": PUBLIC, "filter": FAILED_OR_CANCELLED}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["filter"] == FAILED_OR_CANCELLED
    endpoint_id = response.json()["id"]
    assert Endpoint.objects.get(pk=endpoint_id).filter == FAILED_OR_CANCELLED

    changed = api.patch(f"/api/v1/webhooks/{endpoint_id}/", {"filter": {"and": [BIG_USAGE]}}, format="json")
    assert changed.status_code == 200 and changed.json()["filter"] == {"and": [BIG_USAGE]}
    cleared = api.patch(f"/api/v1/webhooks/{endpoint_id}/", {"filter": None}, format="json")
    assert cleared.status_code == 200 and cleared.json()["filter"] is None
    assert api.get(f"/api/v1/webhooks/{endpoint_id}/").json()["filter"] is None
    plain = api.post("/api/v1/webhooks/", {"url": PUBLIC}, format="json").json()
    assert plain["filter"] is None


DEEP = {"path": "data.x", "eq": 1}
for _ in range(8):
    DEEP = {"not": DEEP}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"and": [FAILED_OR_CANCELLED, {"path": "data.x", "gt": "x"}]}, "and[1].gt: expects a number, got 'x'"),
        ({"path": "data.status", "equals": "failed"}, "equals: unknown operator; use path with eq, in, gt, gte"),
        ({"or": [{"path": "a", "eq": 1}, {"path": "b", "like": "x"}]}, "or[1].like: unknown operator"),
        ({"path": "data.status", "in": "failed"}, "in: expects a non-empty list of strings, numbers, booleans or null"),
        (
            {"path": "data.status", "in": []},
            "in: expects a non-empty list of strings, numbers, booleans or null, got an empty list",
        ),
        (
            {"path": "data.status", "in": ["ok", {"a": 1}]},
            "in[1]: expects a string, number, boolean or null, got an object",
        ),
        ({"path": "data.n", "gte": True}, "gte: expects a number, got true"),
        ({"path": "data.n", "eq": [1]}, "eq: expects a string, number, boolean or null, got a list"),
        ({"path": "data.error", "exists": "yes"}, "exists: expects true or false, got 'yes'"),
        ({"path": "data.status"}, "no operator for path 'data.status': add eq, in, gt, gte, lt, lte or exists"),
        ({"eq": "failed"}, 'eq: needs a "path" to compare'),
        ({"path": 3, "eq": 1}, "path: expects a dotted path such as 'data.status', got 3"),
        ({"path": "data..status", "eq": 1}, "path: 'data..status' has an empty segment"),
        ({"and": []}, "and: expects a non-empty list of conditions, got an empty list"),
        ({"and": {"path": "a", "eq": 1}}, "and: expects a non-empty list of conditions, got an object"),
        ({"not": [DEEP]}, "not: expects an object"),
        ({"and": [DEEP], "path": "a"}, "and: stands alone in its object (found 'path' beside it)"),
        (DEEP, "not.not.not.not.not.not.not.not: too deep: at most 8 levels of nested conditions"),
        ({"path": "data.s", "in": list(range(101))}, "in: at most 100 values, got 101"),
        ({"or": [{"path": "data.s", "in": ["x" * 90] * 100}] * 2}, "too large: "),
        ({"or": [{"path": f"data.f{i}", "eq": i} for i in range(64)]}, "or[63]: too many conditions: at most 64"),
        ({}, "an empty object filters nothing: use null for no filter"),
        (["and"], "expects an object (path with eq, in, gt, gte, lt, lte or exists; or and, or, not), got a list"),
        ("data.status = failed", "expects an object (path with eq"),
        ({"path": "data.status", "eq": "a\x00b"}, "eq: NUL characters are not allowed"),
    ],
)
def test_a_bad_filter_is_a_400_naming_the_bad_part(api, bad, message):
    response = api.post("/api/v1/webhooks/", {"url": PUBLIC, "filter": bad}, format="json")
    assert response.status_code == 400
    (error,) = response.json()["filter"]
    assert error.startswith(message), error
    assert not Endpoint.objects.exists()


def test_a_bad_filter_on_update_changes_nothing(api, make_endpoint):
    endpoint = make_endpoint(filter=FAILED_OR_CANCELLED)
    response = api.patch(f"/api/v1/webhooks/{endpoint.pk}/", {"filter": {"not": {"path": "x"}}}, format="json")
    assert response.status_code == 400
    assert response.json() == {"filter": ["not: no operator for path 'x': add eq, in, gt, gte, lt, lte or exists"]}
    endpoint.refresh_from_db()
    assert endpoint.filter == FAILED_OR_CANCELLED


# --- test-filter ------------------------------------------------------------------------------


def try_filter(api, endpoint, **body):
    return api.post(f"/api/v1/webhooks/{endpoint.pk}/test-filter/", body, format="json")


def test_test_filter_says_a_sample_matches(api, make_endpoint):
    endpoint = make_endpoint(filter={"and": [FAILED_OR_CANCELLED, BIG_USAGE]})
    sample = {"event_type": "agent.step.failed", "data": {"status": "failed", "usage": {"total_tokens": 12000}}}
    response = try_filter(api, endpoint, event=sample)
    assert response.status_code == 200
    assert response.json() == {
        "matches": True, "failed": None, "reason": None, "filter": endpoint.filter, "subscribed": True,
        "envelope": sample,
    }  # fmt: skip


def test_test_filter_names_the_clause_that_failed(api, make_endpoint):
    endpoint = make_endpoint(filter={"and": [FAILED_OR_CANCELLED, BIG_USAGE]})
    answer = try_filter(api, endpoint, event={"data": {"status": "failed", "usage": {"total_tokens": 42}}}).json()
    assert (answer["matches"], answer["failed"]) == (False, "and[1].gt")
    assert answer["reason"] == "data.usage.total_tokens is 42: wanted a number > 10000"
    assert answer["subscribed"] is None  # no event_type in the sample

    # Only the data: taken as the envelope's `data`. An absent path fails its comparison.
    answer = try_filter(api, endpoint, event={"status": "success"}).json()
    assert answer["envelope"] == {"data": {"status": "success"}}
    assert answer["reason"] == "data.status is 'success': wanted one of ['failed', 'cancelled']"
    answer = try_filter(api, endpoint, event={"usage": {}}).json()
    assert (answer["failed"], answer["reason"]) == (
        "and[0].in",
        "data.status is absent: wanted one of ['failed', 'cancelled']",
    )


def test_test_filter_explains_or_and_not(api, make_endpoint):
    endpoint = make_endpoint(filter={"or": [FAILED_OR_CANCELLED, {"not": {"path": "data.error", "exists": False}}]})
    answer = try_filter(api, endpoint, event={"status": "success", "error": None}).json()
    assert answer["failed"] == "or"
    assert answer["reason"] == (
        "no alternative matched (or[0].in: data.status is 'success': wanted one of ['failed', 'cancelled']; "
        "or[1].not: its condition matched: data.error is absent or null)"
    )
    assert try_filter(api, endpoint, event={"status": "success", "error": "boom"}).json()["matches"] is True


def test_test_filter_tries_another_filter_without_saving_it(api, make_endpoint):
    endpoint = make_endpoint(filter=FAILED_OR_CANCELLED, event_types=["agent.step.*"])
    candidate = {"path": "data.usage.total_tokens", "lte": 100}
    sample = {"event_type": "agent.message.sent", "data": {"status": "success", "usage": {"total_tokens": 42}}}
    answer = try_filter(api, endpoint, event=sample, filter=candidate).json()
    assert (answer["matches"], answer["filter"], answer["subscribed"]) == (True, candidate, False)
    endpoint.refresh_from_db()
    assert endpoint.filter == FAILED_OR_CANCELLED
    # null: as with no filter, everything passes; a bad candidate is a 400 like on create.
    assert try_filter(api, endpoint, event=sample, filter=None).json()["matches"] is True
    bad = try_filter(api, endpoint, event=sample, filter={"path": "x", "lt": "1"})
    assert bad.status_code == 400 and bad.json() == {"filter": ["lt: expects a number, got '1'"]}


def test_test_filter_on_a_stored_event(api, org, agent, make_endpoint, settings):
    endpoint = make_endpoint(filter=FAILED_OR_CANCELLED)
    event = step_event(org, agent, status="cancelled")
    answer = try_filter(api, endpoint, event_id=event.pk).json()
    assert answer["matches"] is True and answer["envelope"]["event_id"] == event.pk

    missing = try_filter(api, endpoint, event_id="evt_nope")
    assert missing.status_code == 400 and missing.json() == {"event_id": ["no event 'evt_nope' in your organization"]}
    settings.WEBHOOK_MAX_PAYLOAD_BYTES = 2000
    huge = publish("agent.step.completed", organization=org, agent=agent, data={"error": "x" * 5000})
    refused = try_filter(api, endpoint, event_id=huge.pk)
    assert refused.status_code == 400
    assert refused.json()["event_id"][0].startswith("too large to keep its data: content filters do not apply")


def test_test_filter_wants_one_sample(api, make_endpoint):
    endpoint = make_endpoint()
    for body in ({}, {"event": {"status": "x"}, "event_id": "evt_1"}):
        response = try_filter(api, endpoint, **body)
        assert response.status_code == 400
        assert response.json() == {"event": ["give either event (a sample) or event_id, not both"]}
    answer = try_filter(api, endpoint, event={"status": "x"}).json()
    assert (answer["matches"], answer["filter"]) == (True, None)  # no filter: everything passes


def test_test_filter_refuses_what_it_could_not_answer(api, make_endpoint):
    endpoint = make_endpoint(filter={"path": "data.n", "gt": "x"})  # stored by code, around the API
    response = try_filter(api, endpoint, event={"n": 1})
    assert response.status_code == 400
    assert response.json() == {
        "filter": ["the endpoint's filter is invalid (fan-out ignores it): gt: expects a number, got 'x'"]
    }
    response = try_filter(api, endpoint, event={"text": "a\x00b"}, filter=None)
    assert response.status_code == 400 and response.json() == {"event": ["text: NUL characters are not allowed"]}


def test_the_schema_shows_the_grammar_with_examples(db):
    schema = APIClient().get("/api/schema/?format=json").json()
    field = schema["components"]["schemas"]["Endpoint"]["properties"]["filter"]
    assert field["nullable"] is True and field["type"] == "object"
    for example in ('"in": ["failed", "cancelled"]', '"gt": 10000', '"exists": true', '{"not": {...}}'):
        assert example in field["description"]
    content_filter.check(field["example"])
    operation = schema["paths"]["/api/v1/webhooks/{id}/test-filter/"]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    assert len(examples) == 3


# --- the admin --------------------------------------------------------------------------------


def form_data(endpoint, **fields) -> dict:
    return {"url": endpoint.url, "agent": "", "description": "", "event_types": "", "headers": "",
            "rate_limit": "", "retry_schedule": "", "is_active": "on", **fields}  # fmt: skip


def test_the_admin_form_takes_a_filter_as_json(admin_client, make_endpoint):
    endpoint = make_endpoint()
    typed = '{"and": [{"path": "data.status", "in": ["failed"]}, {"path": "data.usage.total_tokens", "gt": 10000}]}'
    response = admin_client.post(change_url(endpoint.pk), form_data(endpoint, filter=typed))
    assert response.status_code == 302, response.context["adminform"].form.errors
    endpoint.refresh_from_db()
    assert endpoint.filter == json.loads(typed)

    page = admin_client.get(change_url(endpoint.pk)).content.decode()
    assert "Content filter" in page and "&quot;data.usage.total_tokens&quot;" in page
    listing = admin_client.get(reverse("admin:webhooks_endpoint_changelist")).content.decode()
    assert 'class="quiet filtered" title="(data.status in [&#x27;failed&#x27;]) and' in listing

    response = admin_client.post(change_url(endpoint.pk), form_data(endpoint, filter=""))
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.filter is None
    assert "filtered</span>" not in admin_client.get(reverse("admin:webhooks_endpoint_changelist")).content.decode()


@pytest.mark.parametrize(
    "typed, error",
    [
        ('{"path": "data.status", "in": ["failed"]', "Not JSON: Expecting ',' delimiter"),
        ('{"and": [{"path": "data.n", "gt": "x"}]}', "And[0].gt: expects a number, got 'x'"),
        ('{"path": "data.status", "is": "failed"}', "Is: unknown operator"),
        ("[1, 2]", "Expects an object"),
    ],
)
def test_a_bad_filter_in_the_admin_is_a_form_error(admin_client, make_endpoint, typed, error):
    endpoint = make_endpoint()
    response = admin_client.post(change_url(endpoint.pk), form_data(endpoint, filter=typed))
    assert response.status_code == 200
    (message,) = response.context["adminform"].form.errors["filter"]
    assert message.startswith(error), message
    endpoint.refresh_from_db()
    assert endpoint.filter is None


@pytest.mark.django_db(transaction=True)
def test_a_path_of_unicode_digits_is_a_key_not_an_index_and_never_stops_fan_out(org, make_endpoint):
    from django.db import transaction

    from deliveries import fanout
    from deliveries.events import publish

    odd = make_endpoint("/odd", filter={"path": "data.²", "eq": 1})  # "²".isdigit() is true; int("²") fails
    plain = make_endpoint("/plain")
    with transaction.atomic():  # fanned out here before the suite's worker, if running, hears of them
        matching = publish("agent.custom.thing", organization=org, data={"²": 1})
        other = publish("agent.custom.thing", organization=org, data={"n": 2})
        delivered = {(d.event_id, d.endpoint_id) for d in fanout.fan_out([matching.pk, other.pk])}
    assert delivered == {(matching.pk, odd.pk), (matching.pk, plain.pk), (other.pk, plain.pk)}
