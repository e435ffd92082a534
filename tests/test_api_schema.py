"""Schemathesis against /api/schema/: every operation, generated requests, no 5xx and no answer
the schema does not describe (status code, content type, body).

In-process against the WSGI app (no server), authenticated with an API key of an organization
that has one of everything; path ids are drawn half the time from that organization's real
objects, so the detail views and actions run on real rows, not only on 404s. Bounded and
deterministic: a fixed seed, derandomized, 10 fuzzed examples per operation (plus the examples
and coverage phases), and a short stateful run. About a minute on 2 cores.
"""

import socket
import types

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient

from agents_hooks.models import Agent, AgentTool, ApiKey, Job, Message, Organization, Run, Step, Tool, ToolExecution
from deliveries import selectors
from deliveries.models import Attempt, Delivery, Event, PayloadRemoval
from webhooks import urlsafety
from webhooks.models import Endpoint
from webhooks_project.wsgi import application

SEED = 20240601
KEY = "ahk_schemathesis-test-key"  # stored (hashed) by the fixture below, in the test database only
IDS = {
    "agents": ["agent-st-1"], "tools": ["tool-st-1"], "runs": ["run-st-1"], "jobs": ["job-st-1"],
    "steps": ["step-st-pending", "step-st-done"], "messages": ["message-st-1"], "tool-executions": ["toolexec-st-1"],
    "webhooks": ["ep_st1"], "events": ["evt_ST1"], "deliveries": [990001, 990002], "payload-removals": [990101],
}  # fmt: skip

config = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "headers": {"Authorization": f"Bearer {KEY}"},
        "generation": {"max-examples": 10, "deterministic": True},
        # Checks left on: not_a_server_error, status_code_conformance, content_type_conformance,
        # response_headers_conformance, response_schema_conformance, ignored_auth, use_after_free,
        # ensure_resource_availability, unsupported_method, missing_required_header...
        "checks": {
            # Valid by the schema is not enough to be accepted: ids must exist in the caller's
            # organization, URLs must be public, statuses only move forward.
            "positive_data_acceptance": {"enabled": False},
            # DRF reads 0 for a string field as "0" and ignores an empty filter: lenient, not a
            # violation of what the API answers.
            "negative_data_rejection": {"enabled": False},
        },
        "dictionaries": {name: {"values": values} for name, values in IDS.items()},
        "operations": [
            {
                "include-path-regex": f"^/api/v1/{name}/{{id}}/",
                "parameters": {"path.id": {"dictionary": name, "probability": 0.5}},
            }
            for name in IDS
        ],
    }
)
schema = schemathesis.openapi.from_wsgi("/api/schema/", application, config=config)


def _resolve_to_a_public_address(host, port, *args, **kwargs):
    # Generated host names "resolve" to one public address: no DNS traffic, the same answer on
    # every machine, and endpoints with such URLs can be created. Nothing is sent (no worker).
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("93.184.216.34", port or 80))]


@pytest.fixture
def wsgi_in_test_transaction():
    """Django's WSGI handler closes the database connection after each request, which would
    end the test's transaction; Django's own test client unhooks the same receivers."""
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.fixture
def api_data(db, monkeypatch, wsgi_in_test_transaction):
    fake_socket = types.SimpleNamespace(**{**vars(socket), "getaddrinfo": _resolve_to_a_public_address})
    monkeypatch.setattr(urlsafety, "socket", fake_socket)
    # No worker here, so a test-send never gets its attempt: `?wait=` is validated, not slept.
    wait = selectors.wait_for_first_attempt
    monkeypatch.setattr(selectors, "wait_for_first_attempt", lambda delivery, timeout: wait(delivery, 0))

    org = Organization.objects.create(name="Schemathesis")
    ApiKey.objects.create(organization=org, key_prefix=KEY[:10], key_hash=ApiKey.hash(KEY))
    agent = Agent.objects.create(id=IDS["agents"][0], organization=org, name="fuzzed")
    tool = Tool.objects.create(id=IDS["tools"][0], organization=org, name="search")
    AgentTool.objects.create(agent=agent, tool=tool)
    run = Run.objects.create(id=IDS["runs"][0], agent=agent, metadata={"k": "v"})
    Job.objects.create(id=IDS["jobs"][0], organization=org, agent=agent)
    step = Step.objects.create(id=IDS["steps"][0], agent=agent, run=run)
    Step.objects.create(id=IDS["steps"][1], agent=agent, run=run, status="success")
    Message.objects.create(id=IDS["messages"][0], agent=agent, step=step, content="hi")
    ToolExecution.objects.create(id=IDS["tool-executions"][0], agent=agent, tool=tool, step=step)
    endpoint = Endpoint.objects.create(
        id=IDS["webhooks"][0], organization=org, url="https://93.184.216.34/hook", event_types=["agent.*"]
    )
    now = step.created_at
    event = Event.objects.create(
        id=IDS["events"][0], type="agent.step.completed", organization=org, agent=agent,
        body='{"event_type": "agent.step.completed"}', created_at=now, fanned_out_at=now,
    )  # fmt: skip
    for pk, status, code in zip(IDS["deliveries"], ("failed", "succeeded"), (400, 200), strict=True):
        delivery = Delivery.objects.create(
            id=pk, event=event, endpoint=endpoint, status=status, attempt_count=1, created_at=now, finished_at=now
        )
        Attempt.objects.create(
            delivery=delivery, number=1, started_at=now, url=endpoint.url, status_code=code, duration_ms=3
        )
    PayloadRemoval.objects.create(
        id=IDS["payload-removals"][0], kind="erased", organization_id=org.pk, agent_id=agent.pk,
        requested_by="user ops", requested_at=now, finished_at=now, events=1,
    )  # fmt: skip
    # Another organization's rows, which no generated request may reach.
    Agent.objects.create(organization=Organization.objects.create(name="Other"), name="not yours")
    return org


def test_the_schema_is_valid_openapi_3(db):
    document = APIClient().get("/api/schema/?format=json").json()
    validate_schema(document)
    for operation in (op for path in document["paths"].values() for op in path.values()):
        assert {"400", "401", "403", "404"} <= set(operation["responses"]), operation["operationId"]


@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_schema(case, api_data):
    case.call_and_validate()


def test_api_workflows_conform_to_its_schema(api_data):
    """Stateful: call sequences that feed one answer's ids into the next request (links inferred
    from the schema: create an agent, attach a tool to it, read it back, delete it...)."""

    class EachFromTheSameRows(schema.as_state_machine()):
        """Every sequence starts from the fixture's rows (a savepoint, rolled back after it), so
        what an earlier one created or erased cannot change what a later one draws: Hypothesis
        replays sequences and requires the same answers to the same draws."""

        def setup(self):
            self.savepoint = transaction.savepoint()

        def teardown(self):
            # Whatever the sequence did, the other organization's agent was out of its reach.
            reached = not Agent.objects.filter(name="not yours", organization__name="Other").exists()
            transaction.savepoint_rollback(self.savepoint)
            super().teardown()
            assert not reached, "a sequence reached the other organization's agent"

    EachFromTheSameRows.run(
        settings=settings(
            max_examples=30,
            stateful_step_count=6,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
