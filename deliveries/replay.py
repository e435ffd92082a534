"""Replay: send an endpoint the past events it takes now and never got.

Why: an endpoint added today, or one whose event types, agent, run or content filter were
just widened, was sent nothing of what came before; a receiver that was down got deliveries
that failed, and `recovery.recover_endpoint` retries those. A replay fills the first gap:
`POST /api/v1/webhooks/<id>/replay/`, the endpoint's "Replay events" page in the admin and
`manage.py webhooks endpoints replay` all call `start`.

What is missing, for a replay of [since, until) to an endpoint: the events of its organization
created in that window that the endpoint takes now (`Endpoint.receives`: types, agent, run,
content filter), of the replay's `event_types` if it names some, with no delivery to this
endpoint at all (a failed or dead one was received and refused). Left out: events not yet
fanned out (fan-out gives them to the endpoint as it is now), events too large to send (their
data was never kept), events whose payload was removed (retention, erasure), and test events
(sent to the one endpoint they name).

Exactly once: the work goes in batches of BATCH events, oldest first (by created_at, then id),
each batch one transaction that locks the replay's row, so two workers running one replay (a
redelivered message, a resumed one) take turns and the second starts from the first's cursor;
one replay runs per endpoint at a time (a unique index). Inside the batch, an event counts as
missing only if no delivery to the endpoint exists in that transaction, and fan-out never
creates one for an event already fanned out. An event being fanned out right now (its
transaction not yet committed) is waited for: its row is locked, so we see what fan-out did.

Order: deliveries to an endpoint that orders runs (`ordering: "run"`) go through
`ordering.hold` and `ordering.settle` as fan-out's do, so a run's replayed events go one at a
time, in sequence. They are earlier in their runs than anything published since, so an
ordered run's later deliveries still waiting go after them.

Progress: each batch moves the replay's cursor and counts in its transaction. A task
(`tasks.replay_events`) runs batches for up to RUN_BUDGET seconds and hands the rest back to
the broker; a replay that stopped moving for STALLED_AFTER (its worker killed, the broker
away) is taken up by a worker's due loop (`resume_stalled`).
"""

import datetime
import fnmatch
import logging
import time

from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from webhooks import catalog, event_types
from webhooks.models import Endpoint, EndpointKind

from . import enqueue, fanout, ordering
from .models import Delivery, Event, Replay, ReplayState

logger = logging.getLogger(__name__)

BATCH = 500  # events looked at per transaction
RUN_BUDGET = 2.0  # seconds of batches per task message: other work takes its turn between
STALLED_AFTER = datetime.timedelta(seconds=60)
SUBMIT_AT_ONCE = 500  # the first deliveries go to the broker at once; the due loops take the rest
_EVENT_FIELDS = [
    "id", "type", "agent", "created_at", "targets", "fanned_out_at", "oversize_bytes", "run_id", "sequence",
    "payload_removed", "organization",
]  # fmt: skip


class ReplayRefused(ValueError):
    """A replay that cannot be started; `field` names the bad input (None: the endpoint's
    state), `conflict` says another replay of the endpoint is running."""

    def __init__(self, message: str, field: str | None = None, conflict: bool = False):
        super().__init__(message)
        self.field, self.conflict = field, conflict


