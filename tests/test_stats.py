"""Statistics, as an operator and an endpoint's owner read them: the figures of the stats API
and the admin's chart pages match the delivery log (rows written with known status codes,
durations and times, and a real worker delivering to a real receiver); a bad `window` is a
400 naming it; another organization's endpoint is a 404; the service-wide figures are for
staff only; SQLite, the embedded development setup, answers the same figures."""

import datetime
import json
import os
import statistics
import subprocess
import sys

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from agents_hooks.models import ApiKey, Organization
from deliveries import stats, transport
from deliveries.events import publish
from deliveries.models import Attempt, Delivery, Event
from tests.receiver import Reply
from tests.support import ROOT, free_port, wait_until, wait_until_settled
from webhooks.models import Endpoint

PUBLIC = "https://93.184.216.34/hook"  # a public address literal: valid without DNS
MS = datetime.timedelta(milliseconds=1)


def logged(endpoint, created, attempts, status, *, finished_after_ms=None, kind="endpoint") -> Delivery:
    """A delivery created at `created` (its event 5 ms earlier), as the worker leaves it, with one
    attempt per (status code or None, duration ms, error, seconds after `created`)."""
    event = Event.objects.create(
        type="agent.step.completed",
        organization_id=endpoint.organization_id,
        body="{}",
        created_at=created - 5 * MS,
        fanned_out_at=created,
    )
    last = attempts[-1]
    delivery = Delivery.objects.create(
        event=event,
        endpoint=endpoint,
        kind=kind,
        status=status,
        attempt_count=len(attempts),
        created_at=created,
        last_attempt_at=created + datetime.timedelta(seconds=last[3]),
        last_status_code=last[0],
        last_error=last[2],
        next_attempt_at=created + datetime.timedelta(hours=1) if status == "pending" else None,
        finished_at=None if finished_after_ms is None else created + finished_after_ms * MS,
    )
    for number, (code, duration, error, after) in enumerate(attempts, 1):
        Attempt.objects.create(
            delivery=delivery,
            number=number,
            started_at=created + datetime.timedelta(seconds=after),
            url=endpoint.url,
            status_code=code,
            duration_ms=duration,
            error=error,
        )
    return delivery


def delivery_log(org: Organization, now: datetime.datetime) -> dict:
    """Endpoint `a` with a known log over the last week, `b` of the same organization and `c`
    of another one with a delivery each, all relative to `now`."""
    ago = lambda **kw: now - datetime.timedelta(**kw)  # noqa: E731
    a = Endpoint.objects.create(organization=org, url=PUBLIC, description="a")
    b = Endpoint.objects.create(organization=org, url=PUBLIC + "/b", description="b")
    c = Endpoint.objects.create(organization=Organization.objects.create(name="Globex"), url=PUBLIC + "/c")
    # The last 24 hours: 6 deliveries, 9 attempts.
    logged(a, ago(minutes=90), [(200, 20, "", 0)], "succeeded", finished_after_ms=20)
    logged(
        a,
        ago(hours=2),
        [(503, 100, "", 0), (None, 2000, "timeout after 2s", 1), (200, 40, "", 4)],
        "succeeded",
        finished_after_ms=4040,
    )
    logged(
        a,
        ago(hours=3),
        [
            (None, 5, "ConnectionRefusedError: [Errno 111] Connection refused", 0),
            (None, 1, "refused: 10.0.0.1 is a private address", 1),
        ],
        "dead",
        finished_after_ms=1001,
    )
    logged(a, ago(hours=5), [(400, 30, "", 0)], "failed", finished_after_ms=30)
    logged(a, ago(hours=20), [(302, 12, "", 0)], "failed", finished_after_ms=12)
    logged(a, ago(minutes=10), [(500, 60, "", 0)], "pending")
    # Earlier this week, and before it.
    logged(a, ago(days=3), [(200, 70, "", 0)], "succeeded", finished_after_ms=70)
    logged(a, ago(days=8), [(200, 5, "", 0)], "succeeded", finished_after_ms=5)
    logged(b, ago(minutes=90), [(200, 10, "", 0)], "succeeded", finished_after_ms=10)
    logged(c, ago(minutes=90), [(500, 10, "", 0), (200, 10, "", 1)], "succeeded", finished_after_ms=1010)
    return {"a": a, "b": b, "c": c}


