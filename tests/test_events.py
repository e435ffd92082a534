"""Which platform changes publish which events, and publishing never breaks the change.

These tests look at the recorded events (the outbox) without a worker; the end-to-end
tests elsewhere show recorded deliveries reach receivers.
"""

import json
import logging

import pytest
from django.db import transaction

from agents_hooks.models import Agent, AgentTool, Job, Message, Run, Step, Tool, ToolExecution
from deliveries.events import publish
from deliveries.fanout import fan_out
from deliveries.models import Delivery, Event
from webhooks.models import Endpoint

pytestmark = pytest.mark.django_db


def events(type_=None) -> list[dict]:
    rows = Event.objects.order_by("created_at")
    if type_:
        rows = rows.filter(type=type_)
    return [json.loads(e.body) for e in rows]


@pytest.fixture
def tool(org):
    return Tool.objects.create(organization=org, name="web_search")


def test_message_sent(agent):
    message = Message.objects.create(agent=agent, role="user", content="hello")
    (event,) = events("agent.message.sent")
    assert event["data"] == {"message_id": message.id, "role": "user", "content": "hello", "step_id": None}
    message.save()
    assert len(events("agent.message.sent")) == 1


def test_tool_attached_and_detached_by_row_or_by_relation(agent, tool, org):
    AgentTool.objects.create(agent=agent, tool=tool)
    AgentTool.objects.get(agent=agent, tool=tool).delete()
    other = Tool.objects.create(organization=org, name="calculator")
    agent.tools.add(other)
    agent.tools.remove(other)
    attached = [e["data"] for e in events("agent.tool.attached")]
    detached = [e["data"] for e in events("agent.tool.detached")]
    assert attached == [
        {"tool_id": tool.id, "tool_name": "web_search"},
        {"tool_id": other.id, "tool_name": "calculator"},
    ]
    assert detached == attached


def test_tool_execution_completed_once(agent, tool):
    execution = ToolExecution.objects.create(agent=agent, tool=tool)
    assert events() == []
    execution.status = "success"
    execution.duration_ms = 120
    execution.save()
    execution.save()
    (event,) = events("tool.execution.completed")
    assert event["data"]["status"] == "success"
    assert event["data"]["duration_ms"] == 120
    assert event["data"]["tool_name"] == "web_search"


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_run_and_job_completion_carry_the_final_status(agent, org, status):
    run = Run.objects.create(agent=agent, metadata={"ticket": 7})
    run.status = "running"
    run.save()
    assert events() == []
    run.status = status
    run.save()
    job = Job.objects.create(organization=org, agent=agent)
    job.status = status
    job.save()
    (run_event,) = events("agent.run.completed")
    (job_event,) = events("agent.job.completed")
    assert run_event["data"]["status"] == job_event["data"]["status"] == status
    assert run_event["data"]["metadata"] == {"ticket": 7}
    assert run_event["data"]["completed_at"].endswith("Z")


def test_publish_from_any_code(org, agent):
    endpoint = Endpoint.objects.create(organization=org, url="http://127.0.0.1:9/x")
    Endpoint.objects.create(organization=org, url="http://127.0.0.1:9/y", event_types=["agent.step.*"])
    event = publish("agent.custom.thing", organization=org, agent=agent, data={"answer": 42})
    body = json.loads(event.body)
    assert body["event_type"] == "agent.custom.thing"
    assert body["data"] == {"answer": 42}
    assert Delivery.objects.count() == 0  # the worker fans out, off the publisher's path
    deliveries = fan_out([event.pk])
    assert list(Delivery.objects.values_list("endpoint_id", flat=True)) == [endpoint.id]
    assert fan_out([event.pk]) == [] and Delivery.objects.count() == len(deliveries) == 1
    assert publish("agent.custom.thing", organization=org.id, data={}, dedupe_key="k1") is not None
    assert publish("agent.custom.thing", organization=org.id, data={}, dedupe_key="k1") is None
    assert Event.objects.filter(dedupe_key="k1").count() == 1


def test_oversize_payload_is_recorded_without_its_data_and_the_save_succeeds(
    agent, settings, caplog, django_capture_on_commit_callbacks, monkeypatch
):
    settings.WEBHOOK_MAX_PAYLOAD_BYTES = 2048
    monkeypatch.setattr("deliveries.enqueue.submit_events", lambda ids: None)  # its commit, without a broker
    with caplog.at_level(logging.WARNING, logger="deliveries"), django_capture_on_commit_callbacks(execute=True):
        message = Message.objects.create(agent=agent, content="x" * 5000)
    assert Message.objects.filter(pk=message.pk).exists()
    (event,) = events()
    assert event["data"] == {"message_id": message.id, "step_id": None}  # the ids only
    assert event["truncated"] is True and event["payload_bytes"] > 5000
    assert "over WEBHOOK_MAX_PAYLOAD_BYTES (2048)" in caplog.text


def test_broken_webhook_code_never_breaks_the_save(agent, monkeypatch, caplog):
    def broken(value):
        raise TypeError("a bug in building the event")

    monkeypatch.setattr("deliveries.events.dumps", broken)
    step = Step.objects.create(agent=agent)
    step.status = "success"
    with caplog.at_level(logging.ERROR, logger="deliveries"):
        step.save()
    step.refresh_from_db()
    assert step.status == "success"
    assert step.completed_at is not None
    assert events() == []
    assert "a bug in building the event" in caplog.text


def test_a_duplicate_publish_inside_the_callers_transaction_leaves_it_usable(org, agent):
    with transaction.atomic():
        assert publish("agent.custom.thing", organization=org, data={}, dedupe_key="same") is not None
        assert publish("agent.custom.thing", organization=org, data={}, dedupe_key="same") is None
        Message.objects.create(agent=agent, content="still fine")  # the transaction is not aborted
    assert Message.objects.filter(content="still fine").exists()
    assert len(events("agent.custom.thing")) == 1


def test_an_overlong_event_type_is_refused_before_the_database(org, caplog):
    with caplog.at_level(logging.ERROR, logger="deliveries"), transaction.atomic():
        assert publish("agent." + "x" * 200, organization=org, data={}) is None
        Agent.objects.create(organization=org, name="after")  # the transaction is not aborted
    assert "too long" in caplog.text


def test_bulk_update_bypasses_signals_as_documented(agent):
    step = Step.objects.create(agent=agent)
    Step.objects.filter(pk=step.pk).update(status="success")
    assert events() == []


def test_deleting_an_agent_with_tools_succeeds_without_detach_events(agent, tool):
    agent.tools.add(tool)
    agent.delete()
    assert not Agent.objects.filter(pk=agent.pk).exists()
    assert events("agent.tool.detached") == []
    tool.delete()  # and deleting a tool still attached elsewhere is fine too


def test_unserialisable_callback_metadata_does_not_break_the_run_save(agent, caplog):
    run = Run.objects.create(agent=agent, callback_url="https://hooks.example.com/cb", metadata={"big": 2**70})
    run.status = "completed"
    with caplog.at_level(logging.ERROR, logger="deliveries"):
        run.save()
    run.refresh_from_db()
    assert run.status == "completed"
    assert events() == [] and "could not record event" in caplog.text
