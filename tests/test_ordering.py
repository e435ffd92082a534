"""Ordered delivery (`ordering: "run"`): a run's events reach an endpoint one at a time, in
sequence, each after the one before it finished; other runs flow meanwhile (deliveries/ordering.py)."""

import datetime
import io
import json
import random
import threading

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from agents_hooks.models import Run
from deliveries import fanout, ordering, recovery
from deliveries.events import publish
from deliveries.models import Attempt, Delivery
from tests.support import on_sqlite, wait_until


def envelope(received) -> dict:
    return json.loads(received.body)


def test_an_ordered_run_waits_for_its_failing_event_while_another_run_flows(live, org, agent, make_endpoint):
    """Run A's event 3 is refused until its delivery is dead: 4 and 5 wait for it, then go,
    saying what was skipped; run B's five events all arrive, in order, while A waits."""
    make_endpoint("/ordered", ordering="run", retry_schedule=[1, 5])  # A's 3 dies after 6 s: B has time
    run_a, run_b = Run.objects.create(agent=agent), Run.objects.create(agent=agent)
    live.answer(
        "/ordered", lambda body: 500 if json.loads(body)["run_id"] == run_a.pk and b'"sequence":3' in body else None
    )
    events = {run_a.pk: [], run_b.pk: []}
    for n in range(1, 6):
        for run in (run_a, run_b):
            events[run.pk].append(publish("agent.custom.step", organization=org, agent=agent, run=run, data={"n": n}))

    got = live.wait_for(12, "/ordered", timeout=30)  # A: 1, 2, 3 three times, 4, 5; B: 1 to 5
    by_run = {run: [r for r in got if envelope(r)["run_id"] == run] for run in events}
    assert [envelope(r)["sequence"] for r in by_run[run_a.pk]] == [1, 2, 3, 3, 3, 4, 5]
    assert [envelope(r)["sequence"] for r in by_run[run_b.pk]] == [1, 2, 3, 4, 5]
    wait_until(lambda: not Delivery.objects.filter(status="pending").exists(), message="all finished")
    third = Delivery.objects.get(event=events[run_a.pk][2])
    assert third.status == "dead" and third.attempt_count == 3
    fourth = Attempt.objects.get(delivery__event=events[run_a.pk][3])
    assert fourth.started_at >= third.finished_at  # 4 went only once 3 was given up (the worker's clock)
    b_done = Delivery.objects.filter(event__in=events[run_b.pk]).order_by("-finished_at").first().finished_at
    assert b_done < third.finished_at  # B did not wait for A
    later = Delivery.objects.filter(event__in=events[run_a.pk][3:]).order_by("sequence")
    assert [d.skipped_event_ids for d in later] == [[events[run_a.pk][2].pk]] * 2
    assert not Delivery.objects.filter(run_id=run_b.pk).exclude(skipped_event_ids=None).exists()


@pytest.fixture
def run(agent):
    return Run.objects.create(agent=agent)


def publish_in(run, count: int, org) -> list:
    return [
        publish("agent.custom.step", organization=org, agent=run.agent, run=run, data={"n": n}) for n in range(count)
    ]


def due(endpoint) -> list[int]:
    """The sequences of an endpoint's deliveries that may be sent now (pending, not waiting)."""
    rows = Delivery.objects.filter(endpoint=endpoint, status="pending", waiting=False)
    return sorted(rows.values_list("event__sequence", flat=True))


def finish(endpoint, sequence: int, status: str = "succeeded") -> list[int]:
    """What `store.record` does when a delivery finishes: its new state, then its run settled."""
    with transaction.atomic():
        row = Delivery.objects.get(endpoint=endpoint, sequence=sequence)
        Delivery.objects.filter(pk=row.pk).update(status=status, finished_at=timezone.now(), lease=None)
        return ordering.settle({row.run_id})


def test_an_event_fanned_out_before_its_predecessor_waits_for_it(db, org, run, make_endpoint):
    ordered, unordered = make_endpoint("/o", ordering="run"), make_endpoint("/u")
    first, second, third = publish_in(run, 3, org)

    sent = fanout.fan_out([second.pk])  # event 1 not fanned out yet: 2 must not go before it
    assert [d.endpoint_id for d in sent] == [unordered.pk]
    assert due(ordered) == [] and Delivery.objects.get(endpoint=ordered).waiting

    sent = fanout.fan_out([first.pk, third.pk])  # 1 goes; 3 waits behind 2
    assert sorted((d.endpoint_id, d.event.sequence) for d in sent if d.endpoint_id == ordered.pk) == [(ordered.pk, 1)]
    assert due(ordered) == [1] and due(unordered) == [1, 2, 3]

    assert finish(ordered, 1) and due(ordered) == [2]
    assert finish(ordered, 2, "dead") and due(ordered) == [3]
    assert Delivery.objects.get(endpoint=ordered, sequence=3).skipped_event_ids == [second.pk]
    assert Delivery.objects.get(endpoint=ordered, sequence=3).next_attempt_at is not None


