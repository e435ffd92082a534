"""The Django admin, as an operator uses it: lists that answer questions, and actions that do
what they say (the live ones through the real worker to the real receiver)."""

import datetime
import json
import re

import pytest
from django.contrib.admin.utils import quote
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from agents_hooks.models import Agent, AgentTool, ApiKey, Job, Message, Organization, Run, Step, Tool, ToolExecution
from deliveries.models import Delivery
from tests.receiver import Reply
from tests.support import logged_delivery, wait_until
from webhooks.models import Endpoint


def change_url(name: str, pk) -> str:
    """An object's admin page; string ids are escaped as the admin's own links escape them."""
    return reverse(name, args=[quote(pk)])


def column_headers(html: str) -> list[str]:
    thead = re.search(r"<thead>(.*?)</thead>", html, re.S).group(1)
    cells = re.findall(r"<th[^>]*>(.*?)</th>", thead, re.S)
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", c)).strip() for c in cells]


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def run_action(client, model: str, action: str, ids: list) -> list[str]:
    response = client.post(
        reverse(f"admin:{model}_changelist"), {"action": action, "_selected_action": ids}, follow=True
    )
    assert response.status_code == 200
    return messages_of(response)


@pytest.fixture
def platform(org, agent, make_endpoint):
    """One of everything, so every list has a row to show. Platform rows come first: saving
    them publishes events, and these endpoints' log should hold only the deliveries made here."""
    tool = Tool.objects.create(organization=org, name="web_search")
    AgentTool.objects.create(agent=agent, tool=tool)
    run = Run.objects.create(agent=agent, callback_url="https://example.com/cb")
    step = Step.objects.create(agent=agent, run=run, total_tokens=42)
    objects = {
        "organization": org,
        "agent": agent,
        "tool": tool,
        "run": run,
        "job": Job.objects.create(organization=org, agent=agent),
        "step": step,
        "message": Message.objects.create(agent=agent, step=step, content="Summarise the ticket"),
        "toolexecution": ToolExecution.objects.create(agent=agent, tool=tool, step=step),
        "apikey": ApiKey.issue(org, name="ci")[0],
    }
    endpoint = make_endpoint(description="ops receiver")
    scoped = make_endpoint("/scoped", agent=agent)
    delivered = logged_delivery(endpoint)
    logged_delivery(endpoint, "dead", codes=(503, 503, 503))
    return objects | {
        "endpoint": endpoint,
        "scoped": scoped,
        "event": delivered.event,
        "delivery": delivered,
        "attempt": delivered.attempts.get(),
    }


CHANGELISTS = {
    "agents_hooks_organization": ["Name", "Id", "Created at"],
    "agents_hooks_agent": ["Name", "Id", "Organization", "Created at"],
    "agents_hooks_tool": ["Name", "Organization"],
    "agents_hooks_run": ["Id", "Agent", "Status", "Completed at", "Callback"],
    "agents_hooks_job": ["Id", "Organization", "Agent", "Status", "Callback"],
    "agents_hooks_step": ["Id", "Agent", "Run", "Status", "Total tokens", "Completed at"],
    "agents_hooks_message": ["Id", "Agent", "Role", "Content", "Created at"],
    "agents_hooks_toolexecution": ["Id", "Agent", "Tool", "Status", "Duration ms"],
    "agents_hooks_apikey": ["Key prefix", "Name", "Organization", "Created at", "Last used at", "Revoked"],
    "webhooks_endpoint": ["Url", "Description", "Organization", "Scope", "Active", "Last delivery", "Success (24 h)"],
    "deliveries_event": ["Id", "Type", "Organization", "Agent", "Created at", "Fanned out"],
    "deliveries_delivery": [
        "Event type",
        "Endpoint / URL",
        "Status",
        "Attempts",
        "Last status code",
        "Next attempt",
        "Created at",
    ],
    "deliveries_attempt": ["Attempt", "Delivery", "Started at", "Outcome", "Duration ms", "Url"],
}


