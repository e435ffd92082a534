"""Replay: `POST /api/v1/webhooks/<id>/replay/` sends an endpoint the past events it takes now
and never got, each exactly once, signed as usual, in sequence for an endpoint that orders
runs; progress at `GET .../replays/<id>/`; the same from the admin's "Replay events" page and
`manage.py webhooks endpoints replay`."""

import datetime
import itertools
import json
import threading

import pytest
from django.contrib.admin.utils import quote
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from agents_hooks.models import Agent, Organization, Run
from deliveries import replay
from deliveries.events import publish
from deliveries.models import Delivery, Event, Replay
from tests.receiver import Reply
from tests.support import wait_until, wait_until_settled, webhook_ids
from tests.test_cli import refused, webhooks
from webhooks import signing
from webhooks.models import Endpoint


def published(org, types: list[str], agent=None, run=None) -> list[Event]:
    """Publish one event of each type (in order), and wait until the worker fanned them out:
    from then on fan-out will never give them to an endpoint created later."""
    events = [publish(t, organization=org, agent=agent, run=run, data={"n": n}) for n, t in enumerate(types)]
    ids = [e.pk for e in events]
    fanned = Event.objects.filter(pk__in=ids, fanned_out_at__isnull=False)
    wait_until(lambda: fanned.count() == len(ids), message="events fanned out")
    return events


def start(api, endpoint, **body):
    return api.post(f"/api/v1/webhooks/{endpoint.pk}/replay/", body, format="json")


def finished(api, endpoint, replay_id: int) -> dict:
    """The replay as the API shows it once it is no longer running."""
    url = f"/api/v1/webhooks/{endpoint.pk}/replays/{replay_id}/"
    return wait_until(lambda: (shown := api.get(url).json())["state"] != "running" and shown, message="replay done")


def before(events) -> str:
    return (min(e.created_at for e in events) - datetime.timedelta(seconds=1)).isoformat()


# --- what the receiver gets ----------------------------------------------------------------


def test_a_new_endpoint_gets_the_events_published_before_it_existed_once_each_signed(
    live, api, org, agent, make_endpoint
):
    events = published(org, ["agent.step.completed"] * 5 + ["agent.step.failed"] * 2, agent=agent)
    endpoint = make_endpoint("/new", event_types=["agent.step.completed"])

    answer = start(api, endpoint, since=before(events))
    assert answer.status_code == 202, answer.content
    shown = answer.json()
    assert shown["state"] in ("running", "done") and shown["events_total"] == 7
    assert answer["Location"].endswith(f"/api/v1/webhooks/{endpoint.pk}/replays/{shown['id']}/")

    done = finished(api, endpoint, shown["id"])
    assert done["state"] == "done" and done["progress"] == 1.0
    assert (done["events_examined"], done["deliveries_created"]) == (7, 5)
    assert done["requested_by"].startswith("API key")
    live.wait_for(5, path="/new")
    wait_until_settled()
    completed = {e.pk for e in events if e.type == "agent.step.completed"}
    ids = webhook_ids(live, "/new")
    assert ids == {pk: 1 for pk in completed}  # each missing event once, nothing else
    for request in live.received("/new"):
        signing.verify(endpoint.secret, request.body, request.headers)
        assert json.loads(request.body)["event_id"] in completed

    # The same window again: nothing is missing any more.
    again = start(api, endpoint, since=before(events))
    assert again.status_code == 202
    second = finished(api, endpoint, again.json()["id"])
    assert (second["state"], second["events_examined"], second["deliveries_created"]) == ("done", 7, 0)
    wait_until_settled()
    assert len(live.received("/new")) == 5

    listed = api.get(f"/api/v1/webhooks/{endpoint.pk}/replays/").json()
    assert [r["id"] for r in listed["results"]] == [again.json()["id"], shown["id"]]


