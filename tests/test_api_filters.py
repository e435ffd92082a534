"""Filtering and searching every list of the API: the right rows come back, and a value that
cannot match (an unknown status, a bad datetime, an id not in your organization) is a 400 naming
the parameter, never an empty page and never a 500. The schema lists every parameter, so the
docs and generated clients know them."""

import datetime

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from agents_hooks.models import Agent, AgentTool, Job, Message, Organization, Run, Step, Tool, ToolExecution
from webhooks.models import Endpoint

pytestmark = pytest.mark.django_db

PUBLIC = "https://93.184.216.34/hook"


def ids(response) -> list[str]:
    assert response.status_code == 200, response.json()
    return [row["id"] for row in response.json()["results"]]


def backdate(obj, **age):
    """Set `created_at` (auto_now_add) into the past."""
    type(obj).objects.filter(pk=obj.pk).update(created_at=timezone.now() - datetime.timedelta(**age))


@pytest.fixture
def platform(org):
    """Two agents of ours, each with a run, steps, messages and tool calls; another organization's agent."""
    support = Agent.objects.create(organization=org, name="support-bot")
    billing = Agent.objects.create(organization=org, name="Billing helper")
    search = Tool.objects.create(organization=org, name="web_search", description="Looks things up online")
    calc = Tool.objects.create(organization=org, name="calculator", description="Arithmetic")
    AgentTool.objects.create(agent=support, tool=search)
    support_run = Run.objects.create(agent=support)
    billing_run = Run.objects.create(agent=billing, status="completed")
    backdate(support_run, days=2)
    steps = {
        "support_pending": Step.objects.create(agent=support, run=support_run),
        "support_done": Step.objects.create(agent=support, run=support_run, status="success"),
        "billing_failed": Step.objects.create(agent=billing, run=billing_run, status="failed"),
    }
    backdate(steps["support_pending"], hours=3)
    jobs = {
        "support": Job.objects.create(organization=org, agent=support, status="running"),
        "none": Job.objects.create(organization=org),
    }
    messages = {
        "hello": Message.objects.create(
            agent=support, step=steps["support_done"], content="Hello, where is my invoice?"
        ),
        "reply": Message.objects.create(agent=billing, role="assistant", content="Your refund is on its way"),
    }
    calls = {
        "search": ToolExecution.objects.create(agent=support, tool=search, step=steps["support_done"]),
        "calc": ToolExecution.objects.create(agent=billing, tool=calc, status="success", duration_ms=4),
    }
    other = Agent.objects.create(organization=Organization.objects.create(name="Other"), name="not yours")
    return {
        "support": support, "billing": billing, "search": search, "calc": calc, "support_run": support_run,
        "billing_run": billing_run, "steps": steps, "jobs": jobs, "messages": messages, "calls": calls, "other": other,
    }  # fmt: skip


# --- the right rows --------------------------------------------------------------------------


def test_steps_by_agent_run_status_and_time(api, platform):
    p, s = platform, platform["steps"]
    assert ids(api.get(f"/api/v1/steps/?agent={p['support'].pk}")) == [s["support_pending"].pk, s["support_done"].pk]
    assert ids(api.get(f"/api/v1/steps/?run={p['billing_run'].pk}")) == [s["billing_failed"].pk]
    assert ids(api.get("/api/v1/steps/?status=failed")) == [s["billing_failed"].pk]
    since = (timezone.now() - datetime.timedelta(hours=1)).isoformat()
    assert ids(api.get("/api/v1/steps/", {"created_after": since})) == [s["support_done"].pk, s["billing_failed"].pk]
    assert ids(api.get("/api/v1/steps/", {"created_before": since})) == [s["support_pending"].pk]
    both = api.get("/api/v1/steps/", {"agent": p["support"].pk, "status": "success", "created_after": since})
    assert ids(both) == [s["support_done"].pk]


def test_runs_and_jobs_by_agent_status_and_time(api, platform):
    p = platform
    assert ids(api.get(f"/api/v1/runs/?agent={p['billing'].pk}")) == [p["billing_run"].pk]
    assert ids(api.get("/api/v1/runs/?status=created")) == [p["support_run"].pk]
    day_ago = (timezone.now() - datetime.timedelta(days=1)).isoformat()
    assert ids(api.get("/api/v1/runs/", {"created_before": day_ago})) == [p["support_run"].pk]
    assert ids(api.get(f"/api/v1/jobs/?agent={p['support'].pk}")) == [p["jobs"]["support"].pk]
    assert ids(api.get("/api/v1/jobs/?status=created")) == [p["jobs"]["none"].pk]