def api_client(org) -> APIClient:
    _, key = ApiKey.issue(org)
    return APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("ops", password="pw", is_staff=True)


def bucket_counts(body: dict, rows) -> dict[int, int]:
    """{bucket index: rows}, for rows' times, by the response's own window."""
    since = datetime.datetime.fromisoformat(body["since"].replace("Z", "+00:00"))
    counts: dict[int, int] = {}
    for at in rows:
        index = int((at - since).total_seconds() // body["bucket_seconds"])
        counts[index] = counts.get(index, 0) + 1
    return counts


# --- the figures ---------------------------------------------------------------------------


def test_an_endpoints_figures_match_its_delivery_log(org):
    log = delivery_log(org, timezone.now())
    response = api_client(org).get(f"/api/v1/webhooks/{log['a'].pk}/stats/?window=24h")
    assert response.status_code == 200
    body = response.json()

    assert body["window"] == "24h" and body["bucket_seconds"] == 3600
    attempts = body["attempts"]
    assert attempts["total"] == 9
    assert attempts["outcomes"] == {
        "2xx": 2, "3xx": 1, "4xx": 1, "5xx": 2, "timeout": 1, "connection_error": 1, "refused": 1,
    }  # fmt: skip
    assert (attempts["succeeded"], attempts["success_rate"]) == (2, pytest.approx(2 / 9))
    assert (attempts["retries"], attempts["retry_rate"]) == (3, pytest.approx(3 / 9))
    # Durations 1 5 12 20 30 40 60 100 2000: the median is 30; p95 lies 0.6 of the way from 100 to 2000.
    assert attempts["duration_ms"] == {"p50": 30.0, "p95": 1240.0}

    deliveries = body["deliveries"]
    assert (deliveries["total"], deliveries["succeeded"], deliveries["failed"]) == (6, 2, 2)
    assert (deliveries["dead"], deliveries["pending"]) == (1, 1)
    assert deliveries["success_rate"] == pytest.approx(2 / 6)
    # Event to success: 5 + 20 and 5 + 4040 ms.
    assert deliveries["latency_ms"] == {"p50": 2035.0, "p95": pytest.approx(25 + 0.95 * 4020)}

    # The series: every bucket, each attempt in the hour it started, each delivery in the one it was created.
    series = body["series"]
    assert len(series) == 25 and series[0]["start"] == body["since"]
    in_window = Attempt.objects.filter(delivery__endpoint=log["a"], started_at__gte=body["since"])
    expected = bucket_counts(body, in_window.values_list("started_at", flat=True))
    assert {i: b["attempts"] for i, b in enumerate(series) if b["attempts"]} == expected
    created = Delivery.objects.filter(endpoint=log["a"], created_at__gte=body["since"])
    expected = bucket_counts(body, created.values_list("created_at", flat=True))
    assert {i: b["deliveries"] for i, b in enumerate(series) if b["deliveries"]} == expected
    assert sum(b["retries"] for b in series) == 3
    assert sum(b["outcomes"]["timeout"] for b in series) == 1
    assert sum(b["deliveries_succeeded"] for b in series) == 2
    assert all((b["duration_ms"]["p50"] is None) == (b["attempts"] == 0) for b in series)


def test_a_week_and_an_hour(org):
    log = delivery_log(org, timezone.now())
    api = api_client(org)
    week = api.get(f"/api/v1/webhooks/{log['a'].pk}/stats/?window=7d").json()
    assert (week["attempts"]["total"], week["deliveries"]["total"]) == (10, 7)  # 3 days ago counts, 8 does not
    assert week["attempts"]["duration_ms"]["p50"] == 35.0  # between 30 and 40, with 70 added
    assert week["bucket_seconds"] == 6 * 3600 and len(week["series"]) == 29
    hour = api.get(f"/api/v1/webhooks/{log['a'].pk}/stats/?window=1h").json()
    assert (hour["attempts"]["total"], hour["attempts"]["outcomes"]["5xx"]) == (1, 1)
    assert hour["bucket_seconds"] == 300 and len(hour["series"]) == 13
    assert hour["deliveries"]["latency_ms"] == {"p50": None, "p95": None}  # nothing succeeded in it


def test_no_traffic_is_zeros_and_nulls(org):
    endpoint = Endpoint.objects.create(organization=org, url=PUBLIC)
    body = api_client(org).get(f"/api/v1/webhooks/{endpoint.pk}/stats/").json()  # window: 24h by default
    assert body["window"] == "24h"
    assert body["attempts"]["total"] == 0 and body["attempts"]["success_rate"] is None
    assert body["deliveries"]["success_rate"] is None and body["attempts"]["duration_ms"]["p50"] is None
    assert all(b["attempts"] == 0 and b["duration_ms"]["p95"] is None for b in body["series"])


def test_service_wide_figures_for_staff(org, staff):
    delivery_log(org, timezone.now())
    client = APIClient()
    client.force_login(staff)
    body = client.get("/api/v1/stats/?window=24h").json()
    assert body["attempts"]["total"] == 9 + 1 + 2  # a, b, and the other organization's c
    assert body["deliveries"]["total"] == 6 + 1 + 1
    assert body["attempts"]["outcomes"]["5xx"] == 3
    mine = client.get(f"/api/v1/stats/?window=24h&organization={org.pk}").json()
    assert (mine["attempts"]["total"], mine["deliveries"]["total"]) == (10, 7)
    unknown = client.get("/api/v1/stats/?organization=nope")
    assert unknown.status_code == 400 and "organization" in unknown.json()


def test_service_wide_figures_refuse_everyone_but_staff(org, django_user_model):
    refused = api_client(org).get("/api/v1/stats/")
    assert refused.status_code == 403 and "staff" in refused.json()["detail"]
    client = APIClient()
    assert client.get("/api/v1/stats/").status_code == 401
    client.force_login(django_user_model.objects.create_user("someone", password="pw"))
    assert client.get("/api/v1/stats/").status_code == 403


@pytest.mark.parametrize("window", ["2d", "", "24H", "24h ", "1", "7d\x00", "x" * 300])
def test_a_bad_window_is_a_400_naming_it(org, staff, window):
    endpoint = Endpoint.objects.create(organization=org, url=PUBLIC)
    response = api_client(org).get(f"/api/v1/webhooks/{endpoint.pk}/stats/", {"window": window})
    assert response.status_code == 400
    assert list(response.json()) == ["window"] and response.json()["window"]
    client = APIClient()
    client.force_login(staff)
    response = client.get("/api/v1/stats/", {"window": window})
    assert response.status_code == 400 and list(response.json()) == ["window"]


def test_another_organizations_endpoint_is_a_404(org):
    theirs = Endpoint.objects.create(organization=Organization.objects.create(name="Globex"), url=PUBLIC)
    response = api_client(org).get(f"/api/v1/webhooks/{theirs.pk}/stats/?window=24h")
    assert response.status_code == 404
    assert api_client(org).get("/api/v1/webhooks/ep_missing/stats/").status_code == 404


def test_the_schema_documents_the_stats(db):
    document = APIClient().get("/api/schema/?format=json").json()
    for path in ("/api/v1/webhooks/{id}/stats/", "/api/v1/stats/"):
        operation = document["paths"][path]["get"]
        window = next(p for p in operation["parameters"] if p["name"] == "window")
        assert window["schema"]["enum"] == ["1h", "24h", "7d"]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Stats"
        }
    outcomes = document["components"]["schemas"]["Outcomes"]["properties"]
    assert list(outcomes) == list(transport.OUTCOME_CLASSES)


