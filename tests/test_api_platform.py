"""The REST API for the agent platform, as a client sees it: keys and sessions, agents and tools
(attach/detach), runs, jobs, steps, messages, tool executions; every change through the API
fires the same event a model save does; bad input is a 400 naming the field, never a 500."""

import hashlib
import io
import json

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from agents_hooks.models import Agent, AgentTool, ApiKey, Organization, Run, Step, Tool, ToolExecution
from deliveries.models import Event

pytestmark = pytest.mark.django_db


@pytest.fixture
def tool(org) -> Tool:
    return Tool.objects.create(organization=org, name="web_search")


def events(event_type: str) -> list[dict]:
    """The envelopes recorded for one event type, oldest first."""
    return [json.loads(e.body) for e in Event.objects.filter(type=event_type).order_by("created_at")]


def post(api, path, body):
    return api.post(f"/api/v1/{path}", body, format="json")


def patch(api, path, body):
    return api.patch(f"/api/v1/{path}", body, format="json")


# --- keys and sessions ------------------------------------------------------------------


def test_create_api_key_command_prints_a_working_key_once_and_stores_only_its_hash(org, agent):
    out = io.StringIO()
    call_command("create_api_key", org.id, "--name", "ci", stdout=out)
    key = out.getvalue().split()[-1]
    assert key.startswith("ahk_")
    assert out.getvalue().count(key) == 1
    row = ApiKey.objects.get(organization=org)
    assert row.name == "ci"
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    stored = [str(v) for v in ApiKey.objects.values_list(*[f.attname for f in ApiKey._meta.fields]).get()]
    assert key not in stored

    response = APIClient(HTTP_AUTHORIZATION=f"Bearer {key}").get("/api/v1/agents/")
    assert response.status_code == 200
    assert [a["id"] for a in response.json()["results"]] == [agent.id]
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_create_api_key_command_finds_the_organization_by_name(org):
    out = io.StringIO()
    call_command("create_api_key", "Acme", stdout=out)
    assert f"({org.id})" in out.getvalue()


def test_create_api_key_command_refuses_an_unknown_organization_cleanly(db):
    with pytest.raises(CommandError, match=r"no organization 'Nope' \(use --create-organization"):
        call_command("create_api_key", "Nope", stdout=io.StringIO())
    assert not ApiKey.objects.exists()
    out = io.StringIO()
    call_command("create_api_key", "Nope", "--create-organization", stdout=out)
    assert Organization.objects.get(name="Nope").api_keys.count() == 1


