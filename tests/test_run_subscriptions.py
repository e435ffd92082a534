"""Run subscriptions: `POST /api/v1/runs/<id>/subscriptions/` subscribes a URL to one run's
events only, signed and logged like any endpoint's; the subscription ends by itself once the
run's last event (`agent.run.completed`) was delivered to it, or when its TTL passes, and
`GET` on the same URL lists the run's subscriptions with their state."""

import datetime
import html
import io
import json
import os
import re
import subprocess
import sys
import threading
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.db import connection, connections, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook

from agents_hooks.models import ApiKey, Message, Organization, Run, Step
from deliveries.management.commands.webhooks import Command
from deliveries.models import Delivery
from tests.support import ROOT, wait_until
from webhooks.models import Endpoint

HOOK = "http://127.0.0.1:9/hook"  # loopback: allowed in tests (WEBHOOK_ALLOWED_CIDRS), needs no DNS; never POSTed to


def subscriptions_url(run) -> str:
    return f"/api/v1/runs/{run.pk}/subscriptions/"


def finish(obj, status="success"):
    obj.status = status
    obj.save()
    return obj


def envelopes(received) -> list[dict]:
    return [json.loads(r.body) for r in received]


def state_of(api, run, subscription_id: str) -> str:
    listing = api.get(subscriptions_url(run)).json()["results"]
    return next(s["state"] for s in listing if s["id"] == subscription_id)


@pytest.fixture
def run(agent):
    return Run.objects.create(agent=agent)


@pytest.fixture
def subscribe(api, receiver):
    def subscribe(run, path: str, **fields):
        response = api.post(subscriptions_url(run), {"url": receiver.url(path), **fields}, format="json")
        assert response.status_code == 201, response.content
        return response.json()

    return subscribe


# --- what a subscriber receives --------------------------------------------------------------


def test_a_run_subscription_gets_its_run_only_signed_then_ends(live, api, agent, run, make_endpoint, subscribe):
    everything = make_endpoint("/everything")  # an ordinary endpoint: it sees that every event went out
    other_run = Run.objects.create(agent=agent)
    created = subscribe(run, "/run")
    failed_steps_only = subscribe(run, "/run-failures", event_types=["agent.step.failed"])
    assert created["run_id"] == run.pk and created["state"] == "active" and created["ordering"] == "run"
    assert created["secret"].startswith("whsec_") and created["url"].endswith("/run")
    expires = datetime.datetime.fromisoformat(created["expires_at"])
    assert datetime.timedelta(hours=23) < expires - timezone.now() <= datetime.timedelta(hours=24)

    step = finish(Step.objects.create(agent=agent, run=run))
    Message.objects.create(agent=agent, step=step, role="assistant", content="in the run")
    finish(Step.objects.create(agent=agent, run=other_run))  # another run's
    Message.objects.create(agent=agent, content="outside runs")  # the agent's, in no run
    finish(Step.objects.create(agent=agent))  # a step of no run
    finish(run, "completed")  # the run's last event

    live.wait_for(6, path="/everything")
    got = live.wait_for(3, path="/run")
    assert [e["event_type"] for e in envelopes(got)] == [
        "agent.step.completed", "agent.message.sent", "agent.run.completed",
    ]  # fmt: skip
    for request in got:  # Standard Webhooks, checked by the `standardwebhooks` package
        payload = Webhook(created["secret"]).verify(request.body, request.headers)
        assert payload["run_id"] == run.pk
    # Its types leave the run's steps out; the run's end it gets all the same, and ends by it.
    (last,) = live.wait_for(1, path="/run-failures")
    assert json.loads(last.body)["event_type"] == "agent.run.completed"

    for subscription in (created, failed_steps_only):
        wait_until(lambda s=subscription: state_of(api, run, s["id"]) == "ended", message="subscription ended")
    listing = api.get(subscriptions_url(run)).json()["results"]
    assert [s["id"] for s in listing] == [created["id"], failed_steps_only["id"]]
    assert all(s["ended_at"] and "secret" not in s for s in listing)
    # Logged like any endpoint's deliveries, and listed among the webhooks with its run.
    logged = Delivery.objects.filter(endpoint_id=created["id"])
    assert sorted(logged.values_list("status", flat=True)) == ["succeeded"] * 3
    webhooks = {w["id"]: w for w in api.get("/api/v1/webhooks/").json()["results"]}
    assert webhooks[created["id"]]["run_id"] == run.pk and webhooks[created["id"]]["state"] == "ended"
    assert webhooks[everything.pk]["run_id"] is None and webhooks[everything.pk]["state"] == "active"

    # Ended: a later event of the run (a step saved late) goes to the others, not to it.
    theirs = Delivery.objects.filter(endpoint_id__in=[created["id"], failed_steps_only["id"]])
    before = theirs.count()
    late = finish(Step.objects.create(agent=agent, run=run))
    wait_until(lambda: any(e["data"].get("step_id") == late.pk for e in envelopes(live.received("/everything"))))
    assert theirs.count() == before  # fan-out made no delivery of the late event to them
    assert len(live.received("/run")) == 3
    assert api.delete(f"/api/v1/webhooks/{created['id']}/").status_code == 204
    assert [s["id"] for s in api.get(subscriptions_url(run)).json()["results"]] == [failed_steps_only["id"]]


