"""Every event of a run carries its place in the run: `run_id`, `sequence` (1, 2, 3... with no
gaps or duplicates) and `previous_event_id`; an agent's events outside runs are numbered the same
in the agent's own stream; events of neither carry nulls. Numbers are taken in the publishing
transaction: a rollback, a duplicate or an event that cannot be recorded uses none, and
concurrent publishers into one run still get one gapless chain (PostgreSQL, threads)."""

import json
import threading

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from agents_hooks.models import Agent, AgentTool, ApiKey, Job, Message, Run, Step, Tool, ToolExecution
from deliveries.events import publish, send_test
from deliveries.models import Event
from tests.support import on_sqlite

STREAM_FIELDS = ("run_id", "sequence", "previous_event_id")


class Rollback(Exception):
    pass


def finish(obj, status="success"):
    obj.status = status
    obj.save()
    return obj


def envelopes(received) -> list[dict]:
    return [json.loads(r.body) for r in received]


def assert_chain(stream: list[dict]) -> None:
    """`stream` (envelopes or rows as dicts) numbered 1..N, each pointing at the one before."""
    stream = sorted(stream, key=lambda e: e["sequence"])
    assert [e["sequence"] for e in stream] == list(range(1, len(stream) + 1))
    assert [e["previous_event_id"] for e in stream] == [None] + [e["event_id"] for e in stream[:-1]]


@pytest.fixture
def tool(org):
    return Tool.objects.create(organization=org, name="web_search")


@pytest.fixture
def quiet_broker(monkeypatch):
    """Committed events stay on record, unsent: these tests read the rows, not the POSTs."""
    monkeypatch.setattr("deliveries.enqueue.submit_events", lambda ids: None)


# --- what a receiver sees ------------------------------------------------------------------


def test_a_receiver_sees_a_run_numbered_in_order_and_the_agents_other_events_in_their_own_stream(
    live, agent, tool, make_endpoint, org
):
    make_endpoint("/hook")
    run = Run.objects.create(agent=agent)
    first = finish(Step.objects.create(agent=agent, run=run))
    Message.objects.create(agent=agent, step=first, role="assistant", content="found it")
    Message.objects.create(agent=agent, step_id=first.id, content="by id: the step is looked up")
    finish(ToolExecution.objects.create(agent=agent, tool=tool, step=first))
    with pytest.raises(Rollback), transaction.atomic():  # a rolled-back save uses no number
        finish(Step.objects.create(agent=agent, run=run), "failed")
        raise Rollback
    finish(Step.objects.create(agent=agent, run=run), "cancelled")
    # Outside the run: the agent's own stream.
    Message.objects.create(agent=agent, content="no step")
    AgentTool.objects.create(agent=agent, tool=tool)
    finish(Step.objects.create(agent=agent))  # a step of no run
    finish(Job.objects.create(organization=org, agent=agent), "completed")
    finish(run, "completed")
    # Neither run nor agent: no sequence.
    finish(Job.objects.create(organization=org), "completed")

    got = envelopes(live.wait_for(11, path="/hook"))
    in_run = [e for e in got if e["run_id"] == run.id]
    assert sorted((e["sequence"], e["event_type"]) for e in in_run) == [
        (1, "agent.step.completed"),
        (2, "agent.message.sent"),
        (3, "agent.message.sent"),
        (4, "tool.execution.completed"),
        (5, "agent.step.cancelled"),
        (6, "agent.run.completed"),
    ]
    assert_chain(in_run)
    assert {e["agent_id"] for e in in_run} == {agent.id}

    outside = [e for e in got if e["run_id"] is None and e["agent_id"] == agent.id]
    assert sorted((e["sequence"], e["event_type"]) for e in outside) == [
        (1, "agent.message.sent"),
        (2, "agent.tool.attached"),
        (3, "agent.step.completed"),
        (4, "agent.job.completed"),
    ]
    assert_chain(outside)

    (orphan,) = [e for e in got if e["agent_id"] is None]
    assert orphan["event_type"] == "agent.job.completed"
    assert [orphan[f] for f in STREAM_FIELDS] == [None, None, None]
    # The fields sit next to agent_id in the envelope.
    assert list(got[0])[:8] == [
        "event_id",
        "event_type",
        "timestamp",
        "agent_id",
        "run_id",
        "sequence",
        "previous_event_id",
        "organization_id",
    ]

    # The API shows the same place of each event.
    _, key = ApiKey.issue(org)
    api = APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")
    last = max(in_run, key=lambda e: e["sequence"])
    shown = api.get(f"/api/v1/events/{last['event_id']}/").json()
    assert {f: shown[f] for f in STREAM_FIELDS} == {f: last[f] for f in STREAM_FIELDS}
    assert shown["sequence"] == 6 and shown["run_id"] == run.id


