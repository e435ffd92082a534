"""An event over WEBHOOK_MAX_PAYLOAD_BYTES is never silent.

Saved by code, the change succeeds and its event is recorded without its data: the seed
targets (STEP_COMPLETE_WEBHOOK, run and job callbacks) get their own bodies as ever, and every
subscribed endpoint's delivery is `failed` at once, saying why, with nothing POSTed. Through
the API, a change whose event could never be sent is refused (400 naming the field) and
nothing of it is recorded.
"""

import json
import logging

import pytest

from agents_hooks.models import Job, Message, Run, Step
from deliveries import recovery
from deliveries.events import publish
from deliveries.fanout import fan_out
from deliveries.models import Delivery, Event
from tests.support import wait_until, wait_until_settled
from tests.test_metrics import scrape, value
from webhooks.models import Endpoint

LIMIT = 256 * 1024  # WEBHOOK_MAX_PAYLOAD_BYTES as the suite (and its worker) runs it
BIG = 300 * 1024


def finish(obj, status):
    obj.status = status
    obj.save()
    return obj


# --- saved by code: recorded, seed targets sent, endpoints told why ------------------------


def test_a_run_with_oversize_metadata_still_calls_back_and_its_endpoint_delivery_fails_visibly(
    live, agent, make_endpoint, api
):
    endpoint = make_endpoint("/hook")
    metadata = {"transcript": "x" * BIG}
    run = Run.objects.create(agent=agent, callback_url=live.url("/run-callback"), metadata=metadata)
    finish(run, "completed")  # by code: never refused
    run.refresh_from_db()
    assert run.status == "completed"

    (callback,) = live.wait_for(1, path="/run-callback")
    assert json.loads(callback.body) == {
        "run_id": run.id,
        "status": "completed",
        "completed_at": run.completed_at.isoformat().replace("+00:00", "Z"),
        "metadata": metadata,
    }
    wait_until(lambda: Run.objects.get(pk=run.pk).callback_status_code == 200, message="callback recorded")
    wait_until_settled()
    assert live.received("/hook") == []  # nothing POSTed to the endpoint

    (event,) = Event.objects.filter(type="agent.run.completed")
    listed = api.get("/api/v1/deliveries/", {"event": event.pk, "kind": "endpoint"}).json()["results"]
    (delivery,) = listed
    assert delivery["webhook"] == endpoint.pk
    assert delivery["status"] == "failed"
    assert delivery["attempt_count"] == 0
    assert delivery["finished_at"] is not None
    size = event.oversize_bytes
    assert size > LIMIT
    assert delivery["last_error"] == f"payload too large: {size} bytes, over WEBHOOK_MAX_PAYLOAD_BYTES ({LIMIT})"
    assert api.get(f"/api/v1/deliveries/{delivery['id']}/").json()["attempts"] == []

    # The event says what happened to it, and still names the run.
    payload = api.get(f"/api/v1/events/{event.pk}/").json()["payload"]
    assert payload["data"] == {"run_id": run.id}
    assert payload["truncated"] is True and payload["payload_bytes"] == size
    assert payload["event_type"] == "agent.run.completed" and payload["agent_id"] == agent.id

    # Retrying it cannot send it: a 409 saying why, and it stays failed.
    answer = api.post(f"/api/v1/deliveries/{delivery['id']}/retry/", {}, format="json")
    assert answer.status_code == 409
    assert "payload too large" in answer.json()["detail"]
    assert Delivery.objects.get(pk=delivery["id"]).status == "failed"


def test_a_step_with_an_oversize_error_still_reaches_step_complete_webhook(live, agent, make_endpoint, settings):
    settings.STEP_COMPLETE_WEBHOOK = live.url("/step-complete")  # read where the step is saved
    make_endpoint("/hook")
    big = finish(Step.objects.create(agent=agent, error="E" * BIG), "failed")
    small = finish(Step.objects.create(agent=agent, error="timeout"), "failed")  # the usual size
    seed = live.wait_for(2, path="/step-complete")
    (hooked,) = live.wait_for(1, path="/hook")

    by_step = {json.loads(r.body)["step_id"]: json.loads(r.body) for r in seed}
    assert by_step == {big.id: {"step_id": big.id}, small.id: {"step_id": small.id}}
    assert {r.headers["Authorization"] for r in seed} == {"Bearer test-key-123"}
    # The normal-size event is sent whole, as before.
    envelope = json.loads(hooked.body)
    assert envelope["data"]["step_id"] == small.id and envelope["data"]["error"] == "timeout"
    assert "truncated" not in envelope

    wait_until_settled()
    assert len(live.received("/hook")) == 1
    (failed,) = Delivery.objects.filter(kind="endpoint", status="failed")
    assert failed.event.dedupe_key == f"{big.id}:finished"
    assert failed.last_error.startswith("payload too large: ")
    assert not failed.attempts.exists()
    assert Delivery.objects.filter(kind="step_complete", status="succeeded").count() == 2


# --- saved by code, without a worker: what is recorded and counted ------------------------


