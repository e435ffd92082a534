"""Cross-organization isolation, for every resource: another organization's object answers 404
(exactly as an id that does not exist: no 403, no data, no way to tell it exists), is never
listed, is left untouched by every write and action, and naming it in a request body is a 400
on that field."""

import json

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from agents_hooks.models import (
    Agent,
    AgentTool,
    Job,
    Message,
    Organization,
    Run,
    Step,
    Tool,
    ToolExecution,
)  # fmt: skip
from deliveries.models import Attempt, Delivery, Event
from webhooks.models import Endpoint

pytestmark = pytest.mark.django_db

PUBLIC = "https://93.184.216.34/hook"


def one_of_everything(org: Organization, name: str) -> dict:
    agent = Agent.objects.create(organization=org, name=f"{name}-agent")
    tool = Tool.objects.create(organization=org, name=f"{name}-tool")
    AgentTool.objects.create(agent=agent, tool=tool)
    run = Run.objects.create(agent=agent, metadata={"owner": name})
    step = Step.objects.create(agent=agent, run=run, error=f"{name}-step")
    endpoint = Endpoint.objects.create(organization=org, url=PUBLIC, description=f"{name}-endpoint")
    now = timezone.now()
    event = Event.objects.create(
        type="agent.step.completed",
        organization=org,
        agent=agent,
        body=json.dumps({"owner": name}),
        created_at=now,
        fanned_out_at=now,
    )
    delivery = Delivery.objects.create(
        event=event, endpoint=endpoint, status="failed", attempt_count=1, created_at=now, finished_at=now
    )
    Attempt.objects.create(
        delivery=delivery, number=1, started_at=now, url=PUBLIC, status_code=400, duration_ms=3, response_body=name
    )
    return {
        "agents": agent,
        "tools": tool,
        "runs": run,
        "jobs": Job.objects.create(organization=org, agent=agent, metadata={"owner": name}),
        "steps": step,
        "messages": Message.objects.create(agent=agent, step=step, content=f"{name}-message"),
        "tool-executions": ToolExecution.objects.create(agent=agent, tool=tool, step=step),
        "webhooks": endpoint,
        "events": event,
        "deliveries": delivery,
    }


@pytest.fixture
def mine(org):
    return one_of_everything(org, "mine")


@pytest.fixture
def theirs(db):
    return one_of_everything(Organization.objects.create(name="Globex"), "theirs")


RESOURCES = [
    "agents",
    "tools",
    "runs",
    "jobs",
    "steps",
    "messages",
    "tool-executions",
    "webhooks",
    "events",
    "deliveries",
]
# A valid change for each resource that can be changed (from their object's own state).
PATCHES = {
    "agents": {"name": "hijacked"},
    "tools": {"name": "hijacked"},
    "runs": {"status": "completed"},
    "jobs": {"status": "completed"},
    "steps": {"status": "success"},
    "tool-executions": {"status": "success"},
    "webhooks": {"url": "https://93.184.216.34/hijacked"},
}
DELETABLE = ["agents", "tools", "webhooks"]
UNKNOWN_ID = {"deliveries": 987654321}


def snapshot(obj) -> dict:
    """Every column of the row, as stored now."""
    return type(obj).objects.filter(pk=obj.pk).values().get()


def assert_404_like_a_missing_id(api, method, resource, their_obj, body=None):
    call = getattr(api, method)
    kwargs = {"format": "json"} if body is not None else {}
    response = call(f"/api/v1/{resource}/{their_obj.pk}/", *([body] if body is not None else []), **kwargs)
    missing = call(f"/api/v1/{resource}/{UNKNOWN_ID.get(resource, 'x-missing')}/", *([body] if body else []), **kwargs)
    assert response.status_code == 404, (method, resource, response.content)
    assert response.json() == missing.json()  # no way to tell "theirs" from "nobody's"
    assert str(their_obj.pk) not in response.content.decode()
    assert "theirs" not in response.content.decode()


@pytest.mark.parametrize("resource", RESOURCES)
def test_reading_their_object_is_404(api, mine, theirs, resource):
    assert api.get(f"/api/v1/{resource}/{mine[resource].pk}/").status_code == 200
    assert_404_like_a_missing_id(api, "get", resource, theirs[resource])