def test_no_key_unknown_key_malformed_header_and_revoked_key_are_401(org):
    response = APIClient().get("/api/v1/agents/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    for header in ("Bearer ahk_not-a-key", "Bearer", "Bearer two words"):
        assert APIClient(HTTP_AUTHORIZATION=header).get("/api/v1/agents/").status_code == 401, header

    row, key = ApiKey.issue(org)
    client = APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/api/v1/agents/").status_code == 200
    row.revoked_at = row.created_at
    row.save()
    response = client.get("/api/v1/agents/")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_staff_session_acts_for_the_organization_it_names(org, agent):
    other = Organization.objects.create(name="Other")
    Agent.objects.create(organization=other, name="theirs")
    staff = User.objects.create_user("ops", password="pw", is_staff=True)
    client = APIClient()
    client.force_login(staff)

    response = client.get(f"/api/v1/agents/?organization={org.id}")
    assert response.status_code == 200
    assert [a["id"] for a in response.json()["results"]] == [agent.id]
    response = client.get("/api/v1/agents/", HTTP_X_ORGANIZATION=other.id)
    assert [a["name"] for a in response.json()["results"]] == ["theirs"]
    created = client.post(f"/api/v1/agents/?organization={org.id}", {"name": "from the admin"}, format="json")
    assert created.status_code == 201
    assert Agent.objects.get(pk=created.json()["id"]).organization == org

    # Two organizations and none named: the 400 says how to choose.
    response = client.get("/api/v1/agents/")
    assert response.status_code == 400
    assert "organization" in response.json()
    response = client.get("/api/v1/agents/?organization=org-nope")
    assert response.status_code == 400
    assert "organization" in response.json()
    # The browsable API renders for a logged-in staff user.
    response = client.get(f"/api/v1/agents/?organization={org.id}", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")


def test_non_staff_session_is_refused(org):
    user = User.objects.create_user("someone", password="pw")
    client = APIClient()
    client.force_login(user)
    assert client.get(f"/api/v1/agents/?organization={org.id}").status_code == 403


def test_session_writes_need_the_csrf_token(org):
    staff = User.objects.create_user("ops", password="pw", is_staff=True)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(staff)
    response = client.post(f"/api/v1/agents/?organization={org.id}", {"name": "x"}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_schema_and_docs_are_served(db):
    schema = APIClient().get("/api/schema/?format=json")
    assert schema.status_code == 200
    document = json.loads(schema.content)
    assert document["openapi"].startswith("3.")
    for path in (
        "/api/v1/agents/{id}/tools/",
        "/api/v1/webhooks/{id}/rotate-secret/",
        "/api/v1/deliveries/{id}/retry/",
    ):
        assert path in document["paths"], path
    assert APIClient().get("/api/docs/").status_code == 200


# --- agents and tools -------------------------------------------------------------------


def test_agent_crud(api, org):
    created = post(api, "agents/", {"name": "helper"})
    assert created.status_code == 201
    agent = created.json()
    assert agent["id"].startswith("agent-") and agent["name"] == "helper" and agent["tools"] == []
    assert Agent.objects.get(pk=agent["id"]).organization == org

    listed = api.get("/api/v1/agents/").json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == agent["id"]
    assert api.get(f"/api/v1/agents/{agent['id']}/").json()["name"] == "helper"
    assert patch(api, f"agents/{agent['id']}/", {"name": "renamed"}).json()["name"] == "renamed"
    assert api.put(f"/api/v1/agents/{agent['id']}/", {"name": "again"}, format="json").json()["name"] == "again"
    assert api.delete(f"/api/v1/agents/{agent['id']}/").status_code == 204
    assert api.get(f"/api/v1/agents/{agent['id']}/").status_code == 404


def test_agent_validation_names_the_field(api):
    assert post(api, "agents/", {}).json() == {"name": ["This field is required."]}
    assert "name" in post(api, "agents/", {"name": "x" * 201}).json()
    assert "name" in post(api, "agents/", {"name": ""}).json()


def test_tool_crud(api, org):
    created = post(api, "tools/", {"name": "calculator", "description": "adds"})
    assert created.status_code == 201
    tool_id = created.json()["id"]
    assert Tool.objects.get(pk=tool_id).organization == org
    assert api.get("/api/v1/tools/").json()["count"] == 1
    assert patch(api, f"tools/{tool_id}/", {"description": "adds up"}).json()["description"] == "adds up"
    assert api.delete(f"/api/v1/tools/{tool_id}/").status_code == 204
    assert not Tool.objects.filter(pk=tool_id).exists()


def test_attach_and_detach_a_tool_fire_the_events(api, agent, tool):
    attached = post(api, f"agents/{agent.id}/tools/", {"tool": tool.id})
    assert attached.status_code == 201
    assert attached.json()["tools"] == [tool.id]
    assert [e["data"] for e in events("agent.tool.attached")] == [{"tool_id": tool.id, "tool_name": "web_search"}]

    again = post(api, f"agents/{agent.id}/tools/", {"tool": tool.id})
    assert again.status_code == 400
    assert "tool" in again.json()

    assert api.delete(f"/api/v1/agents/{agent.id}/tools/{tool.id}/").status_code == 204
    assert not AgentTool.objects.exists()
    assert [e["data"] for e in events("agent.tool.detached")] == [{"tool_id": tool.id, "tool_name": "web_search"}]
    assert api.delete(f"/api/v1/agents/{agent.id}/tools/{tool.id}/").status_code == 404


def test_attach_refuses_a_missing_or_unknown_tool(api, agent):
    assert "tool" in post(api, f"agents/{agent.id}/tools/", {}).json()
    response = post(api, f"agents/{agent.id}/tools/", {"tool": "tool-nope"})
    assert response.status_code == 400
    assert "tool" in response.json()


def test_deleting_an_agent_with_tools_succeeds(api, agent, tool):
    """As with `agent.delete()` in code: the attachments go with the agent, and no detach
    event is published for an agent that no longer exists."""
    AgentTool.objects.create(agent=agent, tool=tool)
    assert api.delete(f"/api/v1/agents/{agent.id}/").status_code == 204
    assert not Agent.objects.filter(pk=agent.id).exists()
    assert not Event.objects.filter(type="agent.tool.detached").exists()


# --- runs, jobs, steps, messages, tool executions ----------------------------------------


def test_run_lifecycle_publishes_agent_run_completed_once(api, agent):
    created = post(api, "runs/", {"agent": agent.id, "metadata": {"ticket": 7}})
    assert created.status_code == 201
    run = created.json()
    assert run["status"] == "created" and run["completed_at"] is None

    assert patch(api, f"runs/{run['id']}/", {"status": "running"}).status_code == 200
    assert events("agent.run.completed") == []
    done = patch(api, f"runs/{run['id']}/", {"status": "completed"})
    assert done.status_code == 200
    assert done.json()["completed_at"] is not None
    assert patch(api, f"runs/{run['id']}/", {"status": "completed"}).status_code == 200  # a re-save
    (event,) = events("agent.run.completed")
    assert event["data"]["run_id"] == run["id"]
    assert event["data"]["status"] == "completed"
    assert event["data"]["metadata"] == {"ticket": 7}


def test_run_status_cannot_go_back_or_leave_a_final_state(api, agent):
    run = Run.objects.create(agent=agent, status="running")
    response = patch(api, f"runs/{run.id}/", {"status": "created"})
    assert response.status_code == 400
    assert "status" in response.json()
    patch(api, f"runs/{run.id}/", {"status": "failed"})
    response = patch(api, f"runs/{run.id}/", {"status": "running"})
    assert response.status_code == 400
    assert "final" in response.json()["status"][0]
    assert "status" in patch(api, f"runs/{run.id}/", {"status": "bogus"}).json()


def test_runs_and_steps_are_history_and_cannot_be_deleted(api, agent):
    run = Run.objects.create(agent=agent)
    step = Step.objects.create(agent=agent)
    assert api.delete(f"/api/v1/runs/{run.id}/").status_code == 405
    assert api.delete(f"/api/v1/steps/{step.id}/").status_code == 405


def test_run_callback_url_must_be_a_public_http_url(api, agent):
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/cb", "ftp://example.com/cb", "nope"):
        response = post(api, "runs/", {"agent": agent.id, "callback_url": url})
        assert response.status_code == 400, url
        assert list(response.json()) == ["callback_url"], url


def test_job_lifecycle_with_and_without_an_agent(api, agent):
    loose = post(api, "jobs/", {})
    assert loose.status_code == 201
    assert loose.json()["agent"] is None
    job = post(api, "jobs/", {"agent": agent.id, "metadata": {"batch": "a"}}).json()
    assert patch(api, f"jobs/{job['id']}/", {"status": "completed"}).status_code == 200
    (event,) = events("agent.job.completed")
    assert event["data"]["job_id"] == job["id"] and event["agent_id"] == agent.id


def test_metadata_must_be_an_object_postgres_can_store(api, agent):
    for metadata in ("text", [1, 2], {"a": "nul\u0000"}, {"nul\u0000": 1}, {"deep": [{"x": "\u0000"}]}):
        response = post(api, "runs/", {"agent": agent.id, "metadata": metadata})
        assert response.status_code == 400, metadata
        assert list(response.json()) == ["metadata"], metadata
    raw = b'{"agent": "%s", "metadata": {"a": "\\ud800"}}' % agent.id.encode()  # a lone surrogate
    response = api.post("/api/v1/runs/", raw, content_type="application/json")
    assert response.status_code == 400
    assert list(response.json()) == ["metadata"]


def test_completing_a_step_publishes_agent_step_completed_with_usage(api, agent):
    run = Run.objects.create(agent=agent)
    created = post(api, "steps/", {"agent": agent.id, "run": run.id})
    assert created.status_code == 201
    step = created.json()
    assert step["status"] == "pending" and step["completed_at"] is None

    done = patch(
        api,
        f"steps/{step['id']}/",
        {"status": "success", "prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
    )
    assert done.status_code == 200
    assert done.json()["completed_at"] is not None
    (event,) = events("agent.step.completed")
    assert event["agent_id"] == agent.id
    assert event["data"]["step_id"] == step["id"]
    assert event["data"]["run_id"] == run.id
    assert event["data"]["usage"] == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}


@pytest.mark.parametrize(
    ("status", "event_type"), [("failed", "agent.step.failed"), ("cancelled", "agent.step.cancelled")]
)
def test_failed_and_cancelled_steps_publish_their_events(api, agent, status, event_type):
    step = Step.objects.create(agent=agent)
    assert patch(api, f"steps/{step.id}/", {"status": status, "error": "boom"}).status_code == 200
    (event,) = events(event_type)
    assert event["data"]["status"] == status


def test_step_transitions_out_of_a_final_state_are_400(api, agent):
    step = Step.objects.create(agent=agent)
    patch(api, f"steps/{step.id}/", {"status": "success"})
    for status in ("pending", "failed"):
        response = patch(api, f"steps/{step.id}/", {"status": status})
        assert response.status_code == 400
        assert response.json() == {"status": [f"cannot change status from success to {status}: success is final"]}
    step.refresh_from_db()
    assert step.status == "success"
    assert len(events("agent.step.completed")) == 1


def test_step_validation_names_the_field(api, agent, org):
    other_agent = Agent.objects.create(organization=org, name="other")
    foreign_run = Run.objects.create(agent=other_agent)
    assert "agent" in post(api, "steps/", {}).json()
    assert "agent" in post(api, "steps/", {"agent": "agent-nope"}).json()
    assert post(api, "steps/", {"agent": agent.id, "run": foreign_run.id}).json() == {
        "run": ["the run belongs to another agent"]
    }
    step = Step.objects.create(agent=agent)
    assert "agent" in patch(api, f"steps/{step.id}/", {"agent": other_agent.id}).json()
    assert "prompt_tokens" in post(api, "steps/", {"agent": agent.id, "prompt_tokens": -1}).json()
    assert "total_tokens" in post(api, "steps/", {"agent": agent.id, "total_tokens": 2**31}).json()
    assert "status" in post(api, "steps/", {"agent": agent.id, "status": "done"}).json()


def test_messages_are_created_and_read_not_edited(api, agent):
    step = Step.objects.create(agent=agent)
    created = post(api, "messages/", {"agent": agent.id, "step": step.id, "role": "user", "content": "hello"})
    assert created.status_code == 201
    message = created.json()
    (event,) = events("agent.message.sent")
    assert event["data"] == {"message_id": message["id"], "role": "user", "content": "hello", "step_id": step.id}
    assert api.get(f"/api/v1/messages/{message['id']}/").json()["content"] == "hello"
    assert patch(api, f"messages/{message['id']}/", {"content": "edited"}).status_code == 405
    assert api.delete(f"/api/v1/messages/{message['id']}/").status_code == 405
    assert "role" in post(api, "messages/", {"agent": agent.id, "role": "robot", "content": "x"}).json()
    assert "content" in post(api, "messages/", {"agent": agent.id}).json()


def test_tool_execution_lifecycle(api, agent, tool):
    created = post(api, "tool-executions/", {"agent": agent.id, "tool": tool.id})
    assert created.status_code == 201
    execution = created.json()
    assert execution["status"] == "running"
    assert events("tool.execution.completed") == []
    assert (
        patch(api, f"tool-executions/{execution['id']}/", {"status": "success", "duration_ms": 420}).status_code == 200
    )
    (event,) = events("tool.execution.completed")
    assert event["data"]["tool_execution_id"] == execution["id"]
    assert event["data"]["duration_ms"] == 420
    response = patch(api, f"tool-executions/{execution['id']}/", {"status": "error"})
    assert response.status_code == 400
    assert "status" in response.json()
    assert ToolExecution.objects.get(pk=execution["id"]).status == "success"


def test_tool_execution_validation_names_the_field(api, agent, tool):
    assert "tool" in post(api, "tool-executions/", {"agent": agent.id}).json()
    assert (
        "duration_ms" in post(api, "tool-executions/", {"agent": agent.id, "tool": tool.id, "duration_ms": -5}).json()
    )
    big = post(api, "tool-executions/", {"agent": agent.id, "tool": tool.id, "duration_ms": 2**31})
    assert "duration_ms" in big.json()


# --- bodies: JSON only, bounded, never a 500 ---------------------------------------------


def test_a_body_over_the_limit_is_413(api, settings):
    settings.API_MAX_BODY_BYTES = 2048
    response = api.post("/api/v1/agents/", json.dumps({"name": "x" * 4096}), content_type="application/json")
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert not Agent.objects.exists()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("name=x", "application/x-www-form-urlencoded"), ("name: x", "text/plain"), ("<name/>", "application/xml")],
)
def test_a_body_that_is_not_json_is_415(api, body, content_type):
    response = api.post("/api/v1/agents/", body, content_type=content_type)
    assert response.status_code == 415
    assert not Agent.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "x"',
        b"\xff\xfe",
        b'{"name": NaN}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    ],
    ids=["truncated", "not-utf8", "nan", "deep-array", "deep-object"],
)
def test_malformed_json_is_400_not_500(api, body):
    response = api.post("/api/v1/agents/", body, content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_a_json_body_that_is_not_an_object_is_400(api):
    for body in ("[1]", '"text"', "null", "3"):
        response = api.post("/api/v1/agents/", body, content_type="application/json")
        assert response.status_code == 400, body
        assert "non_field_errors" in response.json(), body


def test_nul_characters_in_ids_are_404_or_400_not_500(api, agent, tool, org):
    api.raise_request_exception = False
    assert api.get("/api/v1/agents/%00/").status_code == 404
    assert api.delete(f"/api/v1/agents/{agent.id}/tools/%00/").status_code == 404
    assert "agent" in post(api, "steps/", {"agent": "agent-\u0000"}).json()
    assert "tool" in post(api, f"agents/{agent.id}/tools/", {"tool": "\u0000"}).json()
    staff = User.objects.create_user("ops", password="pw", is_staff=True)
    client = APIClient()
    client.force_login(staff)
    assert client.get("/api/v1/agents/?organization=%00").status_code == 400


def test_unknown_api_urls_answer_json_404(api):
    response = api.get("/api/v1/agents/has.a.dot/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}
    assert api.get("/api/v1/nothing-here/").json() == {"detail": "Not found."}


def test_list_pagination_and_page_size_validation(api, org):
    Agent.objects.bulk_create([Agent(organization=org, name=f"a{i}") for i in range(5)])
    page = api.get("/api/v1/agents/?page_size=2").json()
    assert page["count"] == 5 and len(page["results"]) == 2 and page["next"]
    last = api.get("/api/v1/agents/?page_size=2&page=3").json()
    assert len(last["results"]) == 1 and last["next"] is None
    for bad in ("0", "-1", "abc", ""):
        response = api.get(f"/api/v1/agents/?page_size={bad}")
        assert response.status_code == 400, bad
        assert list(response.json()) == ["page_size"], bad
    assert api.get("/api/v1/agents/?page=99").status_code == 404