# --- outcome classes: the SQL and the transport agree ---------------------------------------

ANSWERS = [
    (100, ""), (199, ""), (200, ""), (204, ""), (299, ""), (301, ""), (399, ""), (404, ""), (499, ""), (500, ""),
    (503, ""), (599, ""), (600, ""), (999, ""), (None, "timeout after 5s"), (None, "TimeoutError: timed out"),
    (None, "refused: 169.254.169.254 is a link-local address"), (None, "ConnectionRefusedError: [Errno 111] x"),
    (None, "connection closed by the receiver before answering"), (None, "cannot build the request: KeyError"),
    (None, "api.example.com did not resolve in time"), (None, ""), (None, "Timeout after 5s"),
]  # fmt: skip


def test_sql_outcome_classes_are_the_transports(org):
    endpoint = Endpoint.objects.create(organization=org, url=PUBLIC)
    delivery = logged(endpoint, timezone.now(), [(code, 1, error, 0) for code, error in ANSWERS], "dead")
    for attempt in delivery.attempts.all():
        matching = [key for key, condition in stats.OUTCOMES.items() if attempt in Attempt.objects.filter(condition)]
        assert matching == [transport.outcome_class(attempt.status_code, attempt.error)], attempt.error


# --- end to end: a real worker and a real receiver ------------------------------------------