@pytest.mark.parametrize("model", CHANGELISTS)
def test_every_list_renders_with_its_columns(admin_client, platform, model):
    response = admin_client.get(reverse(f"admin:{model}_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    headers = column_headers(html)
    for column in CHANGELISTS[model]:
        assert column in headers, (column, headers)
    assert "0 results" not in html


@pytest.mark.parametrize("model", CHANGELISTS)
def test_every_change_page_renders(admin_client, platform, model):
    obj = platform[model.rsplit("_", 1)[-1]]
    response = admin_client.get(change_url(f"admin:{model}_change", obj.pk))
    assert response.status_code == 200


def test_endpoint_list_answers_how_each_endpoint_is_doing(admin_client, platform):
    html = admin_client.get(reverse("admin:webhooks_endpoint_changelist")).content.decode()
    assert platform["endpoint"].url in html
    assert "all agents" in html  # the organization-wide endpoint
    assert ">helper<" in html  # the agent-scoped one names its agent
    assert ">dead<" in html  # last delivery status
    assert "50% of 2" in html  # one of the two deliveries of the last 24 h succeeded
    assert f"?endpoint__id__exact={platform['endpoint'].pk}" in html  # the rate links to those deliveries


def test_links_work_for_ids_that_look_like_admin_escapes(admin_client, org, receiver):
    # The admin escapes "_" in ids as "_5F"; an unescaped "ep_23…" would read as "ep#…".
    endpoint = Endpoint.objects.create(id="ep_2340" + "a" * 20, organization=org, url=receiver.url())
    delivery = logged_delivery(endpoint)
    page = admin_client.get(change_url("admin:deliveries_delivery_change", delivery.pk)).content.decode()
    endpoint_link = re.search(r'href="([^"]*/webhooks/endpoint/[^"]*)"', page).group(1)
    assert admin_client.get(endpoint_link).status_code == 200
    rows = admin_client.get(reverse("admin:webhooks_endpoint_changelist")).content.decode()
    rate_link = re.search(r'href="([^"]*endpoint__id__exact=[^"]*)"', rows).group(1).replace("&amp;", "&")
    assert change_url("admin:deliveries_delivery_change", delivery.pk) in admin_client.get(rate_link).content.decode()


def test_delivery_list_filters_and_searches(admin_client, platform):
    url = reverse("admin:deliveries_delivery_changelist")
    delivery_link = change_url("admin:deliveries_delivery_change", platform["delivery"].pk)
    dead = admin_client.get(url, {"status": "dead"}).content.decode()
    assert ">dead<" in dead and ">succeeded<" not in dead
    for term in (platform["event"].pk, platform["delivery"].pk):
        found = admin_client.get(url, {"q": term}).content.decode()
        assert found.count('name="_selected_action"') == 1 and delivery_link in found
    assert admin_client.get(url, {"q": "not a number"}).status_code == 200
    by_type = admin_client.get(url, {"type": "webhook.test"}).content.decode()
    assert 'name="_selected_action"' not in by_type


def test_delivery_page_shows_attempts_inline_read_only(admin_client, platform):
    delivery = logged_delivery(platform["endpoint"], "succeeded", codes=(503, 200))
    html = admin_client.get(change_url("admin:deliveries_delivery_change", delivery.pk)).content.decode()
    assert 'id="attempts-group"' in html
    assert "answer 1: 503" in html and "answer 2: 200" in html  # the response excerpts
    assert 'id="attempts-empty"' not in html  # no row to add
    assert "-DELETE" not in html  # none to delete
    assert 'name="_save"' not in html  # a log row is viewed, not edited


def test_log_rows_cannot_be_added_or_changed(admin_client, platform):
    for model in ("deliveries_event", "deliveries_delivery", "deliveries_attempt"):
        assert admin_client.get(reverse(f"admin:{model}_add")).status_code == 403
        obj = platform[model.rsplit("_", 1)[-1]]
        response = admin_client.post(change_url(f"admin:{model}_change", obj.pk), {"status": "succeeded"})
        assert response.status_code == 403


def test_secrets_never_appear_in_lists_or_forms(admin_client, platform):
    endpoint = platform["endpoint"]
    old_secret = endpoint.secret
    endpoint.rotate_secret()
    endpoint.refresh_from_db()
    pages = [
        reverse("admin:webhooks_endpoint_changelist"),
        change_url("admin:webhooks_endpoint_change", endpoint.pk),
        reverse("admin:webhooks_endpoint_add"),
        reverse("admin:deliveries_delivery_change", args=[platform["delivery"].pk]),
        reverse("admin:deliveries_attempt_change", args=[platform["attempt"].pk]),
        reverse("admin:agents_hooks_apikey_changelist"),
        reverse("admin:agents_hooks_apikey_change", args=[platform["apikey"].pk]),
    ]
    secrets = [
        endpoint.secret,
        old_secret,
        endpoint.secret_encrypted,
        endpoint.previous_secret_encrypted,
        platform["apikey"].key_hash,
    ]
    for page in pages:
        html = admin_client.get(page).content.decode()
        for secret in secrets:
            assert secret not in html, page
        assert "whsec_" not in html, page


def test_endpoint_list_query_count_does_not_grow_with_endpoints(
    admin_client, org, make_endpoint, django_assert_max_num_queries
):
    url = reverse("admin:webhooks_endpoint_changelist")
    for i in range(2):
        logged_delivery(make_endpoint(f"/few{i}"))
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(url).status_code == 200
    for i in range(25):
        endpoint = make_endpoint(f"/many{i}", agent=Agent.objects.create(organization=org, name=f"agent {i}"))
        logged_delivery(endpoint, "failed", codes=(400,))
    with django_assert_max_num_queries(len(few)):
        html = admin_client.get(url).content.decode()
    assert html.count('name="_selected_action"') == 27


# --- endpoint actions ----------------------------------------------------------------------


def test_send_test_event_shows_the_receivers_answer(live, admin_client, make_endpoint):
    endpoint = make_endpoint()
    (message,) = run_action(admin_client, "webhooks_endpoint", "send_test_event", [endpoint.pk])

    (request,) = live.wait_for(1, path="/hook")
    body = json.loads(request.body)
    assert body["event_type"] == "webhook.test"
    assert body["data"]["endpoint_id"] == endpoint.pk
    assert f"Test event to {endpoint.url}: HTTP 200 in " in message
    delivery = Delivery.objects.get(event__type="webhook.test")
    assert f'href="{change_url("admin:deliveries_delivery_change", delivery.pk)}"' in message


def test_send_test_event_reports_a_refusal(live, admin_client, make_endpoint):
    endpoint = make_endpoint()
    live.script("/hook", [Reply(400, body=b'{"error": "unknown event"}')])
    (message,) = run_action(admin_client, "webhooks_endpoint", "send_test_event", [endpoint.pk])
    assert "HTTP 400" in message
    assert "unknown event" in message  # the receiver's own words


def test_send_test_event_to_a_disabled_endpoint_sends_nothing(admin_client, make_endpoint):
    endpoint = make_endpoint(is_active=False)
    (message,) = run_action(admin_client, "webhooks_endpoint", "send_test_event", [endpoint.pk])
    assert "is disabled" in message
    assert not Delivery.objects.exists()


def test_disable_and_enable(admin_client, admin_user, make_endpoint):
    endpoint = make_endpoint()
    (message,) = run_action(admin_client, "webhooks_endpoint", "disable", [endpoint.pk])
    assert "Disabled 1 endpoint" in message
    endpoint.refresh_from_db()
    assert endpoint.is_active is False
    assert endpoint.disabled_at is not None
    assert endpoint.disabled_reason == f"disabled by {admin_user.username}"

    held = logged_delivery(endpoint, "pending", codes=())
    Delivery.objects.filter(pk=held.pk).update(next_attempt_at=None)  # as the worker holds it
    (message,) = run_action(admin_client, "webhooks_endpoint", "enable", [endpoint.pk])
    assert message == "Enabled 1 endpoint(s); 1 held deliveries are being sent."
    endpoint.refresh_from_db()
    assert endpoint.is_active and endpoint.disabled_at is None and endpoint.disabled_reason == ""
    held.refresh_from_db()
    assert held.next_attempt_at is not None


def test_unchecking_active_in_the_form_records_who_disabled_it(admin_client, admin_user, make_endpoint):
    endpoint = make_endpoint()
    form = {"url": endpoint.url, "agent": "", "description": "", "event_types": "[]", "headers": "{}"}
    response = admin_client.post(change_url("admin:webhooks_endpoint_change", endpoint.pk), form)
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.is_active is False
    assert endpoint.disabled_reason == f"disabled by {admin_user.username}"


def test_endpoint_form_applies_the_apis_rules(admin_client, org, agent, make_endpoint):
    endpoint = make_endpoint()
    stranger = Agent.objects.create(organization=Organization.objects.create(name="Other"), name="theirs")
    form = {
        "url": "http://169.254.169.254/latest",
        "agent": stranger.pk,
        "description": "",
        "event_types": '["agent.stepp.*"]',
        "headers": '{"webhook-id": "x"}',
        "is_active": "on",
    }
    form["retry_schedule"] = "5m, 5s"
    response = admin_client.post(change_url("admin:webhooks_endpoint_change", endpoint.pk), form)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"url", "agent", "event_types", "headers", "retry_schedule"}
    assert "must not get shorter" in errors["retry_schedule"][0]
    endpoint.refresh_from_db()
    assert endpoint.url.startswith("http://127.0.0.1")


@pytest.mark.parametrize(
    "typed, stored, shown",
    [
        ("5s, 1m, 1h30m", [5, 60, 5400], "5s, 1m, 1h30m"),
        ("", None, ""),
        ("none", [], "none"),
        ("10, 20", [10, 20], "10s, 20s"),
    ],
)
def test_endpoint_form_takes_a_retry_schedule_as_people_write_it(admin_client, make_endpoint, typed, stored, shown):
    endpoint = make_endpoint()
    form = {"url": endpoint.url, "agent": "", "description": "", "event_types": "[]", "headers": "{}",
            "rate_limit": "", "retry_schedule": typed, "is_active": "on"}  # fmt: skip
    response = admin_client.post(change_url("admin:webhooks_endpoint_change", endpoint.pk), form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    endpoint.refresh_from_db()
    assert endpoint.retry_schedule == stored
    page = admin_client.get(change_url("admin:webhooks_endpoint_change", endpoint.pk)).content.decode()
    assert f'name="retry_schedule" value="{shown}"' in page or (not shown and 'name="retry_schedule"' in page)
    assert "the default, 1s, 3s" in page  # the help text names the schedule in force


def test_rotate_secret_shows_the_new_secret_once(admin_client, make_endpoint):
    endpoint = make_endpoint()
    old = endpoint.secret
    (message,) = run_action(admin_client, "webhooks_endpoint", "rotate_secret", [endpoint.pk])
    endpoint.refresh_from_db()
    assert endpoint.secret != old
    assert endpoint.secret in message
    assert "will not be shown again" in message
    assert endpoint.signing_keys()[1:]  # the old secret still signs during the grace period
    again = admin_client.get(reverse("admin:webhooks_endpoint_changelist")).content.decode()
    assert endpoint.secret not in again


def test_recover_failed_deliveries_of_the_last_24_hours(admin_client, make_endpoint):
    endpoint = make_endpoint()
    recent_failed = logged_delivery(endpoint, "failed", codes=(400,))
    recent_dead = logged_delivery(endpoint, "dead", codes=(503, 503, 503))
    old_dead = logged_delivery(endpoint, "dead", codes=(503,), age=datetime.timedelta(hours=30))
    succeeded = logged_delivery(endpoint)
    (message,) = run_action(admin_client, "webhooks_endpoint", "recover_failed_deliveries", [endpoint.pk])
    assert message == "Retrying 2 failed or dead deliveries from the last 24 h."
    statuses = dict(Delivery.objects.values_list("pk", "status"))
    assert statuses[recent_failed.pk] == statuses[recent_dead.pk] == "pending"
    assert statuses[old_dead.pk] == "dead"
    assert statuses[succeeded.pk] == "succeeded"


def test_retry_waiting_deliveries_of_an_endpoint_now(live, admin_client, make_endpoint):
    endpoint = make_endpoint("/waiting", retry_schedule=[3600])
    waiting = [logged_delivery(endpoint, "pending", codes=(503,)) for _ in range(2)]
    Delivery.objects.filter(pk__in=[d.pk for d in waiting]).update(
        next_attempt_at=timezone.now() + datetime.timedelta(hours=1)
    )
    (message,) = run_action(admin_client, "webhooks_endpoint", "retry_waiting_deliveries", [endpoint.pk])
    assert message == "Sending 2 waiting deliveries now instead of at their retry time."
    live.wait_for(2, path="/waiting")
    wait_until(lambda: Delivery.objects.filter(endpoint=endpoint, status="succeeded").count() == 2)


# --- delivery, API key and platform actions ------------------------------------------------


def test_retry_selected_deliveries(live, admin_client, make_endpoint):
    endpoint = make_endpoint()
    failed = logged_delivery(endpoint, "failed", codes=(400,))
    succeeded = logged_delivery(endpoint)
    messages = run_action(admin_client, "deliveries_delivery", "retry", [failed.pk, succeeded.pk])
    assert messages == [
        "Sending 1 delivery now (failed and dead ones start a new series of attempts; waiting ones make their "
        "next attempt now).",
        f"Not retried, already succeeded: delivery {succeeded.pk}.",
    ]
    (request,) = live.wait_for(1, path="/hook")
    assert request.headers["webhook-id"] == failed.event_id

    def finished():
        failed.refresh_from_db()
        return failed.status == "succeeded"

    wait_until(finished, message="the retried delivery to succeed")
    assert [a.status_code for a in failed.attempts.order_by("number")] == [400, 200]
    assert len(live.received()) == 1  # the succeeded one was not sent again


def test_adding_an_api_key_shows_the_key_once(admin_client, org):
    response = admin_client.post(
        reverse("admin:agents_hooks_apikey_add"), {"organization": org.pk, "name": "deploy bot"}, follow=True
    )
    assert response.status_code == 200
    (key,) = re.findall(r"\bahk_[A-Za-z0-9_-]{20,}", " ".join(messages_of(response)))
    row = ApiKey.objects.get(name="deploy bot")
    assert row.key_hash == ApiKey.hash(key)
    assert row.organization == org and row.key_prefix == key[:10]
    change = admin_client.get(change_url("admin:agents_hooks_apikey_change", row.pk)).content.decode()
    assert key not in change and row.key_prefix in change


def test_revoke_api_keys(admin_client, org):
    row, _ = ApiKey.issue(org)
    (message,) = run_action(admin_client, "agents_hooks_apikey", "revoke", [row.pk])
    assert message == "Revoked 1 API key(s)."
    row.refresh_from_db()
    assert row.revoked_at is not None


def test_saving_a_step_as_success_in_the_admin_fires_the_webhook(live, admin_client, agent, make_endpoint):
    make_endpoint()
    step = Step.objects.create(agent=agent, prompt_tokens=1, completion_tokens=2, total_tokens=3)
    form = {
        "agent": agent.pk,
        "run": "",
        "status": "success",
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "error": "",
        "completed_at_0": "",
        "completed_at_1": "",
    }
    response = admin_client.post(change_url("admin:agents_hooks_step_change", step.pk), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    (request,) = live.wait_for(1, path="/hook")
    body = json.loads(request.body)
    assert body["event_type"] == "agent.step.completed"
    assert body["data"]["step_id"] == step.pk


def test_endpoints_are_created_with_a_secret_nobody_typed(admin_client, org):
    form = {
        "organization": org.pk,
        "url": "http://127.0.0.1:9/hook",
        "agent": "",
        "description": "made in the admin",
        "event_types": '["agent.step.*"]',
        "headers": '{"X-Team": "ops"}',
        "is_active": "on",
    }
    response = admin_client.post(reverse("admin:webhooks_endpoint_add"), form)
    assert response.status_code == 302
    endpoint = Endpoint.objects.get(description="made in the admin")
    assert endpoint.secret.startswith("whsec_")
    assert endpoint.event_types == ["agent.step.*"] and endpoint.headers == {"X-Team": "ops"}
