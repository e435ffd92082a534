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
from deliveries.admin import until
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
    "agents_hooks_apikey": ["Key prefix", "Name", "Organization", "Created at", "Last used at", "Status"],
    "webhooks_endpoint": [
        "Endpoint",
        "Organization",
        "Scope",
        "Event types",
        "Active",
        "Last delivery",
        "Success (24 h)",
    ],  # fmt: skip
    "deliveries_event": ["Id", "Type", "Organization", "Agent", "Created at", "Fanned out"],
    "deliveries_delivery": [
        "Event type",
        "Endpoint / URL",
        "Status",
        "Attempts",
        "Last answer",
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


# --- a new user's rough edges: what each page shows ----------------------------------------


def add_form(org, **fields) -> dict:
    return {
        "organization": org.pk, "kind": "push", "url": "http://127.0.0.1:9/hook", "agent": "",
        "description": "made in the admin",
        "event_types": "", "headers": "", "rate_limit": "", "retry_schedule": "", "is_active": "on",
    } | fields  # fmt: skip


def form_errors(response) -> dict[str, list[str]]:
    assert response.status_code == 200, "the form was accepted"
    return {name: list(errors) for name, errors in response.context["adminform"].form.errors.items()}


def test_an_endpoint_added_in_the_admin_shows_its_secret_once(admin_client, org):
    response = admin_client.post(reverse("admin:webhooks_endpoint_add"), add_form(org), follow=True)
    endpoint = Endpoint.objects.get(description="made in the admin")
    page = change_url("admin:webhooks_endpoint_change", endpoint.pk)
    assert response.redirect_chain == [(page, 302)]  # "Save" leads to the endpoint's page, not the list
    html = response.content.decode()
    assert html.count(endpoint.secret) == 1
    assert "Copy it now: <strong>it will not be shown again.</strong>" in html
    assert endpoint.secret not in admin_client.get(page).content.decode()  # once
    assert "whsec_" not in admin_client.get(reverse("admin:webhooks_endpoint_changelist")).content.decode()


def test_a_pull_endpoint_is_added_without_a_url_and_keeps_its_kind(admin_client, org):
    refused = admin_client.post(reverse("admin:webhooks_endpoint_add"), add_form(org, url=""))
    assert form_errors(refused) == {"url": ["required for a push endpoint (or choose kind: pull)"]}
    refused = admin_client.post(reverse("admin:webhooks_endpoint_add"), add_form(org, kind="pull"))
    assert form_errors(refused) == {"url": ["a pull endpoint has no URL: its events are read from the feed"]}

    response = admin_client.post(reverse("admin:webhooks_endpoint_add"), add_form(org, kind="pull", url=""))
    assert response.status_code == 302
    endpoint = Endpoint.objects.get(description="made in the admin")
    assert endpoint.kind == "pull" and endpoint.url == ""
    listing = admin_client.get(reverse("admin:webhooks_endpoint_changelist")).content.decode()
    assert "pull: read from the feed" in listing
    # The kind is chosen once: shown, not editable, on its page; a posted kind is ignored.
    page = change_url("admin:webhooks_endpoint_change", endpoint.pk)
    assert 'name="kind"' not in admin_client.get(page).content.decode()
    admin_client.post(page, add_form(org, kind="push", url="", description="still pull"))
    endpoint.refresh_from_db()
    assert endpoint.kind == "pull" and endpoint.description == "still pull"


def test_event_types_and_headers_are_typed_as_lines(admin_client, org):
    form = add_form(
        org,
        event_types="agent.step.*\nagent.run.completed, tool.execution.completed",
        headers="X-Team: ops\nAuthorization: Bearer s3cret-t0ken\n",
    )
    response = admin_client.post(reverse("admin:webhooks_endpoint_add"), form)
    assert response.status_code == 302, form_errors(response)
    endpoint = Endpoint.objects.get(description="made in the admin")
    assert endpoint.event_types == ["agent.step.*", "agent.run.completed", "tool.execution.completed"]
    assert endpoint.headers == {"X-Team": "ops", "Authorization": "Bearer s3cret-t0ken"}

    page = admin_client.get(change_url("admin:webhooks_endpoint_change", endpoint.pk)).content.decode()
    assert ">\nagent.step.*\nagent.run.completed\ntool.execution.completed</textarea>" in page
    assert ">\nX-Team: ops\nAuthorization: [redacted]</textarea>" in page  # a credential is never shown back
    assert "s3cret-t0ken" not in page

    # Saved as shown, the masked credential keeps its stored value; a line deleted removes its header.
    form |= {"event_types": "agent.step.*", "headers": "Authorization: [redacted]"}
    response = admin_client.post(change_url("admin:webhooks_endpoint_change", endpoint.pk), form)
    assert response.status_code == 302, form_errors(response)
    endpoint.refresh_from_db()
    assert endpoint.headers == {"Authorization": "Bearer s3cret-t0ken"}
    assert endpoint.event_types == ["agent.step.*"]


def test_empty_event_types_mean_all_agent_events_and_the_form_says_so(admin_client, org):
    page = admin_client.get(reverse("admin:webhooks_endpoint_add")).content.decode()
    assert "<strong>Empty: all agent events</strong>" in page
    assert "<code>agent.step.completed</code>" in page  # the catalog, to choose from
    assert "[]</textarea>" not in page and "{}</textarea>" not in page  # no JSON to start from
    response = admin_client.post(reverse("admin:webhooks_endpoint_add"), add_form(org, event_types="  \n"))
    assert response.status_code == 302
    assert Endpoint.objects.get(description="made in the admin").event_types == []


@pytest.mark.parametrize(
    "field, typed, error",
    [
        ("event_types", "agent.stepp.*", "Unknown event type(s): agent.stepp.*;"),
        ("event_types", "agent.step.completed\nagent.tool.atached", "Unknown event type(s): agent.tool.atached;"),
        ("event_types", "x" * 101, "Item 1: Ensure this field has no more than 100 characters."),
        ("headers", "X-Team ops", "Line 1 ('X-Team ops') is not a header: write one per line as “Name: value”"),
        ("headers", "X-A: 1\nx-a: 2", "Header 'x-a' is given twice (lines 1 and 2)."),
        ("headers", "webhook-id: mine", "'webhook-id' is set by the service and cannot be overridden"),
        ("headers", "X Team: ops", "'X Team' is not a valid header name"),
        ("headers", "X-Price: 5 €", "The value of 'X-Price' may hold only visible ASCII"),
        ("headers", "X-Secret: [redacted]", "'[redacted]' stands for a value already stored"),
    ],
)
def test_bad_event_types_or_headers_are_a_form_error_naming_the_problem(admin_client, org, field, typed, error):
    response = admin_client.post(reverse("admin:webhooks_endpoint_add"), add_form(org, **{field: typed}))
    errors = form_errors(response)
    assert list(errors) == [field]
    assert error in errors[field][0], errors
    assert not Endpoint.objects.exists()


def test_endpoint_list_shows_event_types_and_cuts_long_urls(admin_client, make_endpoint):
    long_url = "https://hooks.example.com/services/T0ABCDEFG/B0HIJKLMN/averyveryverylongtokenthatgoesonandon"
    make_endpoint(description="everything")
    make_endpoint(url=long_url, event_types=["agent.step.*", "agent.run.completed", "agent.job.completed", "*"])
    html = admin_client.get(reverse("admin:webhooks_endpoint_changelist")).content.decode()
    assert "all agent events" in html and "[]" not in html
    assert "agent.step.*, agent.run.completed, agent.job.completed +1 more" in html
    assert f'title="{long_url}"' in html  # the whole URL in the tooltip
    assert f">{long_url}<" not in html  # not in the column
    assert ">https://hooks.example.com/services/T0ABCDEFG/B0…<" in html


def test_result_count_shows_only_when_a_filter_or_search_applies(admin_client, platform):
    for model in ("deliveries_delivery", "deliveries_event", "deliveries_attempt"):
        html = admin_client.get(reverse(f"admin:{model}_changelist")).content.decode()
        assert "Show all" not in html, model
    url = reverse("admin:deliveries_delivery_changelist")
    assert "1 result (<a" in admin_client.get(url, {"status": "dead"}).content.decode()
    assert "Show all" in admin_client.get(url, {"q": platform["delivery"].pk}).content.decode()


def test_deliveries_filter_by_the_endpoint_chosen_not_a_list_of_all(admin_client, make_endpoint):
    endpoints = [make_endpoint(f"/ep{i}") for i in range(3)]
    deliveries = [logged_delivery(endpoint) for endpoint in endpoints]
    url = reverse("admin:deliveries_delivery_changelist")

    def sidebar(html):
        return html[html.index('id="changelist-filter"') :]

    unfiltered = sidebar(admin_client.get(url).content.decode())
    assert not any(endpoint.url in unfiltered for endpoint in endpoints)
    assert "open the endpoint and click “Deliveries”" in unfiltered

    page = admin_client.get(change_url("admin:webhooks_endpoint_change", endpoints[1].pk)).content.decode()
    link = re.search(r'<a href="([^"]*endpoint__id__exact[^"]*)">Deliveries</a>', page).group(1)
    html = admin_client.get(link).content.decode()
    assert html.count('name="_selected_action"') == 1
    assert change_url("admin:deliveries_delivery_change", deliveries[1].pk) in html
    assert endpoints[1].url in sidebar(html) and endpoints[0].url not in sidebar(html)


def spans(moment, before, after) -> set[str]:
    """What the page may say of `moment` ("in 4 min 12 s") if drawn between `before` and
    `after`: a slow machine can take more than a second to draw it."""
    steps = int((after - before).total_seconds() * 4) + 1
    return {until(moment, before + datetime.timedelta(seconds=k / 4)) for k in range(steps + 1)} | {
        until(moment, after)
    }


def test_delivery_page_shows_what_an_operator_needs_to_the_second(admin_client, make_endpoint):
    delivery = logged_delivery(make_endpoint(), "pending", codes=(503,))
    due = timezone.now().replace(microsecond=0) + datetime.timedelta(minutes=4, seconds=12, milliseconds=600)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=due, series_start=1)
    before = timezone.now()
    page = admin_client.get(change_url("admin:deliveries_delivery_change", delivery.pk)).content.decode()
    after = timezone.now()
    labels = [re.sub(r"\s+", " ", label).strip() for label in re.findall(r"<label>(.*?):?</label>", page, re.S)]
    assert labels[:5] == ["Event", "Event type", "Kind", "Endpoint / URL", "Status"], labels
    assert {"Attempts", "Next attempt", "Last answer", "Last error", "Created at"} <= set(labels), labels
    assert "Series start" not in page and "Lease" not in page and "Slot reserved" not in page
    assert timezone.localtime(due).strftime("%Y-%m-%d %H:%M:%S") in page  # to the second
    assert any(text in page for text in spans(due, before, after)), "the time left, to the second"  # "in 4 min 12 s"
    assert until(due, before).startswith("in 4 min ")

    overdue = timezone.now() - datetime.timedelta(seconds=90)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=overdue)
    before = timezone.now()
    listed = admin_client.get(reverse("admin:deliveries_delivery_changelist")).content.decode()
    after = timezone.now()
    assert any(text in listed for text in spans(overdue, before, after))  # "overdue by 1 min 30 s"
    assert until(overdue, after).startswith("overdue by 1 min ")