def test_a_widened_endpoint_gets_only_what_it_missed_and_event_types_narrow_a_replay(
    live, api, org, agent, make_endpoint
):
    endpoint = make_endpoint("/hook", event_types=["agent.step.completed"])
    types = ["agent.step.completed", "agent.step.failed", "agent.message.sent"] * 2
    events = published(org, types, agent=agent)
    live.wait_for(2, path="/hook")
    wait_until_settled()
    by_type = {t: {e.pk for e in events if e.type == t} for t in set(types)}
    assert set(webhook_ids(live, "/hook")) == by_type["agent.step.completed"]

    # Widened to every agent event: the failed steps first (narrowed), then the rest.
    assert api.patch(f"/api/v1/webhooks/{endpoint.pk}/", {"event_types": []}, format="json").status_code == 200
    narrowed = start(api, endpoint, since=before(events), event_types=["agent.step.*"])
    assert narrowed.status_code == 202, narrowed.content
    assert finished(api, endpoint, narrowed.json()["id"])["deliveries_created"] == 2
    live.wait_for(4, path="/hook")
    wait_until_settled()
    assert set(webhook_ids(live, "/hook")) == by_type["agent.step.completed"] | by_type["agent.step.failed"]

    rest = start(api, endpoint, since=before(events))
    assert finished(api, endpoint, rest.json()["id"])["deliveries_created"] == 2
    live.wait_for(6, path="/hook")
    wait_until_settled()
    assert webhook_ids(live, "/hook") == {e.pk: 1 for e in events}  # every event exactly once


def test_an_ordered_endpoint_gets_each_runs_replayed_events_in_sequence(live, api, org, agent, make_endpoint):
    runs = [Run.objects.create(agent=agent) for _ in range(2)]
    events = []
    for _ in range(4):  # the two runs interleaved
        for run in runs:
            events += published(org, ["agent.step.completed"], agent=agent, run=run)
    endpoint = make_endpoint("/ordered", ordering="run")
    # Slow answers: sent concurrently, a run's events would arrive out of order.
    live.script("/ordered", [Reply(200, delay=0.2)] * 8)

    answer = start(api, endpoint, since=before(events))
    assert answer.status_code == 202
    assert finished(api, endpoint, answer.json()["id"])["deliveries_created"] == 8
    received = live.wait_for(8, path="/ordered", timeout=30)
    wait_until_settled()
    assert webhook_ids(live, "/ordered") == {e.pk: 1 for e in events}
    for run in runs:
        mine = [(json.loads(r.body)["sequence"], r.at) for r in received if json.loads(r.body)["run_id"] == run.pk]
        assert [sequence for sequence, _ in mine] == [1, 2, 3, 4]
        # One at a time: each POSTed only after the one before it was answered (0.2 s later).
        assert all(later - earlier >= 0.19 for (_, earlier), (_, later) in itertools.pairwise(mine))


def test_a_disabled_endpoints_replay_waits_until_it_is_enabled(live, api, org, agent, make_endpoint):
    events = published(org, ["agent.step.completed"] * 2, agent=agent)
    endpoint = make_endpoint("/later", is_active=False)
    answer = start(api, endpoint, since=before(events))
    assert answer.status_code == 202
    assert finished(api, endpoint, answer.json()["id"])["deliveries_created"] == 2
    held = Delivery.objects.filter(endpoint=endpoint, status="pending", next_attempt_at__isnull=True)
    wait_until(lambda: held.count() == 2, message="replayed deliveries held")
    assert live.received("/later") == []

    assert api.patch(f"/api/v1/webhooks/{endpoint.pk}/", {"is_active": True}, format="json").status_code == 200
    live.wait_for(2, path="/later")
    wait_until_settled()
    assert webhook_ids(live, "/later") == {e.pk: 1 for e in events}


def test_the_cli_replays_and_shows_progress(live, org, agent, make_endpoint):
    events = published(org, ["agent.step.completed"] * 3, agent=agent)
    endpoint = make_endpoint("/cli")

    run = webhooks("endpoints", "replay", endpoint.pk, "--since", before(events), "--wait", "--json")
    assert run.code == 0, run
    shown = run.json()
    assert (shown["state"], shown["deliveries_created"], shown["events_examined"]) == ("done", 3, 3)
    assert shown["requested_by"].endswith("(CLI)")
    live.wait_for(3, path="/cli")
    wait_until_settled()
    assert webhook_ids(live, "/cli") == {e.pk: 1 for e in events}

    listed = webhooks("endpoints", "replays", endpoint.pk)
    assert listed.code == 0 and f"{shown['id']}  done" in listed.out and "3/3" in listed.out

    refused(webhooks("endpoints", "replay", endpoint.pk, "--since", "yesterday-ish"), 2, "--since")
    refused(webhooks("endpoints", "replay", endpoint.pk, "--since", "1h", "--types", "no.such.type"), 2, "--types")
    refused(webhooks("endpoints", "replay", endpoint.pk, "--since", "1h", "--until", "2h"), 2, "--since", "before")
    pull = Endpoint.objects.create(organization=org, kind="pull")
    refused(webhooks("endpoints", "replay", pull.pk, "--since", "1h"), 1, "pull endpoint")


