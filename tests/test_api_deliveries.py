"""The REST API for the delivery log: events and deliveries (filters, ordering, pagination), a
delivery with all its attempts, manual retry; and the README's walkthrough end to end: an
endpoint, an agent and a step made through the API, the step completed, the delivery seen."""

import datetime

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from agents_hooks.models import Agent
from deliveries.models import Delivery
from tests.receiver import Reply
from tests.support import logged_delivery, wait_until
from webhooks.models import Endpoint

PUBLIC = "https://93.184.216.34/hook"


def logged(endpoint, status="succeeded", *, age_min=0, **fields):
    return logged_delivery(endpoint, status, age=datetime.timedelta(minutes=age_min), data={"n": age_min}, **fields)


def ids(response) -> list:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


@pytest.fixture
def log(org, agent):
    """Five deliveries over two endpoints, two agents, several types, statuses and ages."""
    other_agent = Agent.objects.create(organization=org, name="second")
    a = Endpoint.objects.create(organization=org, url=PUBLIC)
    b = Endpoint.objects.create(organization=org, url="https://93.184.216.34/other")
    return {
        "a": a,
        "b": b,
        "agent": agent,
        "other_agent": other_agent,
        "old_ok": logged(a, age_min=120, agent=agent),
        "failed": logged(a, "failed", age_min=60, agent=agent, codes=(400,)),
        "dead": logged(b, "dead", age_min=30, agent=other_agent, event_type="agent.run.completed", codes=(503,) * 3),
        "pending": logged(b, "pending", age_min=10, event_type="agent.message.sent", codes=()),
        "new_ok": logged(a, age_min=1, agent=other_agent, event_type="agent.run.completed"),
    }


# --- the log -------------------------------------------------------------------------------


def test_deliveries_list_newest_first_with_their_fields(api, log):
    response = api.get("/api/v1/deliveries/")
    assert ids(response) == [log[k].pk for k in ("new_ok", "pending", "dead", "failed", "old_ok")]
    row = response.json()["results"][2]
    assert row["event"] == log["dead"].event_id
    assert (row["event_type"], row["webhook"], row["url"], row["status"], row["attempt_count"]) == (
        "agent.run.completed", log["b"].pk, "https://93.184.216.34/other", "dead", 3,
    )  # fmt: skip
    assert row["last_status_code"] == 503 and row["kind"] == "endpoint"
    assert "attempts" not in row


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=failed", ["failed"]),
        ("status=succeeded", ["new_ok", "old_ok"]),
        ("event_type=agent.run.completed", ["new_ok", "dead"]),
        ("status=dead&event_type=agent.run.completed", ["dead"]),
        ("kind=endpoint&status=pending", ["pending"]),
    ],
)
def test_deliveries_filters(api, log, query, expected):
    assert ids(api.get(f"/api/v1/deliveries/?{query}")) == [log[k].pk for k in expected]


def test_deliveries_filter_by_webhook_agent_event_and_time(api, log):
    assert ids(api.get(f"/api/v1/deliveries/?webhook={log['b'].pk}")) == [log["pending"].pk, log["dead"].pk]
    by_agent = ids(api.get(f"/api/v1/deliveries/?agent={log['agent'].pk}"))
    assert by_agent == [log["failed"].pk, log["old_ok"].pk]
    assert ids(api.get(f"/api/v1/deliveries/?event={log['dead'].event_id}")) == [log["dead"].pk]
    after = (timezone.now() - datetime.timedelta(minutes=45)).isoformat()
    before = (timezone.now() - datetime.timedelta(minutes=5)).isoformat()
    window = ids(api.get("/api/v1/deliveries/", {"created_after": after, "created_before": before}))
    assert window == [log["pending"].pk, log["dead"].pk]