def test_an_earlier_event_the_endpoint_does_not_take_still_lets_the_next_go(db, org, run, make_endpoint):
    """Event 2 is fanned out first and waits for 1; event 1, fanned out after, reaches no
    ordered endpoint (not its type), and still lets 2 go."""
    ordered = make_endpoint("/o", ordering="run", event_types=["agent.custom.step"])
    note = publish("agent.custom.note", organization=org, agent=run.agent, run=run, data={})
    step = publish("agent.custom.step", organization=org, agent=run.agent, run=run, data={})
    assert fanout.fan_out([step.pk]) == [] and due(ordered) == []
    assert fanout.fan_out([note.pk]) == []  # nothing to send of it...
    assert due(ordered) == [2]  # ...but the delivery that waited for it goes


def test_recovering_an_ordered_endpoint_sends_each_run_in_order_again(db, org, run, make_endpoint):
    ordered = make_endpoint("/o", ordering="run")
    events = publish_in(run, 3, org)
    fanout.fan_out([e.pk for e in events])
    now = timezone.now()
    Delivery.objects.filter(endpoint=ordered).update(status="dead", lease=None, finished_at=now, next_attempt_at=None)
    assert recovery.recover_endpoint(ordered, since=now - datetime.timedelta(hours=1)) == 3
    assert due(ordered) == [1]  # not all three at once
    assert finish(ordered, 1) and due(ordered) == [2]
    assert Delivery.objects.get(endpoint=ordered, sequence=2).skipped_event_ids is None


def test_a_retry_keeps_the_run_waiting_and_other_runs_and_events_outside_runs_go(db, org, agent, make_endpoint):
    make_endpoint("/o", ordering="run")
    run_a, run_b = Run.objects.create(agent=agent), Run.objects.create(agent=agent)
    a = publish_in(run_a, 2, org)
    b = publish_in(run_b, 1, org)
    loose = publish("agent.tool.attached", organization=org, agent=agent, data={"tool_id": "t"})
    sent = fanout.fan_out([e.pk for e in (*a, *b, loose)])
    assert sorted(d.event_id for d in sent) == sorted([a[0].pk, b[0].pk, loose.pk])
    outside = Delivery.objects.get(event=loose)
    assert outside.run_id is None and not outside.waiting  # ordering is by run only
    # A's first is retrying (pending, due later): its run's second still waits.
    Delivery.objects.filter(event=a[0]).update(lease=None, next_attempt_at=timezone.now() + datetime.timedelta(hours=1))
    assert ordering.settle({run_a.pk}) == []
    assert Delivery.objects.get(event=a[1]).waiting


def test_the_api_shows_the_order_and_refuses_to_jump_the_queue(db, org, run, make_endpoint, api):
    ordered = make_endpoint("/o", ordering="run")
    first, second = publish_in(run, 2, org)
    fanout.fan_out([first.pk, second.pk])
    waiting = Delivery.objects.get(event=second)

    shown = api.get(f"/api/v1/deliveries/{waiting.pk}/").json()
    assert shown["waiting"] is True and shown["run_id"] == run.pk and shown["sequence"] == 2
    assert shown["next_attempt_at"] is None and shown["skipped_event_ids"] is None
    refused = api.post(f"/api/v1/deliveries/{waiting.pk}/retry/", {}, format="json")
    assert refused.status_code == 409 and "waiting for its turn" in refused.json()["detail"]

    assert api.get(f"/api/v1/webhooks/{ordered.pk}/").json()["ordering"] == "run"
    bad = api.patch(f"/api/v1/webhooks/{ordered.pk}/", {"ordering": "strict"}, format="json")
    assert bad.status_code == 400 and "ordering" in bad.json()
    assert api.patch(f"/api/v1/webhooks/{ordered.pk}/", {"ordering": "none"}, format="json").status_code == 200


def test_the_backstop_releases_a_delivery_left_waiting(db, org, run, make_endpoint):
    """Every change that can free a delivery settles its run at once; should one be missed
    anyway, the due loop's backstop frees it after ordering.STALE_AFTER."""
    ordered = make_endpoint("/o", ordering="run")
    (event,) = publish_in(run, 1, org)
    fanout.fan_out([event.pk])
    Delivery.objects.filter(endpoint=ordered).update(waiting=True, next_attempt_at=None, lease=None)
    assert ordering.settle_stale() == 0  # not stale yet
    Delivery.objects.filter(endpoint=ordered).update(created_at=timezone.now() - datetime.timedelta(minutes=5))
    assert ordering.settle_stale() == 1 and due(ordered) == [1]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the suite runs on PostgreSQL")