# --- exactly once, whoever runs it ---------------------------------------------------------


@pytest.fixture
def quiet_broker(monkeypatch):
    """Nothing reaches a worker: these tests count the rows a replay creates."""
    for name in ("submit", "submit_events", "submit_replays"):
        monkeypatch.setattr(f"deliveries.enqueue.{name}", lambda ids: None)


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_two_workers_running_one_replay_create_each_delivery_once(transactional_db, org, quiet_broker, monkeypatch):
    monkeypatch.setattr(replay, "BATCH", 7)  # many batches, so the two interleave
    endpoint = Endpoint.objects.create(organization=org, url="https://hooks.example.com/in")
    now = timezone.now()
    Event.objects.bulk_create(
        Event(type="agent.step.completed", organization=org, body="{}", created_at=now, fanned_out_at=now)
        for _ in range(100)
    )
    started = replay.start(endpoint, now - datetime.timedelta(minutes=1))
    errors = []

    def work():
        try:
            while replay.run(started.pk, budget=0.01):
                pass
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    started.refresh_from_db()
    assert (started.state, started.events_examined, started.deliveries_created) == ("done", 100, 100)
    assert Delivery.objects.filter(endpoint=endpoint).count() == 100
    assert Delivery.objects.filter(endpoint=endpoint).values("event").distinct().count() == 100


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.parametrize("fan_out_gave_it", [True, False])
def test_a_replay_waits_for_a_fan_out_of_the_same_event_in_progress(
    transactional_db, org, quiet_broker, fan_out_gave_it
):
    """Fan-out commits while the replay looks: the replay sees what it did, and the event ends
    with one delivery to the endpoint either way (fan-out's, or the replay's if fan-out loaded
    the endpoint before it took this event)."""
    endpoint = Endpoint.objects.create(organization=org, url="https://hooks.example.com/in")
    now = timezone.now()
    event = Event.objects.create(type="agent.step.completed", organization=org, body="{}", created_at=now)
    started = replay.start(endpoint, now - datetime.timedelta(minutes=1))
    locked, release = threading.Event(), threading.Event()

    def fan_out():  # as fanout._fan_out does it, held open until told
        try:
            with transaction.atomic():
                list(Event.objects.select_for_update(skip_locked=True).filter(pk=event.pk))
                Event.objects.filter(pk=event.pk).update(fanned_out_at=timezone.now())
                if fan_out_gave_it:
                    Delivery.objects.create(event=event, endpoint=endpoint, created_at=now, next_attempt_at=now)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    worker = threading.Thread(target=fan_out)
    worker.start()
    assert locked.wait(10)
    threading.Timer(0.5, release.set).start()  # the replay below waits for this commit
    while replay.run(started.pk):
        pass
    worker.join(10)
    started.refresh_from_db()
    assert started.deliveries_created == (0 if fan_out_gave_it else 1)
    assert Delivery.objects.filter(event=event, endpoint=endpoint).count() == 1


def test_a_replay_whose_worker_died_is_resumed_where_it_stopped(db, org, quiet_broker, monkeypatch):
    monkeypatch.setattr(replay, "BATCH", 2)
    endpoint = Endpoint.objects.create(organization=org, url="https://hooks.example.com/in")
    now = timezone.now()
    Event.objects.bulk_create(
        Event(type="agent.step.completed", organization=org, body="{}", created_at=now, fanned_out_at=now)
        for _ in range(5)
    )
    started = replay.start(endpoint, now - datetime.timedelta(minutes=1))
    assert replay.step(started.pk)  # one batch, then its worker dies
    assert not replay.resume_stalled()  # it moved a moment ago
    Replay.objects.filter(pk=started.pk).update(updated_at=now - 2 * replay.STALLED_AFTER)
    assert replay.resume_stalled()
    started.refresh_from_db()
    assert (started.state, started.events_examined, started.deliveries_created) == ("done", 5, 5)
    assert Delivery.objects.filter(endpoint=endpoint).count() == 5


