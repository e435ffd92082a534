"""Celery tasks: thin wrappers over `pipeline`, `fanout` and `recovery`. Only ids travel.

* `deliver_events(event_ids)`: fan published events out into deliveries and make their first
  attempts, sent concurrently.
* `deliver_batch(delivery_ids)`: an attempt now of each of these deliveries that is due and
  free (retried by hand, resumed endpoint, test event).
* `replay_events(replay_ids)`: the next batches of replays (`replay`), for a few seconds; the
  rest goes back to the broker as a new message.
* `purge_attempts`, `purge_idempotency_keys`, `expire_payloads` (beat): retention;
  `settle_payload_removals`: the late attempts of an erasure (`retention.settle`);
  `continue_erasure`: an erasure asked for over HTTP, past its time in the request.

A failed attempt's retry is not a task retry: its time is written on the delivery
(`policy`, `store`) and the due loop sends it (`dueloop`), in batches, with whatever else is
due. A batch holds deliveries at different steps of different endpoints' schedules, which a
message's retry counter cannot express, and a wait of hours does not belong in a broker.

What Celery's autoretry does here is what it is good at: a task that could not run because
the database was unreachable (restarting, failing over, connections refused) is retried by
Celery with exponential backoff and jitter, each wait at most WEBHOOK_BROKER_WAIT_MAX seconds
(the longest any wait sits in the broker), up to WEBHOOK_TASK_MAX_RETRIES times. After that
the work is still on record, and the due loop takes it up once the database answers.

Tasks are acknowledged late (settings), so a worker killed mid-task leaves its message to be
delivered again; the claims in `store` keep that from sending anything twice.
"""

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from . import fanout, pipeline, recovery, replay, retention

DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)

_retried = {
    "autoretry_for": DATABASE_UNAVAILABLE,
    "retry_backoff": True,
    "retry_backoff_max": settings.WEBHOOK_BROKER_WAIT_MAX,
    "retry_jitter": True,
    "max_retries": settings.WEBHOOK_TASK_MAX_RETRIES,
}


@shared_task(ignore_result=True, **_retried)
def deliver_events(event_ids: list[str]) -> None:
    pipeline.send_claimed(fanout.fan_out(event_ids, take_backlog=True))


@shared_task(ignore_result=True, **_retried)
def deliver_batch(delivery_ids: list[int]) -> None:
    pipeline.deliver(delivery_ids)


@shared_task(ignore_result=True, **_retried)
def replay_events(replay_ids: list[int]) -> None:
    replay.advance(replay_ids)


@shared_task(ignore_result=True)
def purge_attempts() -> int:
    return recovery.purge_attempts()


@shared_task(ignore_result=True)
def purge_idempotency_keys() -> int:
    return recovery.purge_idempotency_keys()


@shared_task(ignore_result=True)
def expire_payloads() -> int:
    return retention.expire()


@shared_task(ignore_result=True)
def settle_payload_removals() -> int:
    return retention.settle()


@shared_task(ignore_result=True)
def continue_erasure(record_id: int) -> None:
    retention.continue_erasure(record_id)