@pytest.mark.parametrize("resource", list(PATCHES))
def test_changing_their_object_is_404_and_changes_nothing(api, mine, theirs, resource):
    before = snapshot(theirs[resource])
    assert_404_like_a_missing_id(api, "patch", resource, theirs[resource], PATCHES[resource])
    if resource in DELETABLE:  # these also take a full update
        full = {"name": "hijacked"} if resource != "webhooks" else {"url": "https://93.184.216.34/hijacked"}
        assert_404_like_a_missing_id(api, "put", resource, theirs[resource], full)
    assert snapshot(theirs[resource]) == before
    assert not Event.objects.filter(organization=theirs["agents"].organization, type__endswith="completed").exclude(
        pk=theirs["events"].pk
    )


@pytest.mark.parametrize("resource", DELETABLE)
def test_deleting_their_object_is_404_and_deletes_nothing(api, theirs, resource):
    assert_404_like_a_missing_id(api, "delete", resource, theirs[resource])
    assert type(theirs[resource]).objects.filter(pk=theirs[resource].pk).exists()


@pytest.mark.parametrize("resource", RESOURCES)
def test_lists_never_include_their_objects(api, mine, theirs, resource):
    response = api.get(f"/api/v1/{resource}/?page_size=500")
    assert response.status_code == 200
    listed = [row["id"] for row in response.json()["results"]]
    assert mine[resource].pk in listed
    assert theirs[resource].pk not in listed
    assert "theirs" not in response.content.decode()
    if resource == "events":  # their platform saves published events too: none of them shows
        their_events = Event.objects.filter(organization=theirs["agents"].organization).values_list("pk", flat=True)
        assert len(their_events) > 1 and not set(listed) & set(their_events)
    else:
        assert listed == [mine[resource].pk]


@pytest.mark.parametrize(
    "query",
    [
        "deliveries/?webhook={webhooks}",
        "deliveries/?agent={agents}",
        "deliveries/?event={events}",
        "events/?agent={agents}",
    ],
)
def test_filtering_on_their_ids_finds_nothing(api, mine, theirs, query):
    response = api.get("/api/v1/" + query.format(**{k: v.pk for k, v in theirs.items()}))
    assert response.status_code == 200
    assert response.json()["count"] == 0


def test_tool_attach_and_detach_on_their_agent_are_404(api, mine, theirs):
    agent, tool = theirs["agents"], theirs["tools"]
    assert api.post(f"/api/v1/agents/{agent.pk}/tools/", {"tool": tool.pk}, format="json").status_code == 404
    assert api.delete(f"/api/v1/agents/{agent.pk}/tools/{tool.pk}/").status_code == 404
    assert AgentTool.objects.filter(agent=agent, tool=tool).exists()
    # My agent, their tool: not attached to mine, so nothing to detach either.
    assert api.delete(f"/api/v1/agents/{mine['agents'].pk}/tools/{tool.pk}/").status_code == 404


def test_webhook_actions_on_their_endpoint_are_404(api, theirs):
    endpoint, delivery = theirs["webhooks"], theirs["deliveries"]
    before = snapshot(endpoint)
    assert api.post(f"/api/v1/webhooks/{endpoint.pk}/rotate-secret/").status_code == 404
    assert api.post(f"/api/v1/webhooks/{endpoint.pk}/test/?wait=1").status_code == 404
    response = api.post(f"/api/v1/webhooks/{endpoint.pk}/recover/", {"since": "2000-01-01T00:00:00Z"}, format="json")
    assert response.status_code == 404
    assert snapshot(endpoint) == before  # same secret, no rotation
    assert Delivery.objects.get(pk=delivery.pk).status == "failed"
    assert Delivery.objects.count() == 1  # no test event sent anywhere
    assert not Event.objects.filter(type="webhook.test").exists()


def test_retrying_their_delivery_is_404(api, theirs):
    delivery = theirs["deliveries"]
    for body in ({}, {"force": True}):
        assert api.post(f"/api/v1/deliveries/{delivery.pk}/retry/", body, format="json").status_code == 404
    assert snapshot(delivery) == snapshot(Delivery.objects.get(pk=delivery.pk))
    assert Delivery.objects.get(pk=delivery.pk).status == "failed"