def test_concurrent_fan_out_and_finishing_keep_one_delivery_of_a_run_in_flight(
    receiver_only, org, agent, make_endpoint
):
    """Four threads fan out a run's 24 events in a random order, in small batches, while the
    deliveries that may go are finished as soon as they are seen: at every moment at most one
    delivery of the run may go, always the lowest unfinished, and in the end all went, in order.
    (No worker runs: this test is the only one that sends, or rather finishes, deliveries.)"""
    ordered = make_endpoint("/o", ordering="run")
    run = Run.objects.create(agent=agent)
    events = publish_in(run, 24, org)
    ids = [e.pk for e in events]
    random.Random(7).shuffle(ids)
    chunks = [ids[i : i + 3] for i in range(0, len(ids), 3)]
    lock, finished, problems = threading.Lock(), [], []

    def fan_out_some():
        try:
            while True:
                with lock:
                    if not chunks:
                        return
                    chunk = chunks.pop()
                fanout.fan_out(chunk)
        except Exception as exc:  # pragma: no cover - reported below
            problems.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=fan_out_some) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = timezone.now() + datetime.timedelta(seconds=30)
    while len(finished) < 24 and timezone.now() < deadline:
        going = due(ordered)
        assert len(going) <= 1, going
        if going:
            assert going[0] == len(finished) + 1
            finish(ordered, going[0])
            finished.append(going[0])
    for t in threads:
        t.join()
    assert not problems
    assert finished == list(range(1, 25))


def test_ordered_delivery_works_on_sqlite(tmp_path):
    """The embedded default: the same rules without advisory locks (one writer at a time)."""
    out = on_sqlite(
        tmp_path,
        """
from agents_hooks.models import Organization, Agent, Run
from webhooks.models import Endpoint
from deliveries import fanout, ordering
from deliveries.events import publish
from deliveries.models import Delivery
from django.db import transaction
org = Organization.objects.create(name="o"); agent = Agent.objects.create(organization=org, name="a")
run = Run.objects.create(agent=agent)
ep = Endpoint.objects.create(organization=org, url="https://example.com/h", ordering="run")
evs = [publish("agent.custom.step", organization=org, agent=agent, run=run, data={}) for _ in range(3)]
fanout.fan_out([evs[1].pk]); fanout.fan_out([evs[0].pk, evs[2].pk])
def going(): return sorted(Delivery.objects.filter(status="pending", waiting=False).values_list("sequence", flat=True))
print(going())
with transaction.atomic():
    Delivery.objects.filter(sequence=1).update(status="dead", lease=None); ordering.settle({run.pk})
print(going(), Delivery.objects.get(sequence=2).skipped_event_ids == [evs[0].pk])
""",
    )
    assert out.splitlines()[-2:] == ["[1]", "[2] True"]


def test_the_ordering_indexes_are_built_without_blocking_writes(db):
    """Migration 0014 adds four indexes to the busiest tables: on PostgreSQL they are built
    CONCURRENTLY (deliveries/migration_operations.py), so workers and publishers go on writing
    while an installation with millions of deliveries migrates."""
    out = io.StringIO()
    call_command("sqlmigrate", "deliveries", "0014", stdout=out)
    sql = out.getvalue()
    assert sql.count("CREATE INDEX CONCURRENTLY") == 4 and 'CREATE INDEX "' not in sql, sql


INDEXES = ["delivery_run_order", "delivery_run_skipped", "delivery_waiting", "event_run_not_fanned_out"]


def index_states() -> dict:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = ANY(%s)",
            [INDEXES],
        )
        return dict(cursor.fetchall())


def test_an_interrupted_index_migration_runs_again(transactional_db):
    """A concurrent build that stopped halfway leaves an INVALID index; `migrate` again drops
    it and builds it, and leaves alone the ones already built."""
    call_command("migrate", "deliveries", "0013", verbosity=0)
    try:
        assert index_states() == {}
        with connection.cursor() as cursor:  # as an interrupted build leaves them
            cursor.execute("CREATE INDEX delivery_waiting ON deliveries_delivery (run_id) WHERE waiting")
            cursor.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'delivery_waiting'::regclass")
            cursor.execute(
                "CREATE INDEX event_run_not_fanned_out ON deliveries_event (run_id, sequence) "
                "WHERE fanned_out_at IS NULL AND run_id IS NOT NULL"
            )
        assert index_states() == {"delivery_waiting": False, "event_run_not_fanned_out": True}
    finally:
        call_command("migrate", "deliveries", verbosity=0)
    assert index_states() == dict.fromkeys(INDEXES, True)