def start(
    endpoint: Endpoint,
    since: datetime.datetime,
    until: datetime.datetime | None = None,
    types: list[str] | None = None,
    requested_by: str = "",
) -> Replay:
    """Start replaying to `endpoint` the events it is missing from [since, until) (until: now
    at the latest), of `types` only if given; return the replay, its batches handed to a
    worker once the caller's transaction commits. Raises ReplayRefused."""
    now = timezone.now()
    until = min(until or now, now)  # later events are fanned out to the endpoint as usual
    if endpoint.kind == EndpointKind.PULL:
        raise ReplayRefused(
            "a pull endpoint has nothing to replay: it reads the feed, from any point "
            f"(GET /api/v1/events/feed/?endpoint={endpoint.pk}&after=<cursor>)"
        )
    if since >= until:
        shown = until.replace(microsecond=0).isoformat()
        raise ReplayRefused(f"must be before until ({shown}): nothing to replay", field="since")
    types = list(types or [])
    if unknown := catalog.unknown_patterns(types, event_types.subscribable_names(endpoint.organization)):
        raise ReplayRefused(
            f"unknown event type(s): {', '.join(unknown)}; see /api/v1/event-types/ for the list", field="event_types"
        )
    with transaction.atomic():
        if running := Replay.objects.filter(endpoint=endpoint, state=ReplayState.RUNNING).first():
            raise ReplayRefused(_still_running(running), conflict=True)
        try:
            with transaction.atomic():
                replay = Replay.objects.create(
                    endpoint=endpoint,
                    since=since,
                    until=until,
                    event_types=types,
                    events_total=_window(endpoint, since, until).count(),
                    requested_by=requested_by[:200],
                    created_at=now,
                    updated_at=now,
                )
        except IntegrityError:  # another request started one meanwhile
            running = Replay.objects.filter(endpoint=endpoint, state=ReplayState.RUNNING).first()
            raise ReplayRefused(_still_running(running), conflict=True) from None
        transaction.on_commit(lambda: enqueue.submit_replays([replay.pk]))
    return replay


def _still_running(running: Replay | None) -> str:
    which = f"replay {running.pk}" if running else "another replay"
    return f"{which} of this endpoint is still running: wait for it to finish, or cancel it"


def cancel(replay: Replay) -> bool:
    """Stop a running replay after the batch in hand; say whether it was running. Deliveries
    it already created go on."""
    now = timezone.now()
    stopped = Replay.objects.filter(pk=replay.pk, state=ReplayState.RUNNING).update(
        state=ReplayState.CANCELLED, finished_at=now, updated_at=now
    )
    replay.refresh_from_db()
    return bool(stopped)


def advance(replay_ids: list[int]) -> None:
    """Run these replays' batches for up to RUN_BUDGET seconds each, then hand those not done
    back to the broker (the task's body)."""
    more = [pk for pk in replay_ids if run(pk)]
    if more:
        enqueue.submit_replays(more)


def run(replay_id: int, budget: float = RUN_BUDGET) -> bool:
    """Run the replay's batches until it is done or `budget` seconds have passed; say whether
    there is more to do. An error other than the database being away fails the replay,
    saying why (retrying would meet it again)."""
    deadline = time.monotonic() + budget
    try:
        while step(replay_id):
            if time.monotonic() >= deadline:
                return True
    except (OperationalError, InterfaceError):
        raise  # the database is away: the task is retried, or the due loop resumes it
    except Exception as exc:
        logger.exception("replay %s failed", replay_id)
        now = timezone.now()
        Replay.objects.filter(pk=replay_id, state=ReplayState.RUNNING).update(
            state=ReplayState.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=now, updated_at=now
        )
    return False


def step(replay_id: int) -> bool:
    """One batch of the replay, in one transaction; say whether there is more to do."""
    with transaction.atomic():
        replay = Replay.objects.select_for_update().filter(pk=replay_id, state=ReplayState.RUNNING).first()
        if replay is None:
            return False  # done, cancelled, failed, or its endpoint deleted
        endpoint = Endpoint.objects.get(pk=replay.endpoint_id)  # as it is now: a filter changed mid-way counts
        events = _next_batch(replay, endpoint)
        created = _deliver_missing(replay, endpoint, events)
        now = timezone.now()
        replay.events_examined += len(events)
        replay.deliveries_created += len(created)
        replay.updated_at = now
        if events:
            replay.cursor_created_at, replay.cursor_event_id = events[-1].created_at, events[-1].pk
        more = len(events) == BATCH
        if not more:
            replay.state, replay.finished_at = ReplayState.DONE, now
        replay.save(
            update_fields=[
                "events_examined", "deliveries_created", "updated_at", "cursor_created_at", "cursor_event_id",
                "state", "finished_at",
            ]
        )  # fmt: skip
    return more


def _window(endpoint: Endpoint, since: datetime.datetime, until: datetime.datetime):
    """The organization's events in [since, until), of the endpoint's agent if it has one."""
    rows = Event.objects.filter(organization_id=endpoint.organization_id, created_at__gte=since, created_at__lt=until)
    return rows.filter(agent_id=endpoint.agent_id) if endpoint.agent_id else rows