def test_deliveries_ordering_and_pagination(api, log):
    oldest_first = ids(api.get("/api/v1/deliveries/?ordering=created_at"))
    assert oldest_first == [log[k].pk for k in ("old_ok", "failed", "dead", "pending", "new_ok")]
    most_attempts = ids(api.get("/api/v1/deliveries/?ordering=-attempt_count"))
    assert most_attempts[0] == log["dead"].pk
    first = api.get("/api/v1/deliveries/?page_size=2").json()
    assert first["count"] == 5 and len(first["results"]) == 2 and first["previous"] is None
    second = api.get(first["next"]).json()
    assert [r["id"] for r in second["results"]] == [log["dead"].pk, log["failed"].pk]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=exploded", "status"),
        ("kind=carrier-pigeon", "kind"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-13-01T00:00:00Z", "created_before"),
        ("created_after=1218-01-30T01:44:06-18:32", None),  # PostgreSQL refuses that offset: normalised to UTC
        ("created_before=0001-01-01T00:00:00%2B05:00", "created_before"),  # before year 1 in UTC
        ("page_size=0", "page_size"),
    ],
)
def test_bad_filters_are_400_naming_them(api, log, query, field):
    response = api.get(f"/api/v1/deliveries/?{query}")
    if field is None:
        assert response.status_code == 200
        return
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_delivery_detail_has_every_attempt(api, log):
    response = api.get(f"/api/v1/deliveries/{log['dead'].pk}/")
    assert response.status_code == 200
    attempts = response.json()["attempts"]
    assert [(a["number"], a["status_code"], a["duration_ms"], a["response_body"]) for a in attempts] == [
        (1, 503, 10, "answer 1: 503"), (2, 503, 20, "answer 2: 503"), (3, 503, 30, "answer 3: 503"),
    ]  # fmt: skip
    assert api.get("/api/v1/deliveries/999999999/").status_code == 404
    assert api.get("/api/v1/deliveries/not-a-number/").status_code == 404


def test_events_list_filters_and_detail(api, log):
    listed = api.get("/api/v1/events/")
    assert [e["id"] for e in listed.json()["results"]] == [
        log[k].event_id for k in ("new_ok", "pending", "dead", "failed", "old_ok")
    ]
    run_events = api.get("/api/v1/events/?event_type=agent.run.completed").json()["results"]
    assert [e["id"] for e in run_events] == [log["new_ok"].event_id, log["dead"].event_id]
    by_agent = api.get(f"/api/v1/events/?agent={log['agent'].pk}&ordering=created_at").json()["results"]
    assert [e["id"] for e in by_agent] == [log["old_ok"].event_id, log["failed"].event_id]
    since = (timezone.now() - datetime.timedelta(minutes=15)).isoformat()
    assert len(api.get("/api/v1/events/", {"created_after": since}).json()["results"]) == 2
    detail = api.get(f"/api/v1/events/{log['dead'].event_id}/").json()
    assert detail["event_type"] == "agent.run.completed"
    assert detail["agent"] == log["other_agent"].pk
    assert detail["payload"] == {
        "event_type": "agent.run.completed",
        "agent_id": log["other_agent"].pk,
        "data": {"n": 30},
    }
    assert "created_after" in api.get("/api/v1/events/?created_after=soon").json()


def test_the_log_is_read_only(api, log):
    delivery = log["failed"]
    assert api.delete(f"/api/v1/deliveries/{delivery.pk}/").status_code == 405
    assert api.patch(f"/api/v1/deliveries/{delivery.pk}/", {"status": "succeeded"}, format="json").status_code == 405
    # Events are published with POST (tests/test_publish_api.py), never changed or deleted.
    assert api.patch(f"/api/v1/events/{delivery.event_id}/", {}, format="json").status_code == 405
    assert api.delete(f"/api/v1/events/{delivery.event_id}/").status_code == 405


# --- manual retry --------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["failed", "dead"])
def test_retry_a_failed_or_dead_delivery_starts_a_fresh_series_now(api, log, status):
    delivery = log[status]
    response = api.post(f"/api/v1/deliveries/{delivery.pk}/retry/")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending" and body["finished_at"] is None
    assert body["next_attempt_at"] is not None
    assert len(body["attempts"]) == delivery.attempt_count  # the history is kept
    delivery.refresh_from_db()
    assert delivery.series_start == delivery.attempt_count


def test_retry_refuses_a_succeeded_one_without_force(api, log):
    response = api.post(f"/api/v1/deliveries/{log['old_ok'].pk}/retry/", {"force": False}, format="json")
    assert response.status_code == 409
    assert "force" in response.json()["detail"]
    assert Delivery.objects.get(pk=log["old_ok"].pk).status == "succeeded"
    response = api.post(f"/api/v1/deliveries/{log['old_ok'].pk}/retry/", {"force": True}, format="json")
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    assert (
        "force" in api.post(f"/api/v1/deliveries/{log['failed'].pk}/retry/", {"force": "maybe"}, format="json").json()
    )


