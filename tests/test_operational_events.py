"""Operational events: an endpoint subscribed to `endpoint.*` / `delivery.dead` is told, by a
signed POST through the normal pipeline, when an endpoint is disabled (by the API, a 410 Gone,
or failing too long), enabled again, starts failing, or when a delivery dies: exactly once per
cause. An endpoint that did not name them gets none, and a dead receiver of them causes no loop.
(Real worker, real receiver; `/ops` is the operators' endpoint.)
"""

import collections
import datetime

import pytest
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from agents_hooks.models import Step
from deliveries import pipeline, recovery
from deliveries.models import Delivery, Event
from tests.support import Worker, fanned_out_here, logged_delivery, wait_until, wait_until_settled, webhook_ids
from webhooks import catalog
from webhooks.models import Endpoint

OPERATIONAL = sorted(catalog.OPERATIONAL_EVENT_TYPES)


def complete_a_step(agent) -> Step:
    step = Step.objects.create(agent=agent)
    step.status = "success"
    step.save()
    return step


def received(receiver, endpoint: Endpoint, path: str = "/ops") -> list[dict]:
    """The events POSTed to `path`, each verified against `endpoint`'s secret (Standard Webhooks'
    own library, not ours); a bad signature fails the test."""
    return [Webhook(endpoint.secret).verify(r.body, r.headers) for r in receiver.received(path)]


def event_types() -> collections.Counter:
    return collections.Counter(Event.objects.values_list("type", flat=True))


def operational_events() -> collections.Counter:
    return collections.Counter({t: n for t, n in event_types().items() if t in catalog.OPERATIONAL_EVENT_TYPES})


def assert_each_arrived_once(receiver, path: str = "/ops") -> None:
    """Once everything published is fanned out and every delivery finished (or is held for a
    disabled endpoint): each event POSTed to `path` arrived once."""
    wait_until(lambda: not Event.objects.filter(fanned_out_at=None).exists(), message="every event fanned out")
    unsettled = Delivery.objects.filter(Q(status="pending", next_attempt_at__isnull=False) | Q(lease__isnull=False))
    wait_until(lambda: not unsettled.exists(), timeout=30, message="every delivery finished or held")
    counts = webhook_ids(receiver, path)
    assert counts and set(counts.values()) == {1}, counts


# --- disabled and enabled ------------------------------------------------------------------


def test_disabling_and_enabling_through_the_api_are_each_reported_once(live, api, make_endpoint):
    ops = make_endpoint("/ops", event_types=["endpoint.*", "delivery.dead"])
    hook = make_endpoint("/hook?token=s3cr3t")
    everything = make_endpoint("/all")  # an empty filter: every agent event, no operational one

    for _ in range(2):  # the second PATCH changes nothing, and reports nothing
        assert api.patch(f"/api/v1/webhooks/{hook.pk}/", {"is_active": False}, format="json").status_code == 200
    live.wait_for(1, path="/ops")
    (disabled,) = received(live, ops)
    hook.refresh_from_db()
    assert disabled["event_type"] == "endpoint.disabled"
    assert disabled["agent_id"] is None and disabled["organization_id"] == hook.organization_id
    assert disabled["data"] == {
        "endpoint_id": hook.pk,
        "url": live.url("/hook?[redacted]"),  # the query string may hold a token
        "reason": "disabled through the API",
        "disabled_at": hook.disabled_at.isoformat().replace("+00:00", "Z"),
    }

    held = logged_delivery(hook, "pending", codes=())
    Delivery.objects.filter(pk=held.pk).update(next_attempt_at=None)  # held, as the worker holds it
    for _ in range(2):
        assert api.patch(f"/api/v1/webhooks/{hook.pk}/", {"is_active": True}, format="json").status_code == 200
    live.wait_for(2, path="/ops")
    live.wait_for(1, path="/hook?token=s3cr3t")  # the held delivery, released
    enabled = received(live, ops)[1]
    assert enabled["event_type"] == "endpoint.enabled"
    assert enabled["data"] == {"endpoint_id": hook.pk, "url": live.url("/hook?[redacted]"), "deliveries_released": 1}

    assert_each_arrived_once(live)
    assert operational_events() == {"endpoint.disabled": 1, "endpoint.enabled": 1}
    assert not Delivery.objects.filter(endpoint=everything).exists()
    assert live.received("/all") == []


def test_a_rolled_back_disable_reports_nothing(transactional_db, make_endpoint):
    make_endpoint("/ops", event_types=["endpoint.*"])
    hook = make_endpoint("/hook")
    with pytest.raises(RuntimeError), transaction.atomic():
        assert recovery.disable_endpoints(Endpoint.objects.filter(pk=hook.pk), "maintenance") == 1
        raise RuntimeError("the operator's change failed")
    hook.refresh_from_db()
    assert hook.is_active
    assert not Event.objects.exists()