def _next_batch(replay: Replay, endpoint: Endpoint) -> list[Event]:
    rows = _window(endpoint, replay.since, replay.until)
    if replay.cursor_created_at is not None:
        at, pk = replay.cursor_created_at, replay.cursor_event_id
        rows = rows.filter(created_at__gte=at).exclude(created_at=at, id__lte=pk)
    fields = _EVENT_FIELDS + (["body"] if endpoint.filter is not None else [])  # the body only for a filter
    return list(rows.order_by("created_at", "id").only(*fields)[:BATCH])


def _deliver_missing(replay: Replay, endpoint: Endpoint, events: list[Event]) -> list[Delivery]:
    """Create the deliveries to `endpoint` of those of `events` it takes and never got."""
    patterns = replay.event_types
    wanted = [
        e
        for e in events
        if e.oversize_bytes is None
        and not e.payload_removed
        and not fanout.explicit_endpoints(e)
        and (not patterns or any(fnmatch.fnmatchcase(e.type, p) for p in patterns))
        and endpoint.receives(e.type, e.agent_id, fanout.envelope_of(e) if endpoint.filter else None, e.run_id)
    ]
    unfanned = [e.pk for e in wanted if e.fanned_out_at is None]
    if unfanned:
        # Wait for a fan-out of these in progress to commit; those still not fanned out stay
        # locked until we commit, so fan-out takes them after, with the endpoint as it is.
        # (All of them: a row's WHERE is judged on the version we see, so a condition on
        # fanned_out_at would not wait for the fan-out changing it.)
        locked = Event.objects.select_for_update(no_key=True).filter(pk__in=unfanned)
        fanned = {pk for pk, at in locked.values_list("pk", "fanned_out_at") if at is not None}
        wanted = [e for e in wanted if e.fanned_out_at is not None or e.pk in fanned]
        if still := [pk for pk in unfanned if pk not in fanned]:
            # A fan-out that came for them meanwhile skipped them (SKIP LOCKED) and is gone:
            # ask again once we let go, rather than leave them to the stranded sweep.
            transaction.on_commit(lambda: enqueue.submit_events(still))
    if not wanted:
        return []
    got = Delivery.objects.filter(endpoint=endpoint, event_id__in=[e.pk for e in wanted])
    got = set(got.values_list("event_id", flat=True))
    now = timezone.now()
    missing = sorted((e for e in wanted if e.pk not in got), key=lambda e: (e.created_at, e.sequence or 0, e.pk))
    created = [Delivery(event=e, endpoint=endpoint, created_at=now, next_attempt_at=now) for e in missing]
    runs = ordering.hold(created)
    Delivery.objects.bulk_create(created)
    ordering.settle(runs)
    due = [d.pk for d in created if d.next_attempt_at is not None][: max(0, SUBMIT_AT_ONCE - replay.deliveries_created)]
    if due:
        transaction.on_commit(lambda: enqueue.submit(due))
    return created


def resume_stalled() -> bool:
    """Take up a running replay that has not moved for STALLED_AFTER (its worker died, or its
    message was lost with the broker): run it here for RUN_BUDGET, then hand it to the broker.
    A worker's due loop calls this now and then; one replay per call keeps the loop's pause
    short. Say whether one was taken up."""
    now = timezone.now()
    stalled = Replay.objects.filter(state=ReplayState.RUNNING, updated_at__lt=now - STALLED_AFTER)
    pk = stalled.order_by("updated_at").values_list("pk", flat=True).first()
    # Claimed by moving its clock: the other processes' loops leave it alone meanwhile.
    if pk is None or not stalled.filter(pk=pk).update(updated_at=now):
        return False
    logger.warning("replay %s had not moved for %s: resuming it", pk, STALLED_AFTER)
    if run(pk):
        enqueue.submit_replays([pk])
    return True


def progress(replay: Replay) -> float | None:
    """How far the replay got through its window's events, 0 to 1 (None if it had none)."""
    if replay.state == ReplayState.DONE:
        return 1.0
    if not replay.events_total:
        return None
    return min(1.0, replay.events_examined / replay.events_total)