def test_recovering_my_endpoint_leaves_their_deliveries_alone(api, mine, theirs):
    response = api.post(
        f"/api/v1/webhooks/{mine['webhooks'].pk}/recover/", {"since": "2000-01-01T00:00:00Z"}, format="json"
    )
    assert response.json() == {"recovered": 1}
    assert Delivery.objects.get(pk=theirs["deliveries"].pk).status == "failed"


# (method, path, body, field): `{x}` is my object of kind x, `{their_x}` theirs.
REFERENCES = [
    ("post", "runs/", {"agent": "{their_agents}"}, "agent"),
    ("patch", "runs/{runs}/", {"agent": "{their_agents}"}, "agent"),
    ("post", "jobs/", {"agent": "{their_agents}"}, "agent"),
    ("patch", "jobs/{jobs}/", {"agent": "{their_agents}"}, "agent"),
    ("post", "steps/", {"agent": "{their_agents}"}, "agent"),
    ("post", "steps/", {"agent": "{agents}", "run": "{their_runs}"}, "run"),
    ("patch", "steps/{steps}/", {"run": "{their_runs}"}, "run"),
    ("post", "messages/", {"agent": "{their_agents}", "content": "hi"}, "agent"),
    ("post", "messages/", {"agent": "{agents}", "step": "{their_steps}", "content": "hi"}, "step"),
    ("post", "tool-executions/", {"agent": "{their_agents}", "tool": "{tools}"}, "agent"),
    ("post", "tool-executions/", {"agent": "{agents}", "tool": "{their_tools}"}, "tool"),
    ("post", "tool-executions/", {"agent": "{agents}", "tool": "{tools}", "step": "{their_steps}"}, "step"),
    ("post", "webhooks/", {"url": PUBLIC, "agent": "{their_agents}"}, "agent"),
    ("patch", "webhooks/{webhooks}/", {"agent": "{their_agents}"}, "agent"),
    ("post", "agents/{agents}/tools/", {"tool": "{their_tools}"}, "tool"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"), REFERENCES, ids=[f"{m} {p} {f}" for m, p, _, f in REFERENCES]
)
def test_naming_their_object_in_a_body_is_400_on_that_field(api, mine, theirs, method, path, body, field):
    names = {k: v.pk for k, v in mine.items()} | {f"their_{k}": v.pk for k, v in theirs.items()}
    fill = {k: v.format(**names) if isinstance(v, str) else v for k, v in body.items()}
    counts = {model: model.objects.count() for model in (Run, Job, Step, Message, ToolExecution, Endpoint, AgentTool)}

    response = getattr(api, method)(f"/api/v1/{path.format(**names)}", fill, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    # Exactly what an id that exists nowhere gets: their object's existence does not show.
    missing = getattr(api, method)(f"/api/v1/{path.format(**names)}", {**fill, field: "x-missing"}, format="json")
    assert response.json()[field][0].replace(fill[field], "x-missing") == missing.json()[field][0]
    assert {model: model.objects.count() for model in counts} == counts
    for obj in mine.values():
        if not isinstance(obj, (Event, Delivery)):
            assert snapshot(obj) == snapshot(type(obj).objects.get(pk=obj.pk))


def test_their_events_and_deliveries_detail_hide_their_payload(api, theirs):
    for resource in ("events", "deliveries"):
        response = api.get(f"/api/v1/{resource}/{theirs[resource].pk}/")
        assert response.status_code == 404
        assert "theirs" not in response.content.decode()


def test_a_staff_session_sees_only_the_organization_it_acts_for(org, mine, theirs):
    staff = User.objects.create_user("ops", password="pw", is_staff=True)
    client = APIClient()
    client.force_login(staff)
    assert client.get(f"/api/v1/agents/{mine['agents'].pk}/?organization={org.pk}").status_code == 200
    assert client.get(f"/api/v1/agents/{theirs['agents'].pk}/?organization={org.pk}").status_code == 404
    listed = client.get(f"/api/v1/deliveries/?organization={org.pk}").json()["results"]
    assert [d["id"] for d in listed] == [mine["deliveries"].pk]