def test_a_410_gone_disables_the_endpoint_and_is_reported(live, agent, make_endpoint):
    ops = make_endpoint("/ops", event_types=["endpoint.disabled"])
    gone = make_endpoint("/gone")
    live.script("/gone", [410])

    complete_a_step(agent)
    live.wait_for(1, path="/ops")
    (disabled,) = received(live, ops)
    assert disabled["event_type"] == "endpoint.disabled"
    assert disabled["data"]["endpoint_id"] == gone.pk
    assert disabled["data"]["url"] == gone.url
    assert disabled["data"]["reason"] == "the endpoint answered 410 Gone"

    complete_a_step(agent)  # sent nowhere now: the endpoint is disabled
    wait_until(lambda: event_types()["agent.step.completed"] == 2)
    assert_each_arrived_once(live)
    assert len(live.received("/gone")) == 1
    assert operational_events() == {"endpoint.disabled": 1}


def test_failing_for_the_window_disables_the_endpoint_and_is_reported(live, org, make_endpoint, settings):
    # The attempt is made and recorded in this process, so the window can be set here; the
    # event it publishes is delivered by the worker.
    settings.WEBHOOK_DISABLE_AFTER_HOURS = 1
    ops = make_endpoint("/ops", event_types=["endpoint.*"])
    down = make_endpoint("/down")
    live.script("/down", [503])
    Endpoint.objects.filter(pk=down.pk).update(failing_since=timezone.now() - datetime.timedelta(hours=2))

    pipeline.send_claimed(fanned_out_here(org))
    live.wait_for(1, path="/ops")
    (disabled,) = received(live, ops)
    assert disabled["event_type"] == "endpoint.disabled"
    assert disabled["data"]["endpoint_id"] == down.pk
    assert disabled["data"]["reason"] == "every attempt failed for 1 hours"
    assert_each_arrived_once(live)
    assert operational_events() == {"endpoint.disabled": 1}


# --- dead deliveries -----------------------------------------------------------------------


def test_a_delivery_that_dies_is_reported_and_again_after_a_retry_by_hand(live, api, agent, make_endpoint):
    ops = make_endpoint("/ops", event_types=["delivery.dead"])
    make_endpoint("/down", retry_schedule=[1])  # two attempts
    agent_events = make_endpoint("/agents", event_types=["agent.*"])
    live.script("/down", [503] * 10)

    complete_a_step(agent)
    delivery = wait_until(lambda: Delivery.objects.filter(endpoint__url__endswith="/down", status="dead").first())
    live.wait_for(1, path="/ops")
    (reported,) = received(live, ops)
    assert reported["event_type"] == "delivery.dead"
    assert reported["agent_id"] is None and reported["organization_id"] == agent.organization_id
    assert reported["data"] == {
        "delivery_id": delivery.pk,
        "event_id": delivery.event_id,
        "event_type": "agent.step.completed",
        "endpoint_id": delivery.endpoint_id,
        "attempts": 2,
        "last_status_code": 503,
        "last_error": "",
    }

    # Retried by hand, it dies again: that is news again.
    assert api.post(f"/api/v1/deliveries/{delivery.pk}/retry/", {}, format="json").status_code == 202
    live.wait_for(2, path="/ops")
    again = received(live, ops)[1]
    assert again["event_type"] == "delivery.dead"
    assert (again["data"]["delivery_id"], again["data"]["attempts"]) == (delivery.pk, 4)

    assert_each_arrived_once(live)
    assert operational_events() == {"delivery.dead": 2}
    assert {r.headers["X-Letta-Event-Type"] for r in live.received("/agents")} == {"agent.step.completed"}
    assert Delivery.objects.filter(endpoint=agent_events).count() == 1


# --- no loops ------------------------------------------------------------------------------


@pytest.fixture
def strict_worker(receiver_only, tmp_path):
    """A worker of the test's own that reports an endpoint failing after 2 failures in a row."""
    worker = Worker(tmp_path / "worker.log", extra_env={"WEBHOOK_FAILING_AFTER_FAILURES": "2"})
    yield worker
    worker.stop()