def test_figures_of_real_deliveries_match_the_log(live, org, staff):
    """Five endpoints answer in five ways; the stats API counts what the worker logged."""
    live.script("/flaky", [503, 200])
    live.script("/slow", [Reply(200, delay=3)])  # past WEBHOOK_TIMEOUT (2 s)
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    endpoints = [
        Endpoint.objects.create(organization=org, url=live.url("/ok")),
        Endpoint.objects.create(organization=org, url=live.url("/flaky")),
        Endpoint.objects.create(organization=org, url=live.url("/slow"), retry_schedule=[]),
        Endpoint.objects.create(organization=org, url=closed, retry_schedule=[]),
        # Saved past the API's check: refused when sent (private address).
        Endpoint.objects.create(organization=org, url="http://10.255.255.1/hook"),
    ]
    publish("agent.custom.thing", organization=org, data={"n": 1})
    wait_until(lambda: Delivery.objects.count() == 5, message="the event fanned out to the five endpoints")
    wait_until_settled(timeout=30)

    client = APIClient()
    client.force_login(staff)
    body = client.get("/api/v1/stats/?window=1h").json()
    log = list(Attempt.objects.all())
    assert len(log) == 6  # one each, and the flaky one's retry
    classes = [transport.outcome_class(a.status_code, a.error) for a in log]
    assert body["attempts"]["outcomes"] == {key: classes.count(key) for key in transport.OUTCOME_CLASSES}
    assert body["attempts"]["outcomes"] == {
        "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 1, "timeout": 1, "connection_error": 1, "refused": 1,
    }  # fmt: skip
    assert (body["attempts"]["total"], body["attempts"]["retries"]) == (6, 1)
    durations = [a.duration_ms for a in log]
    assert max(durations) >= 1900  # the timeout, cut at 2 s
    assert body["attempts"]["duration_ms"] == {
        "p50": pytest.approx(statistics.median(durations), abs=0.05),
        "p95": pytest.approx(statistics.quantiles(durations, n=20, method="inclusive")[18], abs=0.05),
    }
    assert (body["deliveries"]["total"], body["deliveries"]["succeeded"]) == (5, 2)
    latencies = sorted((d.finished_at - d.event.created_at) / MS for d in Delivery.objects.filter(status="succeeded"))
    assert body["deliveries"]["latency_ms"]["p50"] == pytest.approx(statistics.median(latencies), abs=0.1)

    flaky = api_client(org).get(f"/api/v1/webhooks/{endpoints[1].pk}/stats/?window=1h").json()
    assert flaky["attempts"]["outcomes"]["5xx"] == flaky["attempts"]["outcomes"]["2xx"] == 1
    assert flaky["attempts"]["retries"] == 1 and flaky["deliveries"]["success_rate"] == 1.0


# --- the admin's pages ------------------------------------------------------------------------