def test_agents_by_name_search_and_tool(api, platform):
    p = platform
    assert ids(api.get("/api/v1/agents/?search=BILLING")) == [p["billing"].pk]
    assert ids(api.get("/api/v1/agents/?search=bot")) == [p["support"].pk]
    assert ids(api.get(f"/api/v1/agents/?tool={p['search'].pk}")) == [p["support"].pk]
    assert ids(api.get(f"/api/v1/agents/?tool={p['calc'].pk}")) == []


def test_tools_messages_and_tool_executions(api, platform):
    p = platform
    assert ids(api.get("/api/v1/tools/?search=online")) == [p["search"].pk]
    assert ids(api.get(f"/api/v1/tools/?agent={p['support'].pk}")) == [p["search"].pk]
    assert ids(api.get("/api/v1/messages/?search=refund")) == [p["messages"]["reply"].pk]
    assert ids(api.get("/api/v1/messages/?role=assistant")) == [p["messages"]["reply"].pk]
    assert ids(api.get(f"/api/v1/messages/?step={p['steps']['support_done'].pk}")) == [p["messages"]["hello"].pk]
    assert ids(api.get(f"/api/v1/messages/?agent={p['billing'].pk}")) == [p["messages"]["reply"].pk]
    calls = p["calls"]
    assert ids(api.get(f"/api/v1/tool-executions/?tool={p['search'].pk}")) == [calls["search"].pk]
    assert ids(api.get("/api/v1/tool-executions/?status=success")) == [calls["calc"].pk]
    assert ids(api.get(f"/api/v1/tool-executions/?agent={p['billing'].pk}")) == [calls["calc"].pk]
    assert ids(api.get(f"/api/v1/tool-executions/?step={p['steps']['support_done'].pk}")) == [calls["search"].pk]


@pytest.fixture
def endpoints(org, agent):
    made = {
        "steps": Endpoint.objects.create(
            organization=org, url=PUBLIC, event_types=["agent.step.*"], description="Billing"
        ),
        "all": Endpoint.objects.create(organization=org, url="https://93.184.216.34/all", event_types=[]),
        "ops": Endpoint.objects.create(
            organization=org, url="https://93.184.216.34/pager", event_types=["delivery.dead"], is_active=False
        ),
        "mine": Endpoint.objects.create(organization=org, url=PUBLIC, agent=agent, event_types=["*"]),
    }
    return made


def test_webhooks_by_state_event_type_agent_and_search(api, endpoints, agent):
    e = {name: endpoint.pk for name, endpoint in endpoints.items()}
    assert ids(api.get("/api/v1/webhooks/?is_active=false")) == [e["ops"]]
    assert ids(api.get("/api/v1/webhooks/?is_active=true")) == [e["steps"], e["all"], e["mine"]]
    # Who receives a type: by name or pattern, an empty filter for agent events, "*" for all.
    assert ids(api.get("/api/v1/webhooks/?event_type=agent.step.failed")) == [e["steps"], e["all"], e["mine"]]
    assert ids(api.get("/api/v1/webhooks/?event_type=agent.run.completed")) == [e["all"], e["mine"]]
    # Operational events: only where named, and never to an endpoint scoped to one agent.
    assert ids(api.get("/api/v1/webhooks/?event_type=delivery.dead")) == [e["ops"]]
    assert ids(api.get(f"/api/v1/webhooks/?agent={agent.pk}")) == [e["mine"]]
    assert ids(api.get("/api/v1/webhooks/?search=pager")) == [e["ops"]]
    assert ids(api.get("/api/v1/webhooks/?search=billing")) == [e["steps"]]
    assert ids(api.get("/api/v1/webhooks/?is_active=true&search=93.184.216.34/hook")) == [e["steps"], e["mine"]]


# --- values that cannot match: a 400 naming the parameter -------------------------------------