def test_what_is_not_replayed(db, org, quiet_broker):
    """Events too large to send, whose payload was removed, not yet fanned out, test events, and
    those the endpoint already has a delivery of (failed ones too: `recover` retries those)."""
    endpoint = Endpoint.objects.create(organization=org, url="https://hooks.example.com/in")
    now = timezone.now()
    fields = {"type": "agent.step.completed", "organization": org, "body": "{}", "created_at": now}
    wanted = Event.objects.create(**fields, fanned_out_at=now)
    Event.objects.create(**fields, fanned_out_at=now, oversize_bytes=10**7)
    Event.objects.create(**fields, fanned_out_at=now, payload_removed="erased")
    Event.objects.create(**fields)  # fan-out will give it to the endpoint as it is
    Event.objects.create(**{**fields, "type": "webhook.test"}, fanned_out_at=now, targets=[{"endpoint": "ep_other"}])
    failed = Event.objects.create(**fields, fanned_out_at=now)
    Delivery.objects.create(event=failed, endpoint=endpoint, status="failed", created_at=now)

    started = replay.start(endpoint, now - datetime.timedelta(minutes=1))
    while replay.run(started.pk):
        pass
    started.refresh_from_db()
    assert (started.events_examined, started.deliveries_created) == (6, 1)
    assert list(Delivery.objects.filter(endpoint=endpoint, status="pending").values_list("event", flat=True)) == [
        wanted.pk
    ]


def test_a_replay_takes_what_the_endpoint_takes_now_its_agent_and_its_content_filter(db, org, agent, quiet_broker):
    other = Agent.objects.create(organization=org, name="other")
    now = timezone.now()
    events = [
        Event.objects.create(
            type="agent.step.completed",
            organization=org,
            agent=who,
            body=json.dumps({"event_type": "agent.step.completed", "agent_id": who.pk, "data": {"n": n}}),
            created_at=now,
            fanned_out_at=now,
        )
        for who in (agent, other)
        for n in range(3)
    ]
    endpoint = Endpoint.objects.create(
        organization=org, agent=agent, url="https://hooks.example.com/in", filter={"path": "data.n", "gte": 1}
    )
    started = replay.start(endpoint, now - datetime.timedelta(minutes=1))
    while replay.run(started.pk):
        pass
    started.refresh_from_db()
    assert (started.events_total, started.events_examined, started.deliveries_created) == (3, 3, 2)
    assert set(Delivery.objects.filter(endpoint=endpoint).values_list("event", flat=True)) == {
        e.pk for e in events[1:3]
    }


# --- bad input, and whose endpoint ---------------------------------------------------------


def test_bad_input_is_a_400_naming_the_field(api, org, make_endpoint, quiet_broker):
    endpoint = make_endpoint()
    now = timezone.now()
    cases = [
        ({}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"since": now.isoformat(), "until": (now - datetime.timedelta(hours=1)).isoformat()}, "since"),
        ({"since": "2026-01-01T00:00:00Z", "event_types": ["no.such.type"]}, "event_types"),
        ({"since": "2026-01-01T00:00:00Z", "event_types": "agent.step.completed"}, "event_types"),
    ]
    for body, field in cases:
        answer = start(api, endpoint, **body)
        assert answer.status_code == 400, (body, answer.content)
        assert list(answer.json()) == [field], (body, answer.json())
    assert not Replay.objects.exists()

    pull = Endpoint.objects.create(organization=org, kind="pull")
    answer = start(api, pull, since="2026-01-01T00:00:00Z")
    assert answer.status_code == 400 and "pull endpoint" in answer.json()["detail"]

    first = start(api, endpoint, since="2026-01-01T00:00:00Z")
    assert first.status_code == 202 and first.json()["state"] == "running"  # no worker here: it waits
    second = start(api, endpoint, since="2026-01-01T00:00:00Z")
    assert second.status_code == 409 and f"replay {first.json()['id']}" in second.json()["detail"]

    cancel = api.post(f"/api/v1/webhooks/{endpoint.pk}/replays/{first.json()['id']}/cancel/")
    assert cancel.status_code == 200 and cancel.json()["state"] == "cancelled"
    assert start(api, endpoint, since="2026-01-01T00:00:00Z").status_code == 202


