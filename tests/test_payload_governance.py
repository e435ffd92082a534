"""Payloads expire after their retention period, and are erased on request; neither comes back.

Retention removes event and delivery payloads and response excerpts, leaving the rows (ids,
types, statuses, times) so the log and its counts still add up. Erasing an agent removes its
payloads now, finishes its undelivered deliveries `failed` saying why, records who asked, and
touches nothing of another agent. Every surface (API, feed, admin, CLI) then says "expired"
or "erased" instead of the content.
"""

import datetime
import io
import json
import os
import subprocess
import sys
import threading
import types

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from agents_hooks.models import Agent, ApiKey, Organization
from deliveries import retention, store
from deliveries.events import publish
from deliveries.models import Attempt, Delivery, Event, PayloadRemoval
from deliveries.recovery import resume_endpoint
from tests.support import ROOT, logged_delivery, wait_until, wait_until_settled
from webhooks.models import Endpoint

SECRET = "the private words of a user"
OLD = datetime.timedelta(days=40)


def everything_stored() -> str:
    """Every payload-bearing column of the log, as one string to search."""
    parts = [
        *Event.objects.values_list("body", flat=True),
        *map(json.dumps, Event.objects.values_list("targets", flat=True)),
    ]
    parts += [b or "" for b in Delivery.objects.values_list("body", flat=True)]
    parts += Attempt.objects.values_list("response_body", flat=True)
    return "\n".join(parts)