@pytest.mark.parametrize(
    "url, field, message",
    [
        ("/api/v1/steps/?status=done", "status", "unknown value 'done': one of pending, success, failed, cancelled"),
        ("/api/v1/runs/?status=finished", "status", "unknown value 'finished': one of created, running, completed"),
        ("/api/v1/tool-executions/?status=ok", "status", "unknown value 'ok': one of running, success, error"),
        ("/api/v1/messages/?role=bot", "role", "unknown value 'bot': one of user, assistant, system, tool"),
        ("/api/v1/steps/?created_after=yesterday", "created_after", "Enter a valid date/time."),
        ("/api/v1/runs/?created_before=2026-13-01", "created_before", "Enter a valid date/time."),
        ("/api/v1/runs/?created_after=0001-01-01T00:00:00%2B01:00", "created_after", "Enter a valid date/time."),
        ("/api/v1/steps/?agent=agent-nobody", "agent", "no agent 'agent-nobody' in your organization"),
        ("/api/v1/steps/?run=run-nobody", "run", "no run 'run-nobody' in your organization"),
        ("/api/v1/agents/?tool=tool-nobody", "tool", "no tool 'tool-nobody' in your organization"),
        ("/api/v1/messages/?agent=a%00b", "agent", "no agent 'a\\x00b' in your organization"),
        ("/api/v1/webhooks/?is_active=yes", "is_active", "must be true or false, not 'yes'"),
        ("/api/v1/webhooks/?agent=agent-nobody", "agent", "no agent 'agent-nobody' in your organization"),
        ("/api/v1/webhooks/?event_type=agent.stepp.completed", "event_type", "unknown event type 'agent.stepp"),
        ("/api/v1/agents/?search=a%00b", "search", "Null characters are not allowed."),
    ],
)
def test_a_value_that_cannot_match_is_a_400_naming_the_parameter(api, platform, url, field, message):
    response = api.get(url)
    assert response.status_code == 400, response.content
    body = response.json()
    assert list(body) == [field]
    assert body[field][0].startswith(message), body


def test_another_organizations_agent_is_refused_not_an_empty_page(api, platform):
    other = platform["other"].pk
    for resource in ("runs", "jobs", "steps", "messages", "tool-executions", "tools", "webhooks"):
        response = api.get(f"/api/v1/{resource}/?agent={other}")
        assert (response.status_code, response.json()) == (
            400,
            {"agent": [f"no agent '{other}' in your organization"]},
        ), resource


def test_an_empty_value_is_no_filter(api, platform):
    assert len(ids(api.get("/api/v1/steps/?status=&agent=&created_after="))) == 3


# --- in the schema -----------------------------------------------------------------------------


def test_the_schema_lists_every_filter(api):
    schema = APIClient().get("/api/schema/?format=json").json()

    def parameters(path):
        return {p["name"]: p for p in schema["paths"][path]["get"]["parameters"] if p["in"] == "query"}

    expected = {
        "/api/v1/agents/": {"search", "tool", "created_after", "created_before"},
        "/api/v1/tools/": {"search", "agent", "created_after", "created_before"},
        "/api/v1/runs/": {"agent", "status", "created_after", "created_before"},
        "/api/v1/jobs/": {"agent", "status", "created_after", "created_before"},
        "/api/v1/steps/": {"agent", "run", "status", "created_after", "created_before"},
        "/api/v1/messages/": {"search", "agent", "step", "role", "created_after", "created_before"},
        "/api/v1/tool-executions/": {"agent", "tool", "step", "status", "created_after", "created_before"},
        "/api/v1/webhooks/": {"search", "is_active", "event_type", "agent", "created_after", "created_before"},
    }
    for path, names in expected.items():
        assert names <= set(parameters(path)), path
    steps = parameters("/api/v1/steps/")
    assert steps["status"]["schema"]["enum"] == ["cancelled", "failed", "pending", "success"]
    assert steps["created_after"]["schema"] == {"type": "string", "format": "date-time"}
    assert steps["agent"]["schema"] == {"type": "string"} and steps["agent"]["description"] == "Steps of this agent."
    webhooks = parameters("/api/v1/webhooks/")
    assert webhooks["is_active"]["schema"] == {"type": "boolean"}
    assert webhooks["event_type"]["schema"] == {"type": "string"}  # built in or registered: no fixed list
    assert (
        webhooks["search"]["description"] == "Words to look for (case-insensitive), each in any of: url, description."
    )


def test_the_browsable_api_shows_the_filters_as_text_boxes(platform):
    """A logged-in staff user's HTML page: the filter form renders, asking for ids in a text box
    rather than listing every run and step of the organization in a drop-down."""
    client = APIClient()
    client.force_login(User.objects.create_user("staff", is_staff=True))
    organization = platform["support"].organization_id
    page = client.get(f"/api/v1/steps/?organization={organization}&status=success", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="run"' in html and 'name="created_after"' in html
    assert platform["billing_run"].pk not in html  # not offered as a choice (only listed steps show it)
    refused = client.get(f"/api/v1/steps/?organization={organization}&status=done", HTTP_ACCEPT="application/json")
    assert refused.status_code == 400
