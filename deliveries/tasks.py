"""Celery tasks: thin wrappers over `attempts` and `recovery`. Only ids travel.

* `deliver_events(event_ids)`: fan published events out into deliveries, then make their
  first attempts, sent concurrently. A delivery that needs a retry continues as `deliver`.
* `deliver_batch(ids, reserved)`: the first attempt of each delivery's series (retried by
  hand, resumed endpoint, re-enqueued by the sweeper, or due in its rate-limit slot:
  `reserved`), likewise.
* `deliver(id, series_start, reserved_retry)`: one attempt of one delivery, retried by Celery's autoretry
  with exponential backoff (WEBHOOK_RETRY_BACKOFF * 2**n, capped at _MAX, jitter per
  WEBHOOK_RETRY_JITTER) up to WEBHOOK_MAX_RETRIES. The message's `retries` counter says which
  attempt it carries, so a duplicated or stale message claims nothing and sends nothing.
* `sweep` (beat): re-enqueue overdue pending deliveries. `purge_attempts` (beat): retention.

Tasks are acknowledged late (settings), so a worker killed mid-delivery leaves its message to
be delivered again; the claim in `attempts` keeps that from sending a finished delivery twice.
"""

from celery import shared_task
from django.conf import settings

from . import attempts, fanout, recovery
from .models import DeliveryStatus


class RetryableFailure(Exception):
    """The attempt got no answer, or 408/425/429/5xx: Celery's autoretry schedules the next."""


@shared_task(ignore_result=True)
def deliver_events(event_ids: list[str]) -> None:
    continue_failures(attempts.send_claimed(fanout.fan_out(event_ids, take_backlog=True)))


@shared_task(ignore_result=True)
def deliver_batch(delivery_ids: list[int], reserved: bool = False) -> None:
    continue_failures(attempts.attempt(delivery_ids, reserved=reserved))


def dispatch(due: list[tuple[int, int, int]], countdown: float = 0, reserved: bool = False) -> None:
    """Enqueue the next attempts of deliveries given as (id, attempt_count, series_start):
    first attempts of a series in batches, retries one by one with their retry count.
    `reserved`: they hold a slot under their endpoint's rate limit for that attempt."""
    fresh = [pk for pk, count, start in due if count == start]
    for i in range(0, len(fresh), settings.WEBHOOK_BATCH_SIZE):
        deliver_batch.apply_async((fresh[i : i + settings.WEBHOOK_BATCH_SIZE], reserved), countdown=countdown)
    for pk, count, start in due:
        if count != start:
            slot = count - start if reserved else None
            deliver.apply_async((pk, start, slot), retries=count - start, countdown=countdown)


def continue_failures(outcomes: list[attempts.Outcome]) -> None:
    """Schedule the next attempt of each delivery whose attempt failed and may be retried."""
    for outcome in outcomes:
        if outcome.status == DeliveryStatus.PENDING:
            # Continue as a `deliver` task whose retry counter says this was attempt 1, so
            # its own autoretry backoff carries on from the right step.
            deliver.apply_async(
                (outcome.delivery_id, outcome.series_start), retries=outcome.attempts_in_series, countdown=outcome.delay
            )


@shared_task(
    bind=True,
    ignore_result=True,
    autoretry_for=(RetryableFailure,),
    retry_backoff=settings.WEBHOOK_RETRY_BACKOFF,
    retry_backoff_max=settings.WEBHOOK_RETRY_BACKOFF_MAX,
    retry_jitter=settings.WEBHOOK_RETRY_JITTER,
    max_retries=settings.WEBHOOK_MAX_RETRIES,
)
def deliver(self, delivery_id: int, series_start: int = 0, reserved_retry: int | None = None) -> None:
    # A rate-limit slot was reserved for one attempt: the retry this message first carried.
    reserved = reserved_retry == self.request.retries
    outcomes = attempts.attempt(
        [delivery_id], expected_attempt_count=series_start + self.request.retries, reserved=reserved
    )
    if not outcomes:
        return  # finished, in flight elsewhere, a stale duplicate message, or in the slow lane
    outcome = outcomes[0]
    if outcome.status != DeliveryStatus.PENDING:
        return
    if outcome.retry_after and outcome.retry_after > attempts.retry_delay(self.request.retries):
        # The receiver asked for a longer pause than our backoff (429/503 Retry-After).
        raise self.retry(countdown=outcome.delay)
    raise RetryableFailure(f"delivery {delivery_id}: attempt {outcome.attempts_in_series} of this series failed")


@shared_task(ignore_result=True)
def sweep() -> int:
    return recovery.sweep_due()


@shared_task(ignore_result=True)
def purge_attempts() -> int:
    return recovery.purge_attempts()