def test_retry_of_a_waiting_delivery_makes_it_due_now_in_the_same_series(api, log):
    waiting = log["pending"]
    Delivery.objects.filter(pk=waiting.pk).update(
        attempt_count=1, next_attempt_at=timezone.now() + datetime.timedelta(hours=2)
    )
    response = api.post(f"/api/v1/deliveries/{waiting.pk}/retry/")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending"
    assert datetime.datetime.fromisoformat(body["next_attempt_at"]) <= timezone.now()
    waiting.refresh_from_db()
    assert waiting.series_start == 0 and waiting.attempt_count == 1  # the next attempt of the same series


def test_retry_refuses_a_delivery_in_flight_or_held(api, log):
    in_flight = log["pending"]
    Delivery.objects.filter(pk=in_flight.pk).update(
        lease="a-worker", locked_until=timezone.now() + datetime.timedelta(minutes=1)
    )
    response = api.post(f"/api/v1/deliveries/{in_flight.pk}/retry/")
    assert response.status_code == 409
    assert "being made right now" in response.json()["detail"]

    Delivery.objects.filter(pk=in_flight.pk).update(lease=None, locked_until=None, next_attempt_at=None)  # held
    response = api.post(f"/api/v1/deliveries/{in_flight.pk}/retry/")
    assert response.status_code == 409
    assert "enable the endpoint" in response.json()["detail"]


def test_retry_now_sends_a_delivery_waiting_hours_for_its_retry(live, api, org):
    """A receiver was down; it is fixed; the user does not wait out the schedule."""
    live.script("/fixed", [503])  # then 200
    endpoint = Endpoint.objects.create(organization=org, url=live.url("/fixed"), retry_schedule=[3600])
    publish_a_message(org)
    live.wait_for(1, path="/fixed")
    delivery = wait_until(
        lambda: Delivery.objects.filter(endpoint=endpoint, attempt_count=1).first(), message="first attempt logged"
    )
    assert delivery.status == "pending"
    assert delivery.next_attempt_at > timezone.now() + datetime.timedelta(minutes=59)

    asked = timezone.now()
    assert api.post(f"/api/v1/deliveries/{delivery.pk}/retry/").status_code == 202
    first, second = live.wait_for(2, path="/fixed", timeout=30)
    assert second.at - asked.timestamp() < 60  # now, not in the hour the schedule said
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    wait_until(lambda: api.get(f"/api/v1/deliveries/{delivery.pk}/").json()["status"] == "succeeded")
    attempts = api.get(f"/api/v1/deliveries/{delivery.pk}/").json()["attempts"]
    assert [(a["number"], a["status_code"]) for a in attempts] == [(1, 503), (2, 200)]


def test_retry_pending_sends_every_waiting_delivery_of_an_endpoint_now(live, api, org):
    live.script("/outage", [503] * 3)
    endpoint = Endpoint.objects.create(organization=org, url=live.url("/outage"), retry_schedule=[3600])
    other = Endpoint.objects.create(organization=org, url=live.url("/elsewhere"), retry_schedule=[3600])
    live.script("/elsewhere", [503] * 3)
    for _ in range(3):
        publish_a_message(org)
    live.wait_for(3, path="/outage")
    live.wait_for(3, path="/elsewhere")
    wait_until(lambda: Delivery.objects.filter(attempt_count=1, status="pending").count() == 6, message="six waiting")

    response = api.post(f"/api/v1/webhooks/{endpoint.pk}/retry-pending/")
    assert response.status_code == 202
    assert response.json() == {"retried": 3}
    live.wait_for(6, path="/outage", timeout=10)
    wait_until(lambda: Delivery.objects.filter(endpoint=endpoint, status="succeeded").count() == 3)
    assert len(live.received("/elsewhere")) == 3  # the other endpoint's keep their schedule
    assert Delivery.objects.filter(endpoint=other, status="pending", attempt_count=1).count() == 3

    Endpoint.objects.filter(pk=other.pk).disable("test")
    response = api.post(f"/api/v1/webhooks/{other.pk}/retry-pending/")
    assert response.status_code == 409 and "disabled" in response.json()["detail"]


def publish_a_message(org):
    from deliveries.events import publish

    publish("agent.message.sent", organization=org, data={"text": "hi"})


