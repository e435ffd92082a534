"""A step finishing reaches the operator's endpoint as one signed POST, and only then."""

import base64
import hashlib
import hmac
import json
import time

import pytest
from django.db import transaction
from standardwebhooks.webhooks import Webhook

from agents_hooks.models import Run, Step
from deliveries.models import Attempt, Delivery, Event
from tests.support import wait_until


def finish(step: Step, status: str = "success") -> Step:
    step.status = status
    step.save()
    return step


def test_completed_step_is_posted_signed_and_logged(live, agent, make_endpoint):
    endpoint = make_endpoint()
    run = Run.objects.create(agent=agent)
    started = time.time()
    step = Step.objects.create(agent=agent, run=run, prompt_tokens=12, completion_tokens=30, total_tokens=42)
    finish(step)

    (request,) = live.wait_for(1)
    # Within seconds, not at some later sweep (its latency is measured by bench/, not here).
    assert request.at - started < 10.0, "a step's webhook should arrive within seconds"

    # Standard Webhooks, checked by the `standardwebhooks` package, which we did not write.
    payload = Webhook(endpoint.secret).verify(request.body, request.headers)
    assert payload["event_type"] == "agent.step.completed"
    assert payload["event_id"].startswith("evt_")
    assert payload["agent_id"] == agent.id
    assert payload["organization_id"] == agent.organization_id
    assert payload["timestamp"].endswith("Z")
    assert payload["data"]["step_id"] == step.id
    assert payload["data"]["status"] == "success"
    assert payload["data"]["run_id"] == run.id
    assert payload["data"]["usage"] == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}

    headers = request.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("Letta-Webhooks/1.0 agent-webhooks/")
    assert headers["webhook-id"] == headers["X-Letta-Event-Id"] == payload["event_id"]
    assert headers["X-Letta-Event-Type"] == "agent.step.completed"
    assert headers["X-Letta-Timestamp"] == headers["webhook-timestamp"]
    # The Letta-style signature, verified by the recipe in webhooks/signing.py.
    key = base64.b64decode(endpoint.secret.removeprefix("whsec_"))
    signed = headers["X-Letta-Timestamp"].encode() + b"." + request.body
    assert headers["X-Letta-Signature"] == "sha256=" + hmac.new(key, signed, hashlib.sha256).hexdigest()

    delivery = wait_until(lambda: Delivery.objects.filter(status="succeeded").first(), message="delivery succeeded")
    (attempt,) = Attempt.objects.filter(delivery=delivery)
    assert attempt.number == 1
    assert attempt.status_code == 200
    assert attempt.response_body == "ok"
    assert attempt.duration_ms < 2000
    assert attempt.request_headers["webhook-id"] == payload["event_id"]


def test_failed_and_cancelled_steps_have_their_own_event_types(live, agent, make_endpoint):
    make_endpoint()
    finish(Step.objects.create(agent=agent), "failed")
    finish(Step.objects.create(agent=agent), "cancelled")
    types = sorted(json.loads(r.body)["event_type"] for r in live.wait_for(2))
    assert types == ["agent.step.cancelled", "agent.step.failed"]


def test_saving_a_finished_step_again_publishes_nothing(live, agent, make_endpoint):
    make_endpoint()
    step = finish(Step.objects.create(agent=agent))
    step.total_tokens = 99
    step.save()
    Step.objects.get(pk=step.pk).save()  # a fresh instance loaded as finished, too
    live.wait_for(1)
    assert Event.objects.count() == 1
    assert Delivery.objects.count() == 1


def test_rolled_back_save_publishes_nothing(live, agent, make_endpoint):
    make_endpoint()
    step = Step.objects.create(agent=agent)
    with pytest.raises(RuntimeError), transaction.atomic():
        finish(step)
        raise RuntimeError("the agent's own transaction fails")
    assert Event.objects.count() == 0
    assert Delivery.objects.count() == 0
    # A later, committed event arrives alone: nothing from the rolled-back one was sent.
    finish(Step.objects.get(pk=step.pk))
    (request,) = live.wait_for(1)
    assert json.loads(request.body)["data"]["step_id"] == step.id
    assert Event.objects.count() == 1


def test_endpoint_filters_by_event_type_and_agent(live, org, agent, make_endpoint):
    other_agent = org.agents.create(name="other")
    make_endpoint("/failures", event_types=["agent.step.failed"])
    make_endpoint("/steps", event_types=["agent.step.*"])
    make_endpoint("/other-agent", agent=other_agent)
    make_endpoint("/inactive", is_active=False)
    finish(Step.objects.create(agent=agent))
    live.wait_for(1, path="/steps")
    wait_until(lambda: Delivery.objects.filter(status="succeeded").count() == 1, message="one delivery")
    assert [r.path for r in live.received()] == ["/steps"]
    assert Delivery.objects.count() == 1


def test_custom_headers_are_sent_but_cannot_replace_ours(live, agent, make_endpoint):
    endpoint = make_endpoint(headers={"X-Team": "agents", "Webhook-Signature": "forged", "content-type": "text/plain"})
    finish(Step.objects.create(agent=agent))
    (request,) = live.wait_for(1)
    assert request.headers["X-Team"] == "agents"
    assert request.headers["Content-Type"] == "application/json"
    assert [k for k in request.headers if k.lower() == "content-type"] == ["Content-Type"]
    Webhook(endpoint.secret).verify(request.body, request.headers)