def test_delivery_page_has_a_retry_button(admin_client, make_endpoint):
    failed = logged_delivery(make_endpoint(), "failed", codes=(400,))
    page = change_url("admin:deliveries_delivery_change", failed.pk)
    retry = reverse("admin:deliveries_delivery_retry", args=[failed.pk])
    html = admin_client.get(page).content.decode()
    form = re.search(rf'<form class="retry" method="post" action="{retry}">(.*?)</form>', html, re.S).group(1)
    assert 'name="csrfmiddlewaretoken"' in form and ">Retry now</button>" in form

    response = admin_client.post(retry, follow=True)
    assert response.redirect_chain == [(page, 302)]
    assert messages_of(response) == [f"Retrying delivery {failed.pk} now: a new series of attempts starts. Reload "
                                     "to see the attempt."]  # fmt: skip
    failed.refresh_from_db()
    assert failed.status == "pending"
    assert admin_client.get(retry).status_code == 405  # a GET changes nothing


def test_retry_button_refusals_say_why(admin_client, make_endpoint):
    succeeded = logged_delivery(make_endpoint())
    held = logged_delivery(make_endpoint("/off", is_active=False), "pending", codes=())
    Delivery.objects.filter(pk=held.pk).update(next_attempt_at=None)
    for delivery, why in [
        (succeeded, "Not retried: this delivery already succeeded, so it is not sent again."),
        (held, "Not retried: this delivery is held because its endpoint is disabled; enable the endpoint"),
    ]:
        response = admin_client.post(reverse("admin:deliveries_delivery_retry", args=[delivery.pk]), follow=True)
        (message,) = messages_of(response)
        assert message.startswith(why), message
        assert 'class="error"' in response.content.decode()
    succeeded.refresh_from_db()
    assert succeeded.status == "succeeded" and succeeded.attempt_count == 1