def test_a_dead_receiver_of_operational_events_causes_no_loop(receiver_only, strict_worker, agent, make_endpoint):
    live = receiver_only
    ops = make_endpoint("/ops", event_types=["endpoint.*", "delivery.dead"], retry_schedule=[1])
    down = make_endpoint("/down", retry_schedule=[1])
    live.script("/ops", [503] * 50)
    live.script("/down", [503] * 50)

    complete_a_step(agent)
    # /down fails twice: its delivery dies, and the endpoint is failing. Both are sent to /ops,
    # which fails them twice each, so /ops is failing too: that is sent to /ops as well, and
    # fails. Every delivery to /ops dies, and none of those deaths is reported.
    wait_until(lambda: Delivery.objects.filter(endpoint=ops, status="dead").count() == 3, timeout=30)
    wait_until_settled()
    assert event_types() == {"agent.step.completed": 1, "delivery.dead": 1, "endpoint.failing": 2}
    (dead_event,) = Event.objects.filter(type="delivery.dead")
    assert dead_event.deliveries.get().endpoint == ops
    assert Delivery.objects.get(event__type="agent.step.completed").endpoint == down
    failing = {e.body for e in Event.objects.filter(type="endpoint.failing")}
    assert any(ops.pk in body for body in failing) and any(down.pk in body for body in failing)
    assert set(webhook_ids(live, "/ops").values()) == {2}  # each tried twice, then given up
    assert len(live.received("/ops")) == 6


# --- failing -------------------------------------------------------------------------------


@pytest.fixture
def failing_worker(receiver_only, tmp_path):
    """A worker of the test's own: failing after 3 failures in a row, one report per ~30 years."""
    env = {"WEBHOOK_FAILING_AFTER_FAILURES": "3", "WEBHOOK_FAILING_WINDOW": "1000000000"}
    worker = Worker(tmp_path / "worker.log", extra_env=env)
    yield worker
    worker.stop()


def test_failing_is_reported_once_when_the_failures_in_a_row_cross_the_threshold(
    receiver_only, failing_worker, agent, make_endpoint
):
    live = receiver_only
    ops = make_endpoint("/ops", event_types=["endpoint.failing"])
    down = make_endpoint("/flaky", retry_schedule=[1, 1, 1])  # four attempts
    live.script("/flaky", [503] * 4 + [200] + [503] * 4)

    complete_a_step(agent)  # four failures: crossed at the third
    wait_until(lambda: Delivery.objects.filter(status="dead").exists(), timeout=30)
    live.wait_for(1, path="/ops")
    (failing,) = received(live, ops)
    down.refresh_from_db()
    assert failing["event_type"] == "endpoint.failing"
    assert failing["data"] == {
        "endpoint_id": down.pk,
        "url": down.url,
        "consecutive_failures": 3,
        "failing_since": down.failing_since.isoformat().replace("+00:00", "Z"),
        "last_status_code": 503,
        "last_error": "",
    }
    assert down.consecutive_failures == 4

    complete_a_step(agent)  # a success ends the run
    wait_until(lambda: Endpoint.objects.get(pk=down.pk).consecutive_failures == 0)
    complete_a_step(agent)  # four failures again: crossed again, but within the same window
    wait_until(lambda: Delivery.objects.filter(status="dead").count() == 2, timeout=30)

    assert_each_arrived_once(live)
    assert Endpoint.objects.get(pk=down.pk).consecutive_failures == 4
    assert operational_events()["endpoint.failing"] == 1  # (and a delivery.dead per delivery, not asked for)
    assert [e["event_type"] for e in received(live, ops)] == ["endpoint.failing"]


# --- the rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patterns, operational, agent_events",
    [
        ([], False, True),  # empty: every agent event, no operational one
        (["agent.*"], False, True),
        (["endpoint.*", "delivery.dead"], True, False),
        (["*"], True, True),
    ],
)
def test_only_a_filter_that_names_operational_events_receives_them(patterns, operational, agent_events):
    endpoint = Endpoint(event_types=patterns)
    assert [endpoint.receives(t, None) for t in OPERATIONAL] == [operational] * len(OPERATIONAL)
    assert endpoint.receives("agent.step.completed", "agent-1") is agent_events


def test_an_endpoint_scoped_to_one_agent_never_receives_them(agent):
    endpoint = Endpoint(agent=agent, event_types=["*"])
    assert not any(endpoint.receives(t, None) for t in OPERATIONAL)


def test_the_catalog_lists_them_and_a_filter_may_name_them(api):
    listed = {t["name"]: t for t in api.get("/api/v1/event-types/").json()}
    for name in OPERATIONAL:
        assert listed[name]["description"] and listed[name]["example"]
    assert set(listed["delivery.dead"]["example"]) == {
        "delivery_id", "event_id", "event_type", "endpoint_id", "attempts", "last_status_code", "last_error",
    }  # fmt: skip
    body = {"url": "https://93.184.216.34/ops", "event_types": ["endpoint.*", "delivery.dead"]}
    assert api.post("/api/v1/webhooks/", body, format="json").status_code == 201