def test_a_test_event_and_an_organizations_own_event_carry_no_sequence(live, make_endpoint, org):
    endpoint = make_endpoint("/hook")
    send_test(endpoint)
    with transaction.atomic():
        publish("billing.invoice.paid", organization=org, data={"invoice_id": "inv_1"})
    got = envelopes(live.wait_for(2, path="/hook"))
    assert sorted(e["event_type"] for e in got) == ["billing.invoice.paid", "webhook.test"]
    assert [[e[f] for f in STREAM_FIELDS] for e in got] == [[None, None, None]] * 2


# --- numbers are taken in the publishing transaction ----------------------------------------


@pytest.mark.django_db
def test_a_duplicate_an_unencodable_event_and_a_rollback_use_no_number(agent, org, caplog):
    run = Run.objects.create(agent=agent)
    first = publish("agent.custom.a", organization=org, agent=agent, run=run, data={}, dedupe_key="k")
    assert publish("agent.custom.a", organization=org, agent=agent, run=run, data={}, dedupe_key="k") is None
    assert publish("agent.custom.b", organization=org, agent=agent, run=run, data={"n": 2**70}) is None
    assert "could not record event agent.custom.b" in caplog.text
    with pytest.raises(Rollback), transaction.atomic():
        publish("agent.custom.c", organization=org, agent=agent, run=run.id, data={})
        raise Rollback
    second = publish("agent.custom.d", organization=org, agent=agent, run=run.id, data={})
    assert (first.sequence, second.sequence) == (1, 2)
    assert (first.previous_event_id, second.previous_event_id) == (None, first.pk)
    rows = Event.objects.filter(run_id=run.id).order_by("sequence")
    assert [(e.type, e.sequence) for e in rows] == [("agent.custom.a", 1), ("agent.custom.d", 2)]
    assert json.loads(second.body)["previous_event_id"] == first.pk


@pytest.mark.django_db
def test_each_run_and_each_agent_is_its_own_stream(agent, org):
    other_agent = Agent.objects.create(organization=org, name="other")
    runs = [Run.objects.create(agent=agent) for _ in range(2)]
    for run in (*runs, *runs):
        publish("agent.custom", organization=org, agent=agent, run=run, data={})
    for who in (agent, other_agent, agent):
        publish("agent.custom", organization=org, agent=who, data={})
    assert [e.sequence for e in Event.objects.filter(run_id=runs[0].id).order_by("sequence")] == [1, 2]
    assert [e.sequence for e in Event.objects.filter(run_id=runs[1].id).order_by("sequence")] == [1, 2]
    by_agent = Event.objects.filter(run_id=None).order_by("sequence")
    assert [e.sequence for e in by_agent.filter(agent=agent)] == [1, 2]
    assert [e.sequence for e in by_agent.filter(agent=other_agent)] == [1]


# --- concurrent publishers into one run (PostgreSQL) -----------------------------------------


