"""Run subscriptions: an endpoint scoped to one run (`POST /api/v1/runs/<id>/subscriptions/`).

A client that starts a run wants that run's story, not the organization's: its steps,
messages and tool executions, then its end. A run subscription is an ordinary `Endpoint`
row with `run` set, so URL safety, signing, retries, the attempt log, health, the admin
and statistics apply to it unchanged; only three things differ:

* Scope: `Endpoint.receives` takes only events whose `run_id` is its run's, and always the
  run's last event (`catalog.RUN_ENDED`, `agent.run.completed`), whatever its types and
  filter say. Always, because that delivery is what ends the subscription: one that left it
  out would otherwise live on, taking nothing, until its TTL.
* Life: it takes no new event once the delivery of its run's last event finished (succeeded,
  failed or went dead: `end_delivered`, which sets `ended_at`), or after `expires_at` (its
  TTL, compared with the clock by fan-out and by whoever reads `state`: no job is needed).
  Deliveries already made still finish their retries, which is why this is not `is_active`
  (a disabled endpoint's deliveries are held).
* Order: it delivers its run's events in sequence by default (`ordering: "run"`), since a
  run's subscriber rebuilds the run.

Ending rides on `deliveries.signals.outcomes_recorded`, in the transaction that records the
attempts, and costs a loop over the batch: a query only when the batch holds the delivery of
a run's last event to a run subscription. An oversize last event (its deliveries fail unsent,
with no attempt) does not end it: its TTL does.
"""

import datetime

from django.conf import settings
from django.utils import timezone

from agents_hooks.models import Run
from deliveries.models import DeliveryStatus

from . import catalog
from .models import Endpoint, Ordering

MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 30 * 24 * 3600  # WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS is bounded by it too (720 h)
DEFAULT_ORDERING = Ordering.RUN


def default_ttl() -> datetime.timedelta:
    return datetime.timedelta(hours=settings.WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS)


def ttl_problem(expires_at: datetime.datetime, now: datetime.datetime) -> str | None:
    """What is wrong with an end of life asked for (the API says it, naming the field)."""
    if expires_at <= now:
        return "must be in the future"
    if expires_at > now + datetime.timedelta(seconds=MAX_TTL_SECONDS):
        return f"at most {MAX_TTL_SECONDS} seconds (30 days) from now"
    return None


def run_ended(run: Run) -> bool:
    """Whether the run already finished: its last event is published, so a subscription made
    now could never end by it (the API refuses one, 409)."""
    return run.status in Run.TERMINAL


def hold_run(run: Run) -> Run:
    """The run re-read and locked until the caller's transaction ends (call it in the one
    that saves the subscription), to check `run_ended` on.

    Without the lock a run could end between that check and the subscription's commit, and
    fan out its last event without it, which would then take nothing until its TTL. With it,
    the run's save (which publishes that event in its own transaction) waits for the
    subscription to commit, so fan-out finds it; or it went first, and the check sees the
    run ended. (SQLite: one writer at a time already.)"""
    return Run.objects.select_for_update().get(pk=run.pk)


def of_run(run: Run):
    """The run's subscriptions, oldest first (ended and expired ones too, with their state)."""
    return Endpoint.objects.filter(run=run).order_by("created_at", "pk")


def end_delivered(sender, deliveries: list, **kwargs) -> None:
    """`deliveries.signals.outcomes_recorded` receiver: end the run subscriptions to which
    their run's last event was just delivered (the delivery finished: succeeded, failed or
    dead), in the batch's transaction. A loop over the batch, and an UPDATE only when one is
    found (`endpoint` and `event` are loaded on a recorded delivery)."""
    ended = [
        d.endpoint_id
        for d in deliveries
        if d.endpoint_id is not None
        and d.status != DeliveryStatus.PENDING
        and d.endpoint.run_id is not None
        and d.event.type == catalog.RUN_ENDED
    ]
    if ended:
        Endpoint.objects.filter(pk__in=ended, ended_at__isnull=True).update(ended_at=timezone.now())
