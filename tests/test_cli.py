"""The operator's command line, `manage.py webhooks`: what an operator types and reads, what a
script parses, and the exit status either relies on (0 done, 1 refused or failed, 2 bad
arguments). Actions are checked by their effect: the delivery due, the POST that arrived."""

import datetime
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from unittest import mock

import pytest
from django.db import connections
from django.utils import timezone

from agents_hooks.models import Organization, Step
from deliveries import recovery
from deliveries.management.commands.webhooks import Command
from deliveries.models import Delivery, DeliveryStatus
from tests.receiver import Reply
from tests.support import ROOT, child_database_url, logged_delivery, wait_until
from webhooks.models import Endpoint

TOKEN_URL = "https://hooks.example.com/in/T0K3Nabcdef123456?key=s3cret"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def webhooks(*args: str) -> Run:
    """Run `manage.py webhooks ARGS` as the command line does (its parser, its exit status), in
    this process and this test's transaction (which closing the connections would end)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err), mock.patch.object(connections, "close_all"):
        try:
            Command().run_from_argv(["manage.py", "webhooks", *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Run(code, out.getvalue(), err.getvalue())


def refused(run: Run, code: int, *words: str) -> None:
    """An error as people should see it: that exit status, one line on stderr saying what is
    wrong, no traceback, nothing on stdout."""
    assert run.code == code, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert "Traceback" not in run.err and run.out == ""
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def globex(db):
    return Organization.objects.create(name="Globex")


@pytest.fixture
def two_orgs(org, globex):
    acme = Endpoint.objects.create(
        organization=org, url=TOKEN_URL, description="Acme prod", headers={"Authorization": "Bearer xyz-123"}
    )
    other = Endpoint.objects.create(organization=globex, url="https://globex.example.com/hooks")
    return acme, other


# --- endpoints ------------------------------------------------------------------------------


def test_endpoints_list_shows_every_organization_and_narrows_to_one(two_orgs):
    acme, other = two_orgs
    logged_delivery(acme, "succeeded")
    logged_delivery(acme, "dead", (500, 500))

    run = webhooks("endpoints", "list")
    assert run.code == 0
    header, *rows = run.out.splitlines()
    assert header.split()[:3] == ["ID", "ORGANIZATION", "URL"]
    (acme_row,) = [r for r in rows if r.startswith(acme.pk)]
    assert "Acme" in acme_row and "50% of 2" in acme_row and "dead" in acme_row
    assert any(r.startswith(other.pk) and "Globex" in r for r in rows)
    # A receiver's token in the path or the query stays off the screen in a list.
    assert "T0K3N" not in run.out and "s3cret" not in run.out

    only = webhooks("endpoints", "list", "--organization", "Globex", "--json").json()
    assert [(e["id"], e["organization"]) for e in only] == [(other.pk, other.organization_id)]
    assert webhooks("endpoints", "list", "--organization", acme.organization_id, "--json").json()[0]["id"] == acme.pk


def test_endpoints_show_never_prints_a_credential_or_the_secret(two_orgs):
    acme, _ = two_orgs
    run = webhooks("endpoints", "show", acme.pk)
    assert run.code == 0
    assert f"organization:       Acme ({acme.organization_id})" in run.out
    assert "Authorization: [redacted]" in run.out
    shown = webhooks("endpoints", "show", acme.pk, "--json").json()
    assert shown["headers"] == {"Authorization": "[redacted]"} and shown["organization"] == acme.organization_id
    for output in (run.out, json.dumps(shown)):
        assert "xyz-123" not in output and acme.secret not in output


def test_enable_and_disable_hold_and_release_deliveries(org, make_endpoint):
    endpoint = make_endpoint()
    run = webhooks("endpoints", "disable", endpoint.pk, "--reason", "receiver migration")
    assert run.code == 0 and "disabled (receiver migration)" in run.out
    endpoint.refresh_from_db()
    assert not endpoint.is_active and endpoint.disabled_reason == "receiver migration"
    assert "already disabled" in webhooks("endpoints", "disable", endpoint.pk).out

    held = logged_delivery(endpoint, "pending", ())
    Delivery.objects.filter(pk=held.pk).update(next_attempt_at=None)  # as the worker holds it
    run = webhooks("endpoints", "enable", endpoint.pk, "--json")
    assert run.code == 0
    assert run.json() == [{"endpoint": endpoint.pk, "enabled": True, "released": 1}]
    held.refresh_from_db()
    assert held.next_attempt_at is not None and held.next_attempt_at <= timezone.now()


def test_enable_checks_every_id_before_changing_anything(org, make_endpoint):
    endpoint = make_endpoint(is_active=False)
    refused(webhooks("endpoints", "enable", endpoint.pk, "ep_nope"), 2, "no endpoint 'ep_nope'")
    endpoint.refresh_from_db()
    assert not endpoint.is_active


def test_rotate_secret_prints_the_new_secret_once(two_orgs):
    acme, _ = two_orgs
    old = acme.secret
    run = webhooks("endpoints", "rotate-secret", acme.pk, "--grace", "2h")
    assert run.code == 0
    acme.refresh_from_db()
    assert f"New secret for {acme.pk}: {acme.secret}" in run.out and acme.secret != old
    assert len(acme.signing_keys()) == 2  # the old one signs on during the grace period
    assert acme.previous_secret_expires_at - timezone.now() < datetime.timedelta(hours=2, seconds=5)

    body = webhooks("endpoints", "rotate-secret", acme.pk, "--json").json()
    acme.refresh_from_db()
    assert body["secret"] == acme.secret and body["endpoint"] == acme.pk and body["previous_secret_expires_at"]
    assert acme.secret not in webhooks("endpoints", "show", acme.pk).out


def test_testing_a_disabled_endpoint_is_refused(org, make_endpoint):
    endpoint = make_endpoint(is_active=False)
    refused(webhooks("endpoints", "test", endpoint.pk), 1, "disabled", f"webhooks endpoints enable {endpoint.pk}")
    assert not Delivery.objects.exists()


def test_endpoints_test_reaches_the_receiver(live, make_endpoint):
    endpoint = make_endpoint("/cli-test")
    run = webhooks("endpoints", "test", endpoint.pk, "--wait", "10")
    assert run.code == 0, run
    assert f"to {endpoint.pk}" in run.out and ": HTTP 200 in " in run.out
    (request,) = live.received("/cli-test")
    assert json.loads(request.body)["event_type"] == "webhook.test"

    live.script("/cli-test", [Reply(400, body=b"no such tenant")])
    run = webhooks("endpoints", "test", endpoint.pk, "--json")
    assert run.code == 1 and "did not accept" in run.err
    answer = run.json()
    assert answer["attempt"]["status_code"] == 400 and answer["delivery"]["status"] == "failed"


# --- deliveries -----------------------------------------------------------------------------


@pytest.fixture
def log(two_orgs, agent):
    """A delivery log across two organizations, by age."""
    acme, other = two_orgs
    hour = datetime.timedelta(hours=1)
    return {
        "ok": logged_delivery(acme, "succeeded", age=hour / 2, agent=agent),
        "dead": logged_delivery(acme, "dead", (500, 502, 503), age=hour),
        "old_dead": logged_delivery(acme, "dead", (500,), age=30 * hour),
        "failed": logged_delivery(acme, "failed", (404,), age=2 * hour, event_type="agent.run.completed"),
        "waiting": logged_delivery(acme, "pending", (503,), age=hour / 4),
        "other": logged_delivery(other, "dead", (500,), age=hour),
    }


def ids(run: Run) -> set[int]:
    assert run.code == 0, run
    return {d["id"] for d in run.json()}


def test_deliveries_list_filters(log):
    acme = log["ok"].endpoint
    assert ids(webhooks("deliveries", "list", "--json")) == {d.pk for d in log.values()}
    dead = ids(webhooks("deliveries", "list", "--status", "dead", "--since", "2h", "--json"))
    assert dead == {log["dead"].pk, log["other"].pk}
    assert ids(webhooks("deliveries", "list", "--status", "dead", "--endpoint", acme.pk, "--json")) == {
        log["dead"].pk,
        log["old_dead"].pk,
    }
    assert ids(webhooks("deliveries", "list", "--event-type", "agent.run.completed", "--json")) == {log["failed"].pk}
    since = (timezone.now() - datetime.timedelta(minutes=45)).isoformat()
    assert ids(webhooks("deliveries", "list", "--since", since, "--json")) == {log["ok"].pk, log["waiting"].pk}
    assert ids(webhooks("deliveries", "list", "--org", "Globex", "--json")) == {log["other"].pk}
    assert ids(webhooks("deliveries", "list", "--agent", log["ok"].event.agent_id, "--json")) == {log["ok"].pk}
    assert ids(webhooks("deliveries", "list", "--event", log["failed"].event_id, "--json")) == {log["failed"].pk}
    assert ids(webhooks("deliveries", "list", "--kind", "step_complete", "--json")) == set()


def test_deliveries_list_is_a_table_with_organizations(log):
    run = webhooks("deliveries", "list", "--limit", "3")
    assert run.code == 0
    header, *rows = run.out.splitlines()
    assert header.split()[:4] == ["ID", "CREATED", "ORGANIZATION", "EVENT"]
    assert len(rows) == 3 and "--limit" in run.err
    waiting = next(r for r in rows if r.startswith(str(log["waiting"].pk)))
    assert "Acme" in waiting and "pending" in waiting and "HTTP 503" in waiting
    assert "hooks.example.com" in run.out and "T0K3N" not in run.out


def test_deliveries_show_lists_the_attempts(log):
    run = webhooks("deliveries", "show", str(log["dead"].pk))
    assert run.code == 0
    assert "status:       dead" in run.out
    attempts = run.out.split("RESPONSE / ERROR", 1)[1].splitlines()[1:]
    assert [line.split()[0] for line in attempts] == ["1", "2", "3"]
    assert "HTTP 502" in attempts[1] and "answer 2: 502" in attempts[1]
    detail = webhooks("deliveries", "show", str(log["dead"].pk), "--json").json()
    assert [a["status_code"] for a in detail["attempts"]] == [500, 502, 503]


def test_retry_makes_a_dead_delivery_due_in_a_new_series(log):
    dead = log["dead"]
    run = webhooks("deliveries", "retry", str(dead.pk))
    assert run.code == 0 and f"delivery {dead.pk}: sending now (a new series of attempts)" in run.out
    dead.refresh_from_db()
    assert dead.status == DeliveryStatus.PENDING and dead.next_attempt_at <= timezone.now()
    assert dead.series_start == dead.attempt_count == 3


def test_retry_refuses_a_succeeded_delivery_unless_forced(log):
    ok = log["ok"]
    refused(webhooks("deliveries", "retry", str(ok.pk)), 1, f"delivery {ok.pk} not retried", "--force")
    ok.refresh_from_db()
    assert ok.status == DeliveryStatus.SUCCEEDED
    body = webhooks("deliveries", "retry", str(ok.pk), "--force", "--json").json()
    assert body["refused"] == [] and body["retried"][0]["status"] == "pending"


def test_retry_of_some_refused_reports_them_and_fails(log):
    run = webhooks("deliveries", "retry", str(log["ok"].pk), str(log["failed"].pk), "--json")
    assert run.code == 1
    body = json.loads(run.out)
    assert [d["id"] for d in body["retried"]] == [log["failed"].pk]
    assert body["refused"] == [
        {"id": log["ok"].pk, "reason": "already succeeded", "detail": mock.ANY},
    ]


def test_recover_requeues_an_endpoints_failures_since_a_time(log):
    acme = log["ok"].endpoint
    dry = webhooks("deliveries", "recover", acme.pk, "--since", "1d", "--dry-run", "--json").json()
    assert dry["recoverable"] == 2  # dead 1 h ago, failed 2 h ago; not the one 30 h old
    assert Delivery.objects.filter(status=DeliveryStatus.PENDING).count() == 1

    run = webhooks("deliveries", "recover", acme.pk, "--since", "1d")
    assert run.code == 0 and "Retrying 2 failed or dead deliveries" in run.out
    for name in ("dead", "failed"):
        log[name].refresh_from_db()
        assert log[name].status == DeliveryStatus.PENDING and log[name].next_attempt_at <= timezone.now()
    log["old_dead"].refresh_from_db()
    assert log["old_dead"].status == DeliveryStatus.DEAD
    log["other"].refresh_from_db()
    assert log["other"].status == DeliveryStatus.DEAD  # another endpoint's


def test_recover_reports_progress_chunk_by_chunk(org, make_endpoint, monkeypatch):
    endpoint = make_endpoint()
    for _ in range(5):
        logged_delivery(endpoint, "dead", (500,))
    monkeypatch.setattr(recovery, "CHUNK", 2)
    done = []
    since = timezone.now() - datetime.timedelta(hours=1)
    assert recovery.recover_endpoint(endpoint, since, progress=done.append) == 5
    assert done == [2, 2, 1]


def test_recover_of_a_disabled_endpoint_says_they_wait(org, make_endpoint):
    endpoint = make_endpoint(is_active=False)
    logged_delivery(endpoint, "dead", (500,))
    run = webhooks("deliveries", "recover", endpoint.pk, "--since", "2026-01-01", "--json")
    assert run.code == 0 and run.json()["recovered"] == 1
    assert "is disabled" in run.err


def test_retry_and_recover_really_send_again(live, make_endpoint):
    endpoint = make_endpoint("/again")
    dead = [logged_delivery(endpoint, "dead", (500,)) for _ in range(3)]
    assert webhooks("deliveries", "retry", str(dead[0].pk)).code == 0
    wait_until(lambda: len(live.received("/again")) == 1, message="the retried delivery's POST")
    assert webhooks("deliveries", "recover", endpoint.pk, "--since", "10m").code == 0
    wait_until(lambda: len(live.received("/again")) == 3, message="the recovered deliveries' POSTs")
    wait_until(lambda: Delivery.objects.filter(status=DeliveryStatus.SUCCEEDED).count() == 3)


# --- events and stats -----------------------------------------------------------------------


def test_events_list_and_show(log):
    listed = webhooks("events", "list", "--event-type", "agent.run.completed", "--json").json()
    assert [e["id"] for e in listed] == [log["failed"].event_id]
    assert listed[0]["organization"] == log["failed"].event.organization_id
    table = webhooks("events", "list", "--org", "Acme").out
    assert len(table.splitlines()) == 1 + 5 and "Globex" not in table

    run = webhooks("events", "show", log["failed"].event_id)
    assert run.code == 0
    assert "type:         agent.run.completed" in run.out and '"event_type": "agent.run.completed"' in run.out
    assert f"{log['failed'].pk}  " in run.out.split("DELIVERY", 1)[1]


def test_events_tail_follows_a_new_event_until_its_count(transactional_db, agent):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": child_database_url()}
    tail = subprocess.Popen(
        [sys.executable, "manage.py", "webhooks", "events", "tail", "--count", "1", "--timeout", "30", "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert "Following events" in tail.stderr.readline()
        step = Step.objects.create(agent=agent)
        step.status = "success"
        step.save()
        out, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    (line,) = out.splitlines()
    event = json.loads(line)
    assert event["event_type"] == "agent.step.completed" and event["agent"] == agent.pk
    assert event["payload"]["data"]["step_id"] == step.pk


def test_events_tail_times_out(db):
    run = webhooks("events", "tail", "--count", "1", "--timeout", "0.2")
    assert run.code == 1 and run.out == ""
    assert run.err.splitlines()[-1] == "error: timed out after 0.2 s with 0 of 1 events"
    run = webhooks("events", "tail", "--timeout", "0.2")
    assert run.code == 0 and run.out == ""


def test_events_tail_since_shows_recent_events_first(log):
    run = webhooks("events", "tail", "--since", "90m", "--count", "3", "--timeout", "1")
    assert run.code == 0
    lines = run.out.splitlines()
    assert [line.split()[3] for line in lines] == ["agent.step.completed"] * 3
    assert [line.split()[2] for line in lines] == [log[name].event_id for name in ("dead", "other", "ok")]


def test_stats_for_the_service_an_organization_and_an_endpoint(log):
    run = webhooks("stats")
    assert run.code == 0
    assert "the whole service, last 24h" in run.out
    assert "deliveries:   5 created: 1 succeeded, 1 pending, 1 failed, 2 dead" in run.out
    acme = webhooks("stats", "--org", "Acme", "--window", "7d", "--json").json()
    assert acme["window"] == "7d" and acme["deliveries"]["total"] == 5
    endpoint = webhooks("stats", "--endpoint", log["other"].endpoint_id, "--json").json()
    assert endpoint["deliveries"] == {**endpoint["deliveries"], "total": 1, "dead": 1}


# --- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["endpoints", "show", "ep_nope"], ["no endpoint 'ep_nope'"]),
        (["endpoints", "enable", "ep_nope"], ["no endpoint 'ep_nope'"]),
        (["deliveries", "show", "12x"], ["no delivery '12x'", "numbers"]),
        (["deliveries", "show", "999999"], ["no delivery 999999"]),
        (["deliveries", "retry", "999999"], ["no delivery 999999"]),
        (["events", "show", "evt_nope"], ["no event 'evt_nope'"]),
        (["events", "show", "evt_\x00"], ["no event"]),
        (["deliveries", "list", "--kind", "fax"], ["--kind", "fax", "endpoint, step_complete"]),
        (["deliveries", "list", "--status", "lost"], ["--status", "lost", "pending, succeeded, failed, dead"]),
        (["deliveries", "list", "--since", "yesterday"], ["--since", "'yesterday'", "ISO 8601", "2h"]),
        (["deliveries", "list", "--until", "2026-13-45"], ["--until", "not a time"]),
        (["deliveries", "list", "--endpoint", "ep_nope"], ["--endpoint", "no endpoint"]),
        (["deliveries", "list", "--limit", "0"], ["--limit"]),
        (["deliveries", "recover", "ep_nope", "--since", "1h"], ["no endpoint"]),
        (["deliveries", "recover", "ep_nope"], ["--since", "required"]),
        (["events", "list", "--org", "Initech"], ["--organization", "no organization 'Initech'"]),
        (["events", "tail", "--count", "0"], ["--count"]),
        (["stats", "--window", "2d"], ["--window", "1h, 24h, 7d"]),
        (["endpoints", "rotate-secret", "ep_nope", "--grace", "soon"], ["no endpoint"]),
        (["endpoints", "test", "ep_nope", "--wait", "31"], ["--wait", "between 0 and 30"]),
        (["deliveries", "frobnicate"], ["invalid choice: 'frobnicate'"]),
        (["endpoint", "list"], ["invalid choice: 'endpoint'"]),
        ([], ["required: GROUP"]),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_status_2(db, args, words):
    refused(webhooks(*args), 2, *words)


def test_the_endpoint_of_another_organization_is_unknown_there(two_orgs):
    acme, _ = two_orgs
    refused(webhooks("endpoints", "show", acme.pk, "--org", "Globex"), 2, "no endpoint", "in organization Globex")
    assert webhooks("endpoints", "show", acme.pk, "--org", "Acme").code == 0


def test_an_unreachable_database_is_one_line_and_exit_status_1(db):
    from django.db import OperationalError

    with mock.patch("deliveries.cli.endpoints.Endpoint.objects.order_by", side_effect=OperationalError("gone\nmore")):
        refused(webhooks("endpoints", "list"), 1, "the database: gone")