def cli(*args) -> str:
    out = io.StringIO()
    call_command("webhooks", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("ops", password="pw", is_staff=True, is_superuser=True)


def answered(endpoint, *, age, agent=None, status="succeeded", secret=SECRET):
    """A delivery of an event carrying `secret`, whose receiver echoed it back."""
    delivery = logged_delivery(endpoint, status, codes=(200,), age=age, agent=agent, data={"text": secret})
    delivery.attempts.update(response_body=f"got {secret}")
    return delivery


# --- retention ------------------------------------------------------------------------------


def test_retention_removes_old_payloads_and_keeps_the_log(org, agent, make_endpoint, api):
    endpoint = make_endpoint()
    old = answered(endpoint, age=OLD, agent=agent)
    held = logged_delivery(endpoint, "pending", codes=(), age=OLD, agent=agent, data={"text": SECRET})
    Delivery.objects.filter(pk=held.pk).update(next_attempt_at=None)  # held 40 days by a disabled endpoint
    recent = answered(endpoint, age=datetime.timedelta(days=29), agent=agent, secret="recent words")
    before = api.get("/api/v1/deliveries/").json()["count"], api.get("/api/v1/events/").json()["count"]

    assert retention.expire() == 2

    # The rows stay: the log still adds up.
    assert (api.get("/api/v1/deliveries/").json()["count"], api.get("/api/v1/events/").json()["count"]) == before
    event = api.get(f"/api/v1/events/{old.event_id}/").json()
    assert event["payload"] is None and event["payload_removed"] == "expired"
    assert event["event_type"] == "agent.step.completed" and event["agent"] == agent.pk
    shown = api.get(f"/api/v1/deliveries/{old.pk}/").json()
    assert shown["status"] == "succeeded" and shown["payload_removed"] == "expired"
    assert shown["attempts"][0]["status_code"] == 200 and shown["attempts"][0]["response_body"] == ""
    # The held delivery can never be sent now: it finished failed, saying why.
    held = api.get(f"/api/v1/deliveries/{held.pk}/").json()
    assert held["status"] == "failed" and "payload expired" in held["last_error"]
    assert SECRET not in everything_stored()

    # A recent one is untouched.
    kept = api.get(f"/api/v1/events/{recent.event_id}/").json()
    assert kept["payload"]["data"] == {"text": "recent words"} and kept["payload_removed"] == ""
    assert Attempt.objects.get(delivery=recent).response_body == "got recent words"

    # Recorded, and the next pass finds nothing more (it starts where this one ended).
    (record,) = PayloadRemoval.objects.all()
    assert (record.kind, record.events, record.deliveries_failed, record.requested_by) == ("expired", 2, 1, "retention")
    assert retention.expire() == 0


def test_a_retention_pass_and_an_erasure_at_once_remove_each_payload_once(
    transactional_db, org, agent, make_endpoint, monkeypatch
):
    """Both over the same 60 events, in pages of 7 taken in different orders (by time, by id),
    on two connections: neither fails (each page's UPDATEs lock rows in the same order, so they
    queue rather than deadlock), and each event is counted by exactly one of them."""
    monkeypatch.setattr(retention, "BATCH", 7)
    endpoint = make_endpoint()
    for _ in range(60):
        answered(endpoint, age=OLD, agent=agent)
    results, problems = {}, []
    both_started, remove, started = threading.Barrier(2, timeout=20), retention._remove, set()

    def remove_once_both_began(*args):  # each thread's first page waits for the other's: they overlap
        if threading.get_ident() not in started:
            started.add(threading.get_ident())
            both_started.wait()
        return remove(*args)

    monkeypatch.setattr(retention, "_remove", remove_once_both_began)

    def run(name, remove):
        try:
            results[name] = remove()
        except Exception as exc:  # pragma: no cover - reported below
            problems.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=run, args=("expired", retention.expire)),
        threading.Thread(target=run, args=("erased", lambda: retention.erase(requested_by="t", agent=agent).events)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not problems, problems
    assert results["expired"] + results["erased"] == 60, results
    assert not Event.objects.filter(payload_removed="").exists() and SECRET not in everything_stored()


def test_an_organization_may_keep_payloads_for_less_never_for_more(org, make_endpoint, settings):
    org.payload_retention_days = 7
    org.full_clean()
    org.save()
    other = Organization.objects.create(name="Other")
    mine = answered(make_endpoint(), age=datetime.timedelta(days=10))
    theirs = logged_delivery(
        type(mine.endpoint).objects.create(organization=other, url="https://example.com/h"),
        age=datetime.timedelta(days=10), data={"text": SECRET},
    )  # fmt: skip

    assert retention.expire() == 1
    assert Event.objects.get(pk=mine.event_id).payload_removed == "expired"
    assert Event.objects.get(pk=theirs.event_id).payload_removed == ""

    org.payload_retention_days = 31  # longer than WEBHOOK_PAYLOAD_RETENTION_DAYS (30): refused, naming the field
    with pytest.raises(Exception) as refused:
        org.full_clean()
    assert "payload_retention_days" in refused.value.message_dict
    assert "at most 30 days" in refused.value.message_dict["payload_retention_days"][0]


def test_the_admin_refuses_a_longer_organization_retention(org, staff, client):
    client.force_login(staff)
    url = reverse("admin:agents_hooks_organization_change", args=[org.pk])
    answer = client.post(url, {"name": org.name, "payload_retention_days": "90"})
    assert answer.status_code == 200  # the form again, with the error
    assert "at most 30 days" in answer.content.decode()
    answer = client.post(url, {"name": org.name, "payload_retention_days": "0"})
    assert "greater than or equal to 1" in answer.content.decode()
    client.post(url, {"name": org.name, "payload_retention_days": "14"})
    assert Organization.objects.get(pk=org.pk).payload_retention_days == 14


# --- erasure --------------------------------------------------------------------------------


def test_erasing_an_agent_removes_its_payloads_everywhere_and_nothing_of_another(live, org, api, make_endpoint):
    alice = Agent.objects.create(organization=org, name="alice")
    bob = Agent.objects.create(organization=org, name="bob")
    endpoint = make_endpoint("/hook")
    Endpoint.objects.filter(pk=endpoint.pk).disable("receiver down")  # held: undelivered when the erasure comes
    delivered = answered(endpoint, age=datetime.timedelta(hours=1), agent=alice)
    held = {}
    for who in (alice, bob):
        held[who] = logged_delivery(
            endpoint, "pending", codes=(), agent=who, event_type="agent.custom.thing",
            data={"text": f"{SECRET} of {who.name}"},
        )  # fmt: skip
    Delivery.objects.filter(pk__in=[d.pk for d in held.values()]).update(next_attempt_at=None)
    events = {who: d.event for who, d in held.items()}

    answer = api.post(f"/api/v1/agents/{alice.pk}/erase/", {"reason": "user asked, ticket 42"}, format="json")
    assert answer.status_code == 200, answer.content
    record = answer.json()
    assert record["kind"] == "erased" and record["agent_id"] == alice.pk
    assert record["events"] == 2 and record["deliveries_failed"] == 1 and record["attempts_cleared"] == 1
    assert Agent.objects.filter(pk=alice.pk).exists()  # the agent itself stays
    assert record["requested_by"].startswith("API key ahk_") and record["reason"] == "user asked, ticket 42"

    # Alice's: nothing left, and the API says so.
    shown = api.get(f"/api/v1/events/{events[alice].pk}/").json()
    assert shown["payload"] is None and shown["payload_removed"] == "erased"
    (pending,) = api.get("/api/v1/deliveries/", {"event": events[alice].pk}).json()["results"]
    assert pending["status"] == "failed" and "payload erased" in pending["last_error"]
    assert api.get(f"/api/v1/deliveries/{delivered.pk}/").json()["attempts"][0]["response_body"] == ""
    assert f"{SECRET} of alice" not in everything_stored() and f"got {SECRET}" not in everything_stored()

    # Bob's: untouched, and still delivered once the endpoint is back; Alice's never is.
    assert api.get(f"/api/v1/events/{events[bob].pk}/").json()["payload"]["data"] == {"text": f"{SECRET} of bob"}
    resume_endpoint(Endpoint.objects.get(pk=endpoint.pk))
    (got,) = live.wait_for(1, path="/hook")
    assert json.loads(got.body)["data"] == {"text": f"{SECRET} of bob"}
    wait_until_settled()
    assert len(live.received("/hook")) == 1

    # A retry of Alice's is refused, saying why; the feed shows her event without its body.
    refused = api.post(f"/api/v1/deliveries/{pending['id']}/retry/", {}, format="json")
    assert refused.status_code == 409 and "erased" in refused.json()["detail"]
    # (The feed shows an event once every older transaction in the cluster has ended: waited for.)
    feed = {}
    wait_until(
        lambda: (
            feed.update((e["id"], e) for e in api.get("/api/v1/events/feed/").json()["events"])
            or (events[alice].pk in feed and events[bob].pk in feed)
        ),
        timeout=30,
        message="both events in the feed",
    )
    assert feed[events[alice].pk]["body"] is None and feed[events[alice].pk]["payload_removed"] == "erased"
    assert SECRET in feed[events[bob].pk]["body"]


def test_an_erasure_longer_than_a_request_goes_on_in_a_worker(live, org, agent, make_endpoint, api, monkeypatch):
    """Past its time in the request (here none at all), the API answers 202 with the record
    `running`, and the suite's worker finishes it; the record says so at its own URL, which
    another organization's key cannot read."""
    monkeypatch.setattr(retention, "IN_REQUEST_SECONDS", 0)  # this process only: the worker has no limit
    endpoint = make_endpoint()
    for _ in range(30):
        answered(endpoint, age=datetime.timedelta(hours=1), agent=agent)

    answer = api.post(f"/api/v1/agents/{agent.pk}/erase/", {"reason": "ticket 7"}, format="json")
    assert answer.status_code == 202, answer.content
    assert (answer.json()["state"], answer.json()["finished_at"], answer.json()["events"]) == ("running", None, 0)
    url = f"/api/v1/payload-removals/{answer.json()['id']}/"
    wait_until(lambda: api.get(url).json()["state"] == "finished", timeout=30, message="a worker finished it")
    record = api.get(url).json()
    assert record["events"] == 30 and record["attempts_cleared"] == 30 and record["reason"] == "ticket 7"
    assert SECRET not in everything_stored()
    assert [r["id"] for r in api.get("/api/v1/payload-removals/").json()["results"]] == [record["id"]]
    other = APIClient(HTTP_AUTHORIZATION=f"Bearer {ApiKey.issue(Organization.objects.create(name='Other'))[1]}")
    assert other.get(url).status_code == 404
    for bad in ("abc", "99999999999999999999999", "%00"):  # not an id, out of range, NUL: a 404, never a 500
        assert api.get(f"/api/v1/payload-removals/{bad}/").status_code == 404, bad


def test_an_erasure_no_worker_took_up_is_finished_by_the_retention_pass(org, agent, make_endpoint, settings):
    """The broker lost the message that hands an erasure to a worker (here: never sent, as
    nothing commits in this test): the hourly retention pass goes on with it."""
    settings.WEBHOOK_PAYLOAD_RETENTION_DAYS = 0  # nothing expires: only the erasure is done
    endpoint = make_endpoint()
    for _ in range(3):
        answered(endpoint, age=datetime.timedelta(hours=1), agent=agent)
    record = retention.erase(agent=agent, requested_by="test", seconds=0)
    assert record.finished_at is None and record.events == 0 and SECRET in everything_stored()

    retention.expire()
    record.refresh_from_db()
    assert record.finished_at is not None and record.events == 3 and SECRET not in everything_stored()
    retention.expire()  # finished: not taken up again
    record.refresh_from_db()
    assert record.events == 3


def test_an_erasure_stopped_by_a_database_error_keeps_its_count_and_goes_on(
    org, agent, make_endpoint, api, monkeypatch, django_capture_on_commit_callbacks
):
    """The third page fails (a deadlock, say): the API answers 202, not a 500, with the two
    pages done counted; whoever goes on next counts on from there."""
    monkeypatch.setattr(retention, "BATCH", 5)
    endpoint = make_endpoint()
    for _ in range(14):
        answered(endpoint, age=datetime.timedelta(hours=1), agent=agent)
    remove, calls = retention._remove, []

    def fails_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OperationalError("deadlock detected")
        return remove(*args)

    monkeypatch.setattr(retention, "_remove", fails_third)
    sent = []
    monkeypatch.setattr(retention.current_app, "send_task", lambda name, **options: sent.append((name, options)))
    with django_capture_on_commit_callbacks(execute=True):
        answer = api.post(f"/api/v1/agents/{agent.pk}/erase/", {}, format="json")
    assert answer.status_code == 202 and answer.json()["events"] == 10, answer.content
    # A worker goes on, a minute later: an error that came back every time would not be a busy loop.
    assert [(name, options["args"], options["countdown"]) for name, options in sent] == [
        (retention.CONTINUE_TASK, [answer.json()["id"]], 60)
    ]
    record = PayloadRemoval.objects.get()
    assert (record.events, record.finished_at, record.lease_until) == (10, None, None)  # let go of

    retention.continue_erasure(record.pk)
    record.refresh_from_db()
    assert record.events == 14 and record.finished_at is not None and SECRET not in everything_stored()


def test_one_process_at_a_time_works_on_an_erasure(org, agent, make_endpoint):
    """An erasure whose lease another process holds is left to it; once that lease ran out (the
    process died), the next one goes on."""
    endpoint = make_endpoint()
    answered(endpoint, age=datetime.timedelta(hours=1), agent=agent)
    record = retention.erase(agent=agent, requested_by="test", seconds=0)
    PayloadRemoval.objects.filter(pk=record.pk).update(lease_until=timezone.now() + datetime.timedelta(minutes=1))
    retention.continue_erasure(record.pk)
    assert PayloadRemoval.objects.get(pk=record.pk).events == 0 and SECRET in everything_stored()

    PayloadRemoval.objects.filter(pk=record.pk).update(lease_until=timezone.now() - datetime.timedelta(seconds=1))
    retention.continue_erasure(record.pk)
    record.refresh_from_db()
    assert record.events == 1 and record.finished_at is not None and record.lease_until is None


def test_an_attempt_in_flight_during_an_erasure_brings_nothing_back(org, agent, make_endpoint):
    endpoint = make_endpoint()
    event = publish("agent.custom.thing", organization=org, agent=agent, data={"text": SECRET})
    Delivery.objects.create(event=event, endpoint=endpoint, created_at=event.created_at, next_attempt_at=timezone.now())
    (leased,) = store.claim(list(Delivery.objects.filter(event=event).values_list("pk", flat=True)))

    record = retention.erase(agent=agent, requested_by="test")
    assert record.deliveries_failed == 1 and record.settle_by is not None

    # The POST that was out answers afterwards, echoing the payload: its outcome is not written
    # (the lease is gone), its attempt row is, and settling clears its excerpt.
    request = types.SimpleNamespace(url=endpoint.url, headers={"webhook-id": event.pk})
    response = types.SimpleNamespace(
        status_code=200, duration_ms=5, body=f"echo {SECRET}", error="", retry_after=None, refused=False
    )
    store.record([types.SimpleNamespace(delivery=leased, request=request, started=timezone.now(), response=response)])
    delivery = Delivery.objects.get(pk=leased.pk)
    assert delivery.status == "failed" and "erased" in delivery.last_error
    assert retention.settle(now=record.settle_by) == 1
    assert SECRET not in everything_stored()
    assert PayloadRemoval.objects.get(pk=record.pk).settled_at is not None


def test_erasure_input_and_who_may_ask(org, agent, api, staff, django_user_model):
    other = Organization.objects.create(name="Other")
    theirs = Agent.objects.create(organization=other, name="theirs")
    publish("agent.custom.thing", organization=other, agent=theirs, data={"text": SECRET})

    assert api.post(f"/api/v1/agents/{theirs.pk}/erase/", {}, format="json").status_code == 404  # not yours
    bad = api.post(f"/api/v1/agents/{agent.pk}/erase/", {"reason": "x" * 501}, format="json")
    assert bad.status_code == 400 and "reason" in bad.json()
    bad = api.post(f"/api/v1/agents/{agent.pk}/erase/", {"reason": ["a"]}, format="json")
    assert bad.status_code == 400 and "reason" in bad.json()
    assert not PayloadRemoval.objects.exists()

    # A whole organization: staff only.
    url = f"/api/v1/organizations/{other.pk}/erase/"
    refused = api.post(url, {}, format="json")
    assert refused.status_code == 403 and "staff" in refused.json()["detail"]
    someone = APIClient()
    someone.force_login(django_user_model.objects.create_user("someone", password="pw"))
    assert someone.post(url, {}, format="json").status_code == 403
    ops = APIClient()
    ops.force_login(staff)
    assert ops.post("/api/v1/organizations/org-nope/erase/", {}, format="json").status_code == 404
    done = ops.post(url, {"reason": "contract ended"}, format="json")
    assert done.status_code == 200 and done.json()["events"] == 1 and done.json()["requested_by"] == "user ops"
    assert SECRET not in everything_stored()
    assert Event.objects.filter(organization=other, payload_removed="erased").count() == 1


def test_erased_payloads_are_not_shown_in_the_admin_or_the_cli(org, agent, make_endpoint, staff, client):
    delivery = answered(make_endpoint(), age=datetime.timedelta(hours=1), agent=agent)
    client.force_login(staff)
    event_page = reverse("admin:deliveries_event_change", args=[delivery.event_id])
    assert SECRET in client.get(event_page).content.decode()

    # The admin action: a confirmation page first, then the erasure, recorded with the admin user.
    changelist = reverse("admin:agents_hooks_agent_changelist")
    confirm = client.post(changelist, {"action": "erase_payloads", "_selected_action": [agent.pk]})
    assert confirm.status_code == 200 and "cannot be undone" in confirm.content.decode()
    assert Event.objects.get(pk=delivery.event_id).payload_removed == ""
    done = client.post(
        changelist, {"action": "erase_payloads", "_selected_action": [agent.pk], "confirmed": "yes", "reason": "asked"},
        follow=True,
    )  # fmt: skip
    assert "Erased the payloads of 1 event" in done.content.decode()
    assert PayloadRemoval.objects.get().requested_by == "user ops"

    for page in (
        event_page,
        reverse("admin:deliveries_delivery_change", args=[delivery.pk]),
        reverse("admin:deliveries_attempt_change", args=[delivery.attempts.get().pk]),
    ):
        html = client.get(page).content.decode()
        assert SECRET not in html and "payload erased" in html, page

    shown = cli("events", "show", delivery.event_id)
    assert SECRET not in shown and "payload erased" in shown
    as_json = json.loads(cli("events", "show", delivery.event_id, "--json"))
    assert as_json["payload"] is None and as_json["payload_removed"] == "erased"
    assert "payload erased" in cli("deliveries", "show", str(delivery.pk))
    assert "asked" in cli("payloads", "removals")
    removals = client.get(reverse("admin:deliveries_payloadremoval_changelist")).content.decode()
    assert f"agent {agent.pk}" in removals and "user ops" in removals


def test_the_cli_erases_and_says_what_is_wrong(org, agent):
    publish("agent.custom.thing", organization=org, agent=agent, data={"text": SECRET})
    with pytest.raises(SystemExit) as bad:
        call_command("webhooks", "payloads", "erase", stdout=io.StringIO(), stderr=io.StringIO())
    assert bad.value.code == 2
    with pytest.raises(SystemExit) as bad:
        call_command(
            "webhooks", "payloads", "erase", "--agent", "agent-nope", stdout=io.StringIO(), stderr=io.StringIO()
        )
    assert bad.value.code == 2
    out = cli("payloads", "erase", "--agent", agent.pk, "--reason", "ticket 7", "--by", "alice")
    assert "Erased the payloads of 1 event of agent" in out
    assert PayloadRemoval.objects.get().requested_by == "cli alice"
    assert SECRET not in everything_stored()


# --- the benchmark, small -------------------------------------------------------------------


@pytest.mark.skipif(connection.vendor != "postgresql", reason="bench/purge.py fills PostgreSQL with SQL")
def test_the_purge_benchmark_runs(db):
    from bench import purge

    figures = purge.run(rows=600, batch=50)
    assert figures["events"] == figures["expired"] > 0
    assert figures["longest_batch_s"] > 0
    assert not Event.objects.filter(payload_removed="").exists()
    assert not Attempt.objects.exclude(response_body="").exists()
    assert not Delivery.objects.filter(body__isnull=False).exists()


@pytest.mark.parametrize("value", ["-1", "a month"])
def test_a_bad_retention_setting_stops_start_up_naming_it(value):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webhooks_project.settings", "WEBHOOK_PAYLOAD_RETENTION_DAYS": value}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "WEBHOOK_PAYLOAD_RETENTION_DAYS" in result.stderr.splitlines()[-1], result.stderr[-500:]