def test_another_organizations_endpoint_and_replays_are_not_found(api, org, quiet_broker):
    other = Organization.objects.create(name="Globex")
    theirs = Endpoint.objects.create(organization=other, url="https://globex.example.com/in")
    assert start(api, theirs, since="2026-01-01T00:00:00Z").status_code == 404
    their_replay = replay.start(theirs, timezone.now() - datetime.timedelta(hours=1))
    assert api.get(f"/api/v1/webhooks/{theirs.pk}/replays/").status_code == 404
    mine = Endpoint.objects.create(organization=org, url="https://hooks.example.com/in")
    assert api.get(f"/api/v1/webhooks/{mine.pk}/replays/{their_replay.pk}/").status_code == 404
    assert api.post(f"/api/v1/webhooks/{mine.pk}/replays/{their_replay.pk}/cancel/").status_code == 404


# --- the admin -----------------------------------------------------------------------------


def test_the_admin_starts_a_replay_and_shows_its_progress(admin_client, org, quiet_broker):
    endpoint = Endpoint.objects.create(organization=org, url="https://hooks.example.com/in")
    now = timezone.now()
    Event.objects.create(type="agent.step.completed", organization=org, body="{}", created_at=now, fanned_out_at=now)
    change = admin_client.get(reverse("admin:webhooks_endpoint_change", args=[quote(endpoint.pk)])).content.decode()
    page_url = reverse("admin:webhooks_endpoint_replay", args=[quote(endpoint.pk)])
    assert f'href="{page_url}">Replay events</a>' in change

    page = admin_client.get(page_url).content.decode()
    assert 'name="csrfmiddlewaretoken"' in page and 'name="since"' in page and "No replays yet" in page

    bad = admin_client.post(page_url, {"since": "soon", "event_types": "no.such.type"})
    assert bad.status_code == 200 and not Replay.objects.exists()
    assert "Enter a valid date/time" in bad.content.decode()

    since = timezone.localtime(now - datetime.timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S")
    unknown = admin_client.post(page_url, {"since": since, "event_types": "no.such.type"}).content.decode()
    assert "unknown event type(s): no.such.type" in unknown and not Replay.objects.exists()

    started = admin_client.post(page_url, {"since": since}, follow=True).content.decode()
    made = Replay.objects.get()
    assert f"Replay {made.pk} started" in started and made.requested_by.endswith("(admin)")
    assert "running" in started and "0 of 1" in started
    assert f'name="cancel" value="{made.pk}"' in started  # a running replay can be stopped from here

    while replay.run(made.pk):
        pass
    page = admin_client.get(page_url).content.decode()
    assert "done" in page and "1 of 1" in page and "100%" in page


def test_a_running_replay_is_cancelled_from_the_admin_and_the_cli(admin_client, org, quiet_broker):
    endpoint = Endpoint.objects.create(organization=org, url="https://hooks.example.com/in")
    page_url = reverse("admin:webhooks_endpoint_replay", args=[quote(endpoint.pk)])
    first = replay.start(endpoint, timezone.now() - datetime.timedelta(hours=1))
    done = admin_client.post(page_url, {"cancel": str(first.pk)}, follow=True).content.decode()
    first.refresh_from_db()
    assert first.state == "cancelled" and f"Replay {first.pk} cancelled" in done
    again = admin_client.post(page_url, {"cancel": str(first.pk)}, follow=True).content.decode()
    assert "not running: nothing to cancel" in again

    second = replay.start(endpoint, timezone.now() - datetime.timedelta(hours=1))
    run = webhooks("endpoints", "replays", endpoint.pk, "--cancel", str(second.pk))
    second.refresh_from_db()
    assert run.code == 0 and second.state == "cancelled" and f"Replay {second.pk} of {endpoint.pk} cancelled" in run.out
    refused(webhooks("endpoints", "replays", endpoint.pk, "--cancel", str(second.pk)), 1, "not running")
    refused(webhooks("endpoints", "replays", endpoint.pk, "--cancel", "999999"), 2, "--cancel")