def test_it_ends_when_its_last_delivery_fails_too(live, api, agent, run, receiver, subscribe):
    receiver.script("/refuses", [400])  # a 4xx: failed, not retried
    created = subscribe(run, "/refuses", event_types=["agent.run.completed"])
    finish(run, "failed")
    wait_until(lambda: state_of(api, run, created["id"]) == "ended", message="subscription ended")
    assert Delivery.objects.get(endpoint_id=created["id"]).status == "failed"


def test_past_its_ttl_it_takes_no_new_event(live, api, agent, run, make_endpoint, subscribe):
    make_endpoint("/everything")
    created = subscribe(run, "/short", ttl_seconds=1)
    assert datetime.datetime.fromisoformat(created["expires_at"]) <= timezone.now() + datetime.timedelta(seconds=1)
    wait_until(lambda: state_of(api, run, created["id"]) == "expired", message="subscription expired")

    step = finish(Step.objects.create(agent=agent, run=run))
    wait_until(lambda: any(e["data"].get("step_id") == step.pk for e in envelopes(live.received("/everything"))))
    assert not Delivery.objects.filter(endpoint_id=created["id"]).exists()
    assert live.received("/short") == []


def test_expires_at_may_be_given_instead(api, run):
    at = timezone.now() + datetime.timedelta(minutes=10)
    response = api.post(subscriptions_url(run), {"url": HOOK, "expires_at": at.isoformat()}, format="json")
    assert response.status_code == 201, response.content
    assert datetime.datetime.fromisoformat(response.json()["expires_at"]) == at
    response = api.post(subscriptions_url(run), {"url": HOOK, "ordering": "none"}, format="json")
    assert response.json()["ordering"] == "none"


# --- scope, as fan-out asks it ---------------------------------------------------------------