def test_concurrent_publishers_into_one_run_get_one_gapless_chain(transactional_db, agent, quiet_broker):
    """8 threads finish steps of one run at once, each save with a message in its transaction;
    every third transaction rolls back, and some steps are finished by two threads at once
    (one event, by the dedupe key). The committed events are numbered 1..N exactly."""
    assert connection.vendor == "postgresql"
    run = Run.objects.create(agent=agent)
    other = Run.objects.create(agent=agent)  # a run published into alongside: its own chain
    threads, rounds = 8, 12
    contested = [Step.objects.create(agent=agent, run=run) for _ in range(rounds)]
    start = threading.Barrier(threads)
    committed = []
    errors = []

    def publisher(n: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                mine = Step.objects.create(agent=agent, run=run if n % 4 else other)
                try:
                    with transaction.atomic():
                        finish(mine, "failed" if i % 2 else "success")
                        Message.objects.create(agent=agent, step=mine, content=f"{n}/{i}")
                        if (n + i) % 3 == 0:
                            raise Rollback
                    committed.append(mine.run_id)
                except Rollback:
                    pass
                if n < 2:  # two threads race to finish the same step: one event
                    step = Step.objects.get(pk=contested[i].pk)
                    with transaction.atomic():
                        finish(step)
        except Exception as exc:  # reported below: an assertion in a thread would be lost
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=publisher, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
    assert not any(w.is_alive() for w in workers)

    for stream, expected in ((run, 2 * committed.count(run.id) + rounds), (other, 2 * committed.count(other.id))):
        rows = list(Event.objects.filter(run_id=stream.id).order_by("sequence"))
        assert len(rows) == expected
        as_dicts = [{"event_id": e.pk, "sequence": e.sequence, "previous_event_id": e.previous_event_id} for e in rows]
        assert_chain(as_dicts)
        for row in rows:  # what a receiver would be sent says the same
            body = json.loads(row.body)
            assert (body["run_id"], body["sequence"], body["previous_event_id"]) == (
                stream.id,
                row.sequence,
                row.previous_event_id,
            )
    assert 0 < committed.count(run.id) and 0 < committed.count(other.id)
    assert Event.objects.filter(dedupe_key__in=[f"{s.id}:finished" for s in contested]).count() == rounds


# --- SQLite, the embedded default --------------------------------------------------------------


def test_sequences_on_sqlite_the_embedded_default(tmp_path):
    """`dev.py up` runs on SQLite: the same upsert numbers the stream there (3.35+)."""
    script = """
import json
from django.db import transaction
from agents_hooks.models import Agent, Organization, Run, Step
from deliveries.events import publish
org = Organization.objects.create(name="x")
agent = Agent.objects.create(organization=org, name="a")
run = Run.objects.create(agent=agent)
numbered = []
for n in range(3):
    try:
        with transaction.atomic():
            step = Step.objects.create(agent=agent, run=run)
            step.status = "success"
            step.save()
            if n == 1:
                raise KeyError
    except KeyError:
        pass
again = publish("agent.custom", organization=org, agent=agent, run=run, data={}, dedupe_key=step.id + ":finished")
assert again is None
loose = publish("agent.custom", organization=org, agent=agent, data={})
bodies = [json.loads(e.body) for e in run.agent.events.filter(run_id=run.id).order_by("sequence")]
assert [b["sequence"] for b in bodies] == [1, 2], bodies
assert bodies[1]["previous_event_id"] == bodies[0]["event_id"], bodies
assert (loose.sequence, loose.previous_event_id, loose.run_id) == (1, None, None)
print("ok")
"""
    assert on_sqlite(tmp_path, script).endswith("ok")


def test_the_publish_function_knows_every_column_the_database_fills():
    """deliveries_publish_numbered (migration 0010) builds the row from the JSON of the model's
    fields and sets `xid` itself: a new column filled by the database (a db_default) would be
    NULL there. Such a column must be set in that function too, then added here."""
    from deliveries.models import Event

    assert {f.attname for f in Event._meta.concrete_fields if f.has_db_default()} == {"xid"}