@pytest.mark.django_db
def test_the_stand_in_keeps_the_ids_counts_bytes_and_logs(
    agent, org, caplog, django_capture_on_commit_callbacks, monkeypatch, settings
):
    monkeypatch.setattr("deliveries.enqueue.submit_events", lambda ids: None)  # its commit, without a broker
    assert settings.WEBHOOK_MAX_PAYLOAD_BYTES == LIMIT  # as the worker runs too
    before = scrape()
    with caplog.at_level(logging.WARNING, logger="deliveries"), django_capture_on_commit_callbacks(execute=True):
        # 160,000 characters, 320,000 bytes in UTF-8: the limit is in bytes.
        message = Message.objects.create(agent=agent, content="é" * 160_000)
    (event,) = Event.objects.all()
    assert event.oversize_bytes > LIMIT
    assert json.loads(event.body) == {
        "event_id": event.pk,
        "event_type": "agent.message.sent",
        "timestamp": json.loads(event.body)["timestamp"],
        "agent_id": agent.id,
        "run_id": None,
        "sequence": 1,
        "previous_event_id": None,
        "organization_id": org.id,
        "data": {"message_id": message.id, "step_id": None},
        "truncated": True,
        "payload_bytes": event.oversize_bytes,
    }
    assert f"event {event.pk} (agent.message.sent) is {event.oversize_bytes} bytes" in caplog.text

    endpoint = Endpoint.objects.create(organization=org, url="http://127.0.0.1:9/x")
    assert fan_out([event.pk]) == []  # nothing to send
    delivery = Delivery.objects.get(event=event, endpoint=endpoint)
    assert delivery.status == "failed" and delivery.attempt_count == 0
    endpoint.refresh_from_db()
    assert endpoint.consecutive_failures == 0  # the receiver did nothing wrong
    after = scrape()

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("webhooks_events_oversize_total", event_type="agent.message.sent") == 1
    assert moved("webhooks_deliveries_finished_total", status="failed") == 1

    # Recovering the endpoint's failures leaves it alone: it would only fail again.
    assert recovery.recover_endpoint(endpoint, since=event.created_at) == 0
    with pytest.raises(recovery.NotRetryable, match="payload too large"):
        recovery.retry_delivery(delivery)


@pytest.mark.django_db
def test_an_event_just_under_the_limit_is_recorded_whole(org):
    event = publish("agent.custom.thing", organization=org, data={"text": "y" * (LIMIT - 1000)})
    assert event.oversize_bytes is None
    assert json.loads(event.body)["data"]["text"] == "y" * (LIMIT - 1000)


# --- through the API: refused before anything is saved -------------------------------------


@pytest.mark.django_db
def test_posting_a_message_whose_event_could_never_be_sent_is_refused(api, agent):
    answer = api.post("/api/v1/messages/", {"agent": agent.id, "content": "m" * 1_000_000}, format="json")
    assert answer.status_code == 400
    (reason,) = answer.json()["content"]
    assert reason.startswith("too large for its agent.message.sent event: ")
    assert f"over WEBHOOK_MAX_PAYLOAD_BYTES ({LIMIT})" in reason
    assert not Message.objects.exists()
    assert not Event.objects.exists()

    fits = api.post("/api/v1/messages/", {"agent": agent.id, "content": "m" * (LIMIT - 4096)}, format="json")
    assert fits.status_code == 201
    (event,) = Event.objects.all()
    assert event.oversize_bytes is None and json.loads(event.body)["data"]["content"] == "m" * (LIMIT - 4096)


@pytest.mark.django_db
def test_a_step_run_or_job_whose_event_could_never_be_sent_is_refused(api, agent, org):
    step = Step.objects.create(agent=agent)
    answer = api.patch(f"/api/v1/steps/{step.id}/", {"status": "failed", "error": "E" * BIG}, format="json")
    assert answer.status_code == 400
    assert answer.json()["error"][0].startswith("too large for its agent.step.failed event: ")
    step.refresh_from_db()
    assert step.status == "pending" and step.error == ""

    run = Run.objects.create(agent=agent)
    answer = api.patch(f"/api/v1/runs/{run.id}/", {"metadata": {"blob": "x" * BIG}}, format="json")
    assert answer.status_code == 400 and "agent.run.completed" in answer.json()["metadata"][0]
    answer = api.post("/api/v1/jobs/", {"metadata": {"blob": "x" * BIG}}, format="json")
    assert answer.status_code == 400 and "agent.job.completed" in answer.json()["metadata"][0]
    assert not Job.objects.exists()
    assert not Event.objects.exists()

    # A run whose metadata grew too large by code cannot be finished through the API with it...
    Run.objects.filter(pk=run.pk).update(metadata={"blob": "x" * BIG})
    answer = api.patch(f"/api/v1/runs/{run.id}/", {"status": "completed"}, format="json")
    assert answer.status_code == 400 and "metadata" in answer.json()
    # ...but can with it trimmed; and a finished run publishes nothing more, so is not checked.
    answer = api.patch(f"/api/v1/runs/{run.id}/", {"status": "completed", "metadata": {"blob": "ok"}}, format="json")
    assert answer.status_code == 200
    answer = api.patch(f"/api/v1/runs/{run.id}/", {"metadata": {"blob": "x" * BIG}}, format="json")
    assert answer.status_code == 200
    (event,) = Event.objects.all()
    assert json.loads(event.body)["data"]["metadata"] == {"blob": "ok"}


@pytest.mark.django_db
def test_metadata_no_event_could_carry_is_refused_rather_than_lost(api, agent):
    answer = api.post("/api/v1/runs/", {"agent": agent.id, "metadata": {"big": 2**70}}, format="json")
    assert answer.status_code == 400
    assert answer.json()["metadata"][0].startswith("cannot be sent in a webhook event: ")
    assert not Run.objects.exists()