def test_admin_pages_show_the_charts_and_numbers(client, org, admin_user):
    log = delivery_log(org, timezone.now())
    client.force_login(admin_user)

    index = client.get("/admin/")
    assert b'href="/admin/stats/"' in index.content
    page = client.get("/admin/stats/")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('<svg class="chart"') == 8  # four charts, for 24 hours and for 7 days
    assert "Attempts by outcome" in html and "Errors by type" in html
    day = page.context["panels"][0]
    assert {label: figure for label, figure, _ in day["tiles"]}["Attempts"] == "12"  # a, b and c
    assert "refused (URL safety)" in html

    endpoint_list = client.get("/admin/webhooks/endpoint/").content.decode()
    stats_url = reverse("admin:webhooks_endpoint_stats", args=[quote(log["a"].pk)])
    assert f'href="{stats_url}"' in endpoint_list
    change_page = client.get(reverse("admin:webhooks_endpoint_change", args=[quote(log["a"].pk)]))
    assert f'href="{stats_url}"' in change_page.content.decode()
    page = client.get(stats_url)
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('<svg class="chart"') == 8 and PUBLIC in html
    tiles = {label: (figure, detail) for label, figure, detail in page.context["panels"][0]["tiles"]}
    assert tiles["Attempts"] == ("9", "33.3% retries")
    assert tiles["Deliveries"][0] == "6" and tiles["Delivered"][0] == "33.3%"
    assert tiles["Attempt duration p50"] == ("30 ms", "p95 1.2 s")
    week = {label: figure for label, figure, _ in page.context["panels"][1]["tiles"]}
    assert week["Attempts"] == "10"
    # Hovering a bar names the hour and its figures.
    assert "5xx 1" in html and "(so far)" in html


def test_admin_pages_are_for_staff_with_view_permission(client, org, staff, django_user_model):
    endpoint = Endpoint.objects.create(organization=org, url=PUBLIC)
    stats_url = reverse("admin:webhooks_endpoint_stats", args=[quote(endpoint.pk)])
    assert client.get("/admin/stats/").status_code == 302  # to the login page
    client.force_login(django_user_model.objects.create_user("someone", password="pw"))
    assert client.get("/admin/stats/").status_code == 302
    client.force_login(staff)
    assert client.get("/admin/stats/").status_code == 200
    assert client.get(stats_url).status_code == 403  # staff, but not allowed to see endpoints
    staff.user_permissions.add(Permission.objects.get(codename="view_endpoint"))
    assert client.get(stats_url).status_code == 200
    assert client.get("/admin/webhooks/endpoint/ep_missing/stats/").status_code == 302  # "doesn't exist"


# --- SQLite ---------------------------------------------------------------------------------

SQLITE_SCRIPT = """
import datetime, json, sys
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from agents_hooks.models import Organization
from deliveries import stats
from tests.test_stats import delivery_log
now = datetime.datetime.fromisoformat(sys.argv[1])
log = delivery_log(Organization.objects.create(name="Acme"), now)
figures = {
    window: [stats.window_stats(window, now=now), stats.window_stats(window, endpoint=log["a"], now=now)]
    for window in stats.WINDOWS
}
print(json.dumps(figures, default=str))
"""


def test_sqlite_answers_the_same_figures(db, tmp_path):
    """The embedded setup's database: the same log, the same figures as PostgreSQL's (latency
    to a tenth of a millisecond: SQLite's datetimes go through julianday())."""
    now = timezone.now().replace(minute=37, second=12, microsecond=345678)  # away from bucket edges
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_", "WEBHOOK", "DJANGO_"))}
    env.update(DJANGO_SETTINGS_MODULE="webhooks_project.settings", WEBHOOKS_VAR_DIR=str(tmp_path))
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", SQLITE_SCRIPT, now.isoformat()], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    on_sqlite = json.loads(result.stdout.strip().splitlines()[-1])

    log = delivery_log(Organization.objects.create(name="Acme"), now)
    for window in stats.WINDOWS:
        on_postgres = [stats.window_stats(window, now=now), stats.window_stats(window, endpoint=log["a"], now=now)]
        for lite, pg in zip(on_sqlite[window], json.loads(json.dumps(on_postgres, default=str)), strict=True):
            for figures in (lite, pg):
                latency = figures["deliveries"].pop("latency_ms")
                figures["latency"] = [None if v is None else round(v) for v in latency.values()]
            assert lite == pg, window