def test_retry_sends_again_and_the_detail_shows_the_new_attempt(live, api, org):
    live.script("/retry", [])  # 200 from now on
    endpoint = Endpoint.objects.create(organization=org, url=live.url("/retry"))
    failed = logged(endpoint, "failed", codes=(400,))
    assert api.post(f"/api/v1/deliveries/{failed.pk}/retry/").status_code == 202
    (request,) = live.wait_for(1, path="/retry")
    assert request.headers["webhook-id"] == failed.event_id  # the same event, sent again
    wait_until(lambda: api.get(f"/api/v1/deliveries/{failed.pk}/").json()["status"] == "succeeded")
    attempts = api.get(f"/api/v1/deliveries/{failed.pk}/").json()["attempts"]
    assert [(a["number"], a["status_code"]) for a in attempts] == [(1, 400), (2, 200)]


def test_forced_retry_of_a_succeeded_delivery_posts_it_again(live, api, org):
    endpoint = Endpoint.objects.create(organization=org, url=live.url("/again"))
    done = logged(endpoint, "succeeded", codes=(200,))
    assert api.post(f"/api/v1/deliveries/{done.pk}/retry/", {"force": True}, format="json").status_code == 202
    live.wait_for(1, path="/again")
    wait_until(lambda: Delivery.objects.get(pk=done.pk).attempt_count == 2)


# --- the README walkthrough, end to end ----------------------------------------------------


def test_walkthrough_endpoint_agent_step_complete_then_see_the_delivery(live, api):
    live.script("/walkthrough", [Reply(500, body=b"busy"), Reply(200, body=b"thanks")])
    endpoint = api.post(
        "/api/v1/webhooks/",
        {"url": live.url("/walkthrough"), "event_types": ["agent.step.*"], "description": "walkthrough"},
        format="json",
    ).json()
    agent = api.post("/api/v1/agents/", {"name": "support-bot"}, format="json").json()
    step = api.post("/api/v1/steps/", {"agent": agent["id"]}, format="json").json()
    assert live.received() == []  # a pending step is not an event

    done = api.patch(
        f"/api/v1/steps/{step['id']}/",
        {"status": "success", "prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        format="json",
    )
    assert done.status_code == 200

    def delivered():
        rows = api.get(f"/api/v1/deliveries/?webhook={endpoint['id']}&status=succeeded").json()["results"]
        return rows[0] if rows else None

    row = wait_until(delivered, message="the step's delivery to succeed")
    assert row["event_type"] == "agent.step.completed" and row["attempt_count"] == 2
    detail = api.get(f"/api/v1/deliveries/{row['id']}/").json()
    assert [(a["status_code"], a["response_body"]) for a in detail["attempts"]] == [(500, "busy"), (200, "thanks")]
    event = api.get(f"/api/v1/events/{row['event']}/").json()
    assert event["payload"]["data"]["step_id"] == step["id"]

    first, second = live.wait_for(2, path="/walkthrough")
    envelope = Webhook(endpoint["secret"]).verify(second.body, second.headers)
    assert envelope["event_type"] == "agent.step.completed"
    assert envelope["agent_id"] == agent["id"]
    assert envelope["data"]["usage"] == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
    assert first.body == second.body


def test_retry_pending_of_many_works_in_chunks_and_the_due_loop_sends_the_rest(live, api, org, monkeypatch):
    """An endpoint with more waiting deliveries than one statement takes parameters for (the
    outage benchmark's 100,000): made due a chunk at a time; the first few go to the broker at
    once, the due loop sends the others."""
    from deliveries import recovery

    monkeypatch.setattr(recovery, "CHUNK", 7)
    monkeypatch.setattr(recovery, "SUBMIT_AT_ONCE", 5)
    endpoint = Endpoint.objects.create(organization=org, url=live.url("/many"), retry_schedule=[3600])
    with transaction.atomic():  # the suite's worker never sees them due before they wait an hour
        waiting = [logged(endpoint, "pending", codes=(503,)) for _ in range(20)]
        Delivery.objects.filter(pk__in=[d.pk for d in waiting]).update(
            next_attempt_at=timezone.now() + datetime.timedelta(hours=1)
        )
    response = api.post(f"/api/v1/webhooks/{endpoint.pk}/retry-pending/")
    assert response.json() == {"retried": 20}
    live.wait_for(20, path="/many", timeout=20)
    wait_until(lambda: Delivery.objects.filter(endpoint=endpoint, status="succeeded").count() == 20)
    assert len({r.headers["webhook-id"] for r in live.received("/many")}) == 20