def test_retry_button_needs_the_csrf_token(client, admin_user, make_endpoint):
    from django.test import Client

    failed = logged_delivery(make_endpoint(), "failed", codes=(400,))
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    assert browser.post(reverse("admin:deliveries_delivery_retry", args=[failed.pk])).status_code == 403
    failed.refresh_from_db()
    assert failed.status == "failed"


def test_api_keys_show_their_status_in_words(admin_client, org):
    active, _ = ApiKey.issue(org, name="live")
    revoked, _ = ApiKey.issue(org, name="old")
    ApiKey.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    html = admin_client.get(reverse("admin:agents_hooks_apikey_changelist")).content.decode()
    assert ">active</strong>" in html
    assert f">revoked {timezone.localtime().strftime('%Y-%m-%d')} " in html
    assert "icon-no.svg" not in html  # no red cross for a key that works


def test_log_rows_cannot_be_deleted_even_by_a_superuser(admin_client, platform):
    for model in ("deliveries_event", "deliveries_delivery", "deliveries_attempt"):
        obj = platform[model.rsplit("_", 1)[-1]]
        assert admin_client.get(change_url(f"admin:{model}_delete", obj.pk)).status_code == 403
        page = admin_client.get(change_url(f"admin:{model}_change", obj.pk)).content.decode()
        assert "deletelink" not in page
        changelist = admin_client.get(reverse(f"admin:{model}_changelist")).content.decode()
        assert 'value="delete_selected"' not in changelist
        admin_client.post(reverse(f"admin:{model}_changelist"), {"action": "delete_selected",
                          "_selected_action": [obj.pk], "post": "yes"})  # fmt: skip
        assert type(obj).objects.filter(pk=obj.pk).exists(), model


def test_deleting_an_endpoint_still_deletes_its_log(admin_client, platform):
    endpoint = platform["endpoint"]
    confirm = admin_client.get(change_url("admin:webhooks_endpoint_delete", endpoint.pk)).content.decode()
    assert "Are you sure" in confirm and "permission to delete" not in confirm
    response = admin_client.post(change_url("admin:webhooks_endpoint_delete", endpoint.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Endpoint.objects.filter(pk=endpoint.pk).exists()
    assert not Delivery.objects.filter(endpoint_id=endpoint.pk).exists()


def test_times_on_an_endpoint_page_are_to_the_second(admin_client, make_endpoint):
    endpoint = make_endpoint()
    page = admin_client.get(change_url("admin:webhooks_endpoint_change", endpoint.pk)).content.decode()
    assert f"{endpoint.created_at:%Y-%m-%d %H:%M:%S}" in page
    assert "p.m." not in page and "a.m." not in page