def test_receives_takes_its_run_only_and_always_the_runs_end():
    subscription = Endpoint(run_id="run-a", agent_id="agent-1", event_types=["agent.step.failed"])
    assert subscription.receives("agent.step.failed", "agent-1", run_id="run-a")
    assert not subscription.receives("agent.step.failed", "agent-1", run_id="run-b")
    assert not subscription.receives("agent.step.failed", "agent-1", run_id=None)  # outside runs
    assert not subscription.receives("agent.step.completed", "agent-1", run_id="run-a")  # not its types
    assert subscription.receives("agent.run.completed", "agent-1", run_id="run-a")  # its run's end, always
    assert not subscription.receives("agent.run.completed", "agent-1", run_id="run-b")
    assert not subscription.receives("endpoint.disabled", None, run_id=None)
    assert Endpoint(event_types=[]).receives("agent.step.completed", "agent-1", run_id="run-b")  # ordinary


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "url"),  # link-local: cloud metadata
        ({"url": "http://10.0.0.1/hook"}, "url"),
        ({"url": HOOK, "ttl_seconds": 0}, "ttl_seconds"),
        ({"url": HOOK, "ttl_seconds": "soon"}, "ttl_seconds"),
        ({"url": HOOK, "ttl_seconds": 31 * 24 * 3600}, "ttl_seconds"),
        ({"url": HOOK, "ttl_seconds": 60, "expires_at": "2030-01-01T00:00:00Z"}, "ttl_seconds"),
        ({"url": HOOK, "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"url": HOOK, "expires_at": "tomorrow"}, "expires_at"),
        ({"url": HOOK, "event_types": ["agent.nothing.happened"]}, "event_types"),
        ({"url": HOOK, "filter": {"path": "data.status", "gt": "x"}}, "filter"),
        ({"url": HOOK, "headers": {"webhook-id": "x"}}, "headers"),
        ({"url": HOOK, "ordering": "sometimes"}, "ordering"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(api, run, body, field):
    response = api.post(subscriptions_url(run), body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not Endpoint.objects.exists()


def test_another_organizations_run_is_a_404_and_an_ended_run_a_409(api, run):
    globex = Organization.objects.create(name="Globex")
    theirs = APIClient(HTTP_AUTHORIZATION=f"Bearer {ApiKey.issue(globex)[1]}")
    for run_id in (run.pk, "run-nope", "run-\x00"):
        response = theirs.post(f"/api/v1/runs/{run_id}/subscriptions/", {"url": HOOK}, format="json")
        assert response.status_code == 404 and "no run" in response.json()["detail"]
    assert theirs.get(subscriptions_url(run)).status_code == 404
    finish(run, "completed")
    response = api.post(subscriptions_url(run), {"url": HOOK}, format="json")
    assert response.status_code == 409 and "already ended" in response.json()["detail"]
    assert not Endpoint.objects.exists()


def test_a_run_ending_while_it_is_subscribed_to_is_seen(transactional_db, api, run):
    """The run ends in a transaction that has not committed when the subscription is asked
    for: the API waits for it and answers 409, instead of making a subscription that its
    run's last event, fanned out without it, would never end."""
    ending, ended = threading.Event(), threading.Event()

    def end_the_run():
        try:
            with transaction.atomic():
                finish(Run.objects.select_for_update().get(pk=run.pk), "completed")
                ending.set()
                ended.wait(10)  # until the API's request is seen waiting for this row
        finally:
            connections.close_all()

    thread = threading.Thread(target=end_the_run)
    thread.start()
    try:
        assert ending.wait(10)
        answers = []

        def ask():
            try:
                answers.append(api.post(subscriptions_url(run), {"url": HOOK}, format="json"))
            finally:
                connections.close_all()

        asking = threading.Thread(target=ask)
        asking.start()
        wait_until(lambda: waiting_for_a_lock() > 0, message="the API waits for the run")
    finally:
        ended.set()
        thread.join(10)
    asking.join(10)
    (response,) = answers
    assert response.status_code == 409 and "already ended (completed)" in response.json()["detail"]
    assert not Endpoint.objects.exists()


def waiting_for_a_lock() -> int:
    """Sessions of this database waiting for a row lock in a SELECT ... FOR UPDATE (the API's)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid() AND query ILIKE '%%FOR UPDATE%%'"
        )
        return cursor.fetchone()[0]


# --- the operator's views: admin, CLI, settings -------------------------------------------------


def test_the_admin_and_the_cli_show_run_subscriptions_with_their_state(admin_client, api, run):
    created = api.post(subscriptions_url(run), {"url": HOOK + "/run"}, format="json").json()
    ended = api.post(subscriptions_url(run), {"url": HOOK + "/ended"}, format="json").json()
    Endpoint.objects.filter(pk=ended["id"]).update(ended_at=timezone.now())
    Endpoint.objects.create(organization_id=run.agent.organization_id, url=HOOK + "/all-events")

    page = admin_client.get(reverse("admin:webhooks_endpoint_changelist") + "?scope=run").content.decode()
    assert created["id"] in page and ended["id"] in page and "all-events" not in page
    assert run.pk in page and "ended" in page
    change = admin_client.get(reverse("admin:webhooks_endpoint_change", args=[quote(created["id"])])).content.decode()
    assert "Run subscription" in change and run.pk in change and "active (expires" in change

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), mock.patch.object(connections, "close_all"):
        Command().run_from_argv(["manage.py", "webhooks", "endpoints", "list", "--run", run.pk])
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, out.getvalue()  # the header and its two
    assert any(created["id"] in line and "active" in line and f"run {run.pk}" in line for line in lines)
    assert any(ended["id"] in line and "ended" in line for line in lines)


def admin_form(run, **fields) -> dict:
    """The endpoint add page as a browser posts it, with `run` chosen."""
    return {
        "organization": run.agent.organization_id, "kind": "push", "url": HOOK, "agent": "", "description": "",
        "event_types": "", "headers": "", "rate_limit": "", "retry_schedule": "", "ordering": "run",
        "payload": "full", "is_active": "on", "run": run.pk, "expires_at_0": "", "expires_at_1": "",
    } | fields  # fmt: skip


def admin_errors(response) -> dict[str, list[str]]:
    assert response.status_code == 200, "the form was accepted"
    return {name: list(errors) for name, errors in response.context["adminform"].form.errors.items()}


def test_a_run_subscription_is_made_from_the_runs_admin_page(admin_client, run, django_user_model):
    run_page = reverse("admin:agents_hooks_run_change", args=[quote(run.pk)])
    page = admin_client.get(run_page).content.decode()
    link = re.search(r'<a href="([^"]+)">Subscribe a URL to this run</a>', page)
    assert link, page
    form = admin_client.get(html.unescape(link[1])).context["adminform"].form
    assert (form.initial["run"], form.initial["ordering"]) == (run.pk, "run")  # chosen by the link

    response = admin_client.post(reverse("admin:webhooks_endpoint_add"), admin_form(run))
    assert response.status_code == 302, admin_errors(response)
    made = Endpoint.objects.get(run=run)
    assert made.agent_id == run.agent_id and made.ordering == "run" and made.state == "active"
    ttl = made.expires_at - timezone.now()
    assert datetime.timedelta(hours=23, minutes=59) < ttl <= datetime.timedelta(hours=24)  # the setting's default
    page = admin_client.get(run_page).content.decode()
    assert made.pk in page and "active" in page  # the run's page lists it with its state
    made.ended_at = timezone.now()
    made.save()
    assert "ended" in admin_client.get(run_page).content.decode()

    # Someone who may see runs but not endpoints does not see the subscriptions' URLs.
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_run"))
    client = Client()
    client.force_login(viewer)
    page = client.get(run_page)
    assert page.status_code == 200 and made.pk not in page.content.decode() and HOOK not in page.content.decode()


def test_the_admin_refuses_what_the_api_refuses_for_a_run_subscription(admin_client, org, run):
    add = reverse("admin:webhooks_endpoint_add")
    other_org = Organization.objects.create(name="Other")
    theirs = Run.objects.create(agent=other_org.agents.create(name="theirs"))
    other_agent = org.agents.create(name="second")
    past = (timezone.now() - datetime.timedelta(hours=1)).strftime("%Y-%m-%d")
    far = (timezone.now() + datetime.timedelta(days=40)).strftime("%Y-%m-%d")
    cases = [
        (admin_form(theirs, organization=org.pk), "run", "belongs to another organization"),
        (admin_form(run, agent=other_agent.pk), "agent", "takes its run's agent"),
        (admin_form(run, kind="pull", url=""), "kind", "choose push"),
        (admin_form(run, expires_at_0=past, expires_at_1="00:00:00"), "expires_at", "Must be in the future"),
        (admin_form(run, expires_at_0=far, expires_at_1="00:00:00"), "expires_at", "At most 2592000 seconds (30 days)"),
        (
            admin_form(run, expires_at_0=far, expires_at_1="00:00:00") | {"run": ""},
            "expires_at",
            "Only a run subscription",
        ),
    ]
    for form, field, words in cases:
        errors = admin_errors(admin_client.post(add, form))
        assert list(errors) == [field] and words in errors[field][0], (field, errors)
    finish(run, "completed")
    errors = admin_errors(admin_client.post(add, admin_form(run)))
    assert "already ended (completed)" in errors["run"][0]
    assert (
        "takes no new subscription"
        in admin_client.get(reverse("admin:agents_hooks_run_change", args=[quote(run.pk)])).content.decode()
    )
    assert not Endpoint.objects.exists()


def test_a_run_subscription_posted_to_the_admin_without_an_ordering_is_ordered(admin_client, run):
    form = admin_form(run)
    del form["ordering"]  # a script's post: the API's default
    assert admin_client.post(reverse("admin:webhooks_endpoint_add"), form).status_code == 302
    assert Endpoint.objects.get(run=run).ordering == "run"


@pytest.mark.parametrize("value", ["0", "721", "a day"])
def test_a_bad_default_ttl_stops_start_up_naming_it(value):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webhooks_project.settings"}
    env["WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS"] = value
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS" in result.stderr.splitlines()[-1], result.stderr[-500:]
