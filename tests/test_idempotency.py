"""Duplicated task messages (worker restarts, Redis redelivery) never POST a delivery twice."""

from agents_hooks.models import Step
from deliveries.models import Attempt, Delivery
from deliveries.tasks import deliver_batch, deliver_events
from tests.receiver import Reply
from tests.support import wait_until


def complete_a_step(agent):
    step = Step.objects.create(agent=agent)
    step.status = "success"
    step.save()


def wait_task_done(worker, result):
    worker.wait_log(rf"Task deliveries\.tasks\.\w+\[{result.id}\] (succeeded|retry)")


def test_duplicate_messages_after_success_send_nothing(live, worker, agent, make_endpoint):
    make_endpoint()
    complete_a_step(agent)
    live.wait_for(1)
    delivery = wait_until(lambda: Delivery.objects.filter(status="succeeded").first(), message="success")

    duplicates = [
        deliver_batch.apply_async(([delivery.pk],)),
        deliver_events.apply_async(([delivery.event_id],)),
        deliver_batch.apply_async(([delivery.pk, delivery.pk],)),
    ]
    for result in duplicates:
        wait_task_done(worker, result)
    assert len(live.received()) == 1
    assert Attempt.objects.filter(delivery=delivery).count() == 1


def test_duplicate_messages_while_in_flight_send_once(live, worker, agent, make_endpoint):
    make_endpoint()
    live.script("/hook", [Reply(200, delay=1.5)])
    complete_a_step(agent)
    delivery = wait_until(lambda: Delivery.objects.first(), message="delivery recorded")
    # While the first POST is still waiting for its slow answer, the same message comes again.
    wait_until(lambda: Delivery.objects.filter(pk=delivery.pk, lease__isnull=False).exists(), message="claim")
    duplicate = deliver_batch.apply_async(([delivery.pk],))
    wait_task_done(worker, duplicate)
    live.wait_for(1)
    wait_until(lambda: Delivery.objects.filter(pk=delivery.pk, status="succeeded").exists(), message="success")
    assert len(live.received()) == 1
    assert Attempt.objects.filter(delivery=delivery).count() == 1


def test_a_stale_message_does_not_jump_the_schedule(live, worker, agent, make_endpoint):
    """A copy of a message naming the delivery, arriving while it waits for its retry (a
    broker redelivery, say), sends nothing: the retry keeps its time."""
    make_endpoint()
    live.script("/hook", [500, 500, 200])
    complete_a_step(agent)
    live.wait_for(2)
    delivery = Delivery.objects.get()
    wait_until(lambda: Attempt.objects.filter(delivery=delivery).count() == 2, message="two attempts logged")
    stale = deliver_batch.apply_async(([delivery.pk],))  # due in 3 s, not now
    wait_task_done(worker, stale)
    third = live.wait_for(3)[2]
    assert third.at - live.received()[1].at >= 2.9  # attempt 3 still waited its 3 s
    wait_until(lambda: Delivery.objects.filter(pk=delivery.pk, status="succeeded").exists(), message="success")
    assert Attempt.objects.filter(delivery=delivery).count() == 3


def test_an_outcome_is_not_written_over_a_lease_another_worker_took(transactional_db, receiver, agent, make_endpoint):
    """If a batch outlived its lease and another worker took a delivery over, the first
    worker's late outcome does not overwrite it (its attempt is still logged)."""
    from deliveries import pipeline
    from tests.support import fanned_out_here

    receiver.reset()
    make_endpoint("/lease")
    (delivery,) = fanned_out_here(agent.organization_id)
    Delivery.objects.filter(pk=delivery.pk).update(lease="another-worker")
    pipeline.send_claimed([delivery])
    row = Delivery.objects.get(pk=delivery.pk)
    assert (row.lease, row.status, row.attempt_count) == ("another-worker", "pending", 0)
    assert Attempt.objects.filter(delivery=delivery).count() == 1
