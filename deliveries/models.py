"""The delivery log: one Event per thing that happened, one Delivery per place it must go,
one Attempt per POST made (Saleor's EventDelivery / EventDeliveryAttempt shape)."""

import datetime
import os
import time

from django.db import models
from django.utils import timezone

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_event_id() -> str:
    """`evt_` + a ULID: 48 bits of milliseconds then 80 random bits, Crockford base32, so
    ids sort by creation time."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_CROCKFORD[rem])
    return "evt_" + "".join(reversed(chars))


class CurrentTransactionId(models.Func):
    """The inserting transaction's id, as the column default of `Event.xid` on PostgreSQL
    (NULL on SQLite, whose feed reads rowid: deliveries/feed.py says why)."""

    output_field = models.BigIntegerField()

    def as_sql(self, compiler, connection, **extra):
        return "NULL", []

    def as_postgresql(self, compiler, connection, **extra):
        return "(pg_current_xact_id()::text::bigint)", []


RUN_ID_HELP = "The run the event belongs to; null for an event outside runs."
SEQUENCE_HELP = (
    "The event's number in its stream: its run's (1, 2, 3... with no gaps), or for an event outside runs its "
    "agent's; null for an event of neither (organization-level, operational, test)."
)
PREVIOUS_EVENT_HELP = "The id of the event numbered sequence - 1 in the same stream; null for the first."


class PayloadRemoved(models.TextChoices):
    KEPT = "", "kept"
    EXPIRED = "expired", "expired: past its retention period"
    ERASED = "erased", "erased on request"


class Event(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=new_event_id, editable=False)
    type = models.CharField(max_length=100)
    organization = models.ForeignKey(
        "agents_hooks.Organization", on_delete=models.CASCADE, related_name="events", db_index=False
    )
    agent = models.ForeignKey(
        "agents_hooks.Agent", on_delete=models.SET_NULL, null=True, blank=True, related_name="events", db_index=False
    )
    # The exact JSON envelope POSTed to endpoints: serialised once, signed and sent as is.
    body = models.TextField()
    # Publishing twice with one key records one event (a unique index, so it holds across
    # processes and concurrent transactions).
    dedupe_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    created_at = models.DateTimeField()
    # Deliveries are created by the worker ("fan-out"), off the publishing save's path; until
    # then this is NULL and the due loop watches the event. `targets` lists destinations other
    # than subscribed endpoints: [{"kind", "url", "body"}] or [{"endpoint": id}].
    targets = models.JSONField(default=list, blank=True)
    fanned_out_at = models.DateTimeField(null=True, blank=True)
    # Set only for an event whose envelope was over WEBHOOK_MAX_PAYLOAD_BYTES: that size.
    # `body` then holds a stand-in without the data (deliveries/events.py), which endpoints
    # are never sent: their deliveries are created failed, saying why (fanout.py).
    oversize_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    # The id of the transaction that recorded the event (PostgreSQL; set by the database):
    # the pull feed's order, safe against transactions committing out of order.
    xid = models.BigIntegerField(null=True, blank=True, editable=False, db_default=CurrentTransactionId())
    # The event's place in its stream (deliveries/streams.py): its run's, or, outside a run, its
    # agent's. `sequence` counts 1, 2, 3... per stream with no gaps; `previous_event_id` is the
    # event numbered sequence - 1 (NULL for 1). All NULL for an event of neither (an
    # organization's, an operational one, a test). Not indexed: publishing pays for no index.
    # (A plain bigint: a CHECK >= 0 would make adding the column scan the table.)
    run_id = models.CharField(max_length=64, null=True, blank=True, help_text=RUN_ID_HELP)
    sequence = models.BigIntegerField(null=True, blank=True, help_text=SEQUENCE_HELP)
    previous_event_id = models.CharField(max_length=40, null=True, blank=True, help_text=PREVIOUS_EVENT_HELP)
    # Payload governance: set once the event's payloads (its body, its deliveries' bodies, its
    # attempts' response excerpts) were removed, by retention ("expired") or on request
    # ("erased"); the row stays as a tombstone with its ids, type, status and times.
    payload_removed = models.CharField(max_length=7, blank=True, default="", choices=PayloadRemoved.choices)
    payload_removed_at = models.DateTimeField(null=True, blank=True)
    # What `body` becomes once the payloads are removed: valid JSON, so a reader that parses it
    # anyway finds no data (deliveries/retention.py).
    TOMBSTONE = '{"payload_removed": true}'

    class Meta:
        # Every publishing save inserts a row here: only the indexes something reads. (Django's
        # defaults added a second, LIKE-only index to every string key and indexed column.)
        indexes = [
            models.Index(fields=["created_at"], name="event_not_fanned_out", condition=models.Q(fanned_out_at=None)),
            models.Index(fields=["organization", "created_at"], name="event_org_created"),
            models.Index(fields=["created_at"], name="event_created"),
            models.Index(fields=["type"], name="event_type"),
            models.Index(fields=["agent"], name="event_agent"),
            models.Index(fields=["organization", "xid", "id"], name="event_feed"),
            # Ordered delivery (deliveries/ordering.py): a run's events still waiting for fan-out.
            # Small, like event_not_fanned_out: a row leaves it once fanned out (and vacuumed).
            models.Index(
                fields=["run_id", "sequence"],
                name="event_run_not_fanned_out",
                condition=models.Q(fanned_out_at=None, run_id__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"

    @property
    def payload_gone(self) -> str:
        """Why the payload is not shown ("payload expired on ..." / "payload erased on ..."),
        or "" while it is kept: what the API, admin, CLI and feed say instead of the content."""
        if not self.payload_removed:
            return ""
        when = f" on {self.payload_removed_at:%Y-%m-%d}" if self.payload_removed_at else ""
        how = "expired (past its retention period)" if self.payload_removed == PayloadRemoved.EXPIRED else "erased"
        return f"payload {how}{when}"


class StreamCounter(models.Model):
    """Where a stream (a run, or an agent's events outside runs) stands: its last sequence
    number and event. Publishing moves it on in the publishing transaction with one upsert
    (deliveries/streams.py), whose row lock makes concurrent publishers of one stream take
    turns, and whose rollback gives the number back."""

    key = models.CharField(primary_key=True, max_length=80)  # "run:<run id>" or "agent:<agent id>"
    last_sequence = models.PositiveBigIntegerField()
    last_event_id = models.CharField(max_length=40, null=True)
    # The last_event_id that the last move replaced: what the upsert hands back as the new
    # event's previous_event_id (RETURNING sees only the row's new values).
    previous_event_id = models.CharField(max_length=40, null=True)

    def __str__(self) -> str:
        return f"{self.key} at {self.last_sequence}"


class DeliveryKind(models.TextChoices):
    ENDPOINT = "endpoint", "Webhook endpoint"
    STEP_COMPLETE = "step_complete", "STEP_COMPLETE_WEBHOOK (seed 000)"
    RUN_CALLBACK = "run_callback", "Run callback_url (seed 003)"
    JOB_CALLBACK = "job_callback", "Job callback_url (seed 003)"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the receiver refused it (4xx): not retried
    DEAD = "dead"  # every retry failed: given up, can be retried by hand


class Delivery(models.Model):
    """One event on its way to one target.

    `next_attempt_at` is the schedule: a pending delivery is sent when it comes (by the due
    loop, or at once by a message naming it); NULL while it is held for a disabled endpoint.
    Idempotency: every attempt starts by claiming the row with a conditional UPDATE (pending,
    due, lease free; deliveries/store.py). A duplicated or stale task message finds nothing
    to claim and sends nothing; a succeeded delivery is never claimed.
    """

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    kind = models.CharField(max_length=16, choices=DeliveryKind.choices, default=DeliveryKind.ENDPOINT)
    endpoint = models.ForeignKey(
        "webhooks.Endpoint", on_delete=models.CASCADE, null=True, blank=True, related_name="deliveries", db_index=False
    )
    # Targets other than endpoints (seed 000 / 003) carry their own URL and body.
    url = models.URLField(max_length=2048, blank=True, default="")
    body = models.TextField(null=True, blank=True)

    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempt_count = models.PositiveIntegerField(default=0)
    # attempt_count when the current series of retries began (a manual retry starts a new one).
    series_start = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    lease = models.CharField(max_length=32, null=True, blank=True)
    # Due at `next_attempt_at` in a slot already reserved under its endpoint's rate limit.
    slot_reserved = models.BooleanField(default=False)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.IntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set only for a delivery to an endpoint that delivers runs in order (deliveries/ordering.py):
    # its event's run and place in it. `waiting`: held until the run's delivery before it to
    # this endpoint has finished (`next_attempt_at` is NULL meanwhile). `skipped_event_ids`:
    # the run's earlier events this endpoint did not get (their deliveries failed or went dead).
    run_id = models.CharField(max_length=64, null=True, blank=True)
    sequence = models.BigIntegerField(null=True, blank=True)
    waiting = models.BooleanField(default=False)
    skipped_event_ids = models.JSONField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        # Every attempt rewrites the row: only the indexes something reads (the endpoint's
        # lookups use the composite; Django's defaults added LIKE-only twins of both keys).
        indexes = [
            # The due loop's scan: pending deliveries by due time.
            models.Index(fields=["next_attempt_at"], name="delivery_due", condition=models.Q(status="pending")),
            models.Index(fields=["endpoint", "created_at"]),
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["event"], name="delivery_event"),
            # Ordered deliveries only (deliveries/ordering.py), each index holding just the rows
            # it is read for, so a long run costs no more per turn than a short one: a run's
            # unfinished deliveries (whose lowest goes next) and those that failed or died
            # (what a delivery released after them says was skipped).
            models.Index(
                fields=["run_id", "endpoint", "sequence"],
                name="delivery_run_order",
                condition=models.Q(run_id__isnull=False, status="pending"),
            ),
            models.Index(
                fields=["run_id", "endpoint", "sequence"],
                name="delivery_run_skipped",
                condition=models.Q(run_id__isnull=False, status__in=["failed", "dead"]),
            ),
            models.Index(fields=["run_id"], name="delivery_waiting", condition=models.Q(waiting=True)),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} of {self.event_id}"

    @property
    def target_url(self) -> str:
        return self.endpoint.url if self.kind == DeliveryKind.ENDPOINT and self.endpoint_id else self.url


class Attempt(models.Model):
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(db_index=True)
    url = models.URLField(max_length=2048)
    status_code = models.IntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField()
    response_body = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    request_headers = models.JSONField(default=dict)

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}"


class Heartbeat(models.Model):
    """The last sign of life of each worker process (`worker:<host>:<pid>`, written by its due
    loop) and of beat (`beat`), read by the readiness probe (webhooks_project/probes.py).

    In the database because that is what every process shares, whichever the broker is."""

    name = models.CharField(primary_key=True, max_length=200)
    at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} at {self.at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def record(cls, name: str, *, prune: bool = False) -> None:
        """Say `name` is alive now: one INSERT ... ON CONFLICT DO UPDATE. `prune` also deletes
        rows silent for a day (processes long gone; each process prunes once, on its first)."""
        now = timezone.now()
        cls.objects.bulk_create(
            [cls(name=name, at=now)], update_conflicts=True, unique_fields=["name"], update_fields=["at"]
        )
        if prune:
            cls.objects.filter(at__lt=now - datetime.timedelta(days=1)).delete()


class PublishIdempotencyKey(models.Model):
    """An `Idempotency-Key` sent with `POST /api/v1/events/`, and the event it published: a
    retried publish with the same key and body answers that event again (deliveries/publishing.py).
    Unique per organization, so of concurrent publishes with one key only one records an event;
    kept for KEPT_FOR, then purged by beat (`recovery.purge_idempotency_keys`)."""

    KEPT_FOR = datetime.timedelta(hours=24)  # Stripe's window: a retry comes within a day or never

    organization = models.ForeignKey("agents_hooks.Organization", on_delete=models.CASCADE, db_index=False)
    key = models.CharField(max_length=255)
    # sha256 of the request (event type, agent, data) in canonical JSON: a different body is a 409.
    fingerprint = models.CharField(max_length=64)
    event = models.ForeignKey(Event, on_delete=models.CASCADE, null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "key"], name="publish_key_per_org")]
        indexes = [models.Index(fields=["created_at"], name="publish_key_created")]

    def __str__(self) -> str:
        return f"idempotency key {self.key!r} -> {self.event_id}"


class ReplayState(models.TextChoices):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # stopped by an error it cannot get past (`error` says which)
    CANCELLED = "cancelled"


class Replay(models.Model):
    """Past events sent again to one endpoint: those of its organization created in [since,
    until) that the endpoint takes now and never got a delivery of (deliveries/replay.py).

    Worked through in batches, oldest first; the row is its progress (the cursor: the last
    event looked at, and the counts), moved in each batch's transaction, so a replay whose
    worker died carries on where it stopped. At most one runs per endpoint at a time."""

    endpoint = models.ForeignKey("webhooks.Endpoint", on_delete=models.CASCADE, related_name="replays")
    since = models.DateTimeField()
    until = models.DateTimeField()
    # Only events of these types (patterns as in Endpoint.event_types); empty: all the endpoint takes.
    event_types = models.JSONField(default=list, blank=True)
    state = models.CharField(max_length=10, choices=ReplayState.choices, default=ReplayState.RUNNING)
    # Events of the organization in the window when it started (what "examined" counts towards).
    events_total = models.PositiveBigIntegerField(default=0)
    events_examined = models.PositiveBigIntegerField(default=0)
    deliveries_created = models.PositiveBigIntegerField(default=0)
    # The last event examined, by (created_at, id): the next batch starts after it.
    cursor_created_at = models.DateTimeField(null=True, blank=True)
    cursor_event_id = models.CharField(max_length=40, blank=True, default="")
    requested_by = models.CharField(max_length=200, blank=True, default="")
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    # Moved by every batch: a running replay that stopped moving lost its worker (replay.py).
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint"], condition=models.Q(state="running"), name="one_running_replay_per_endpoint"
            )
        ]
        indexes = [models.Index(fields=["updated_at"], name="replay_running", condition=models.Q(state="running"))]

    def __str__(self) -> str:
        return f"replay {self.pk} to {self.endpoint_id} ({self.state})"


# What a PayloadRemoval did: PayloadRemoved less "kept".
REMOVAL_KINDS = [c for c in PayloadRemoved.choices if c[0]]


class PayloadRemoval(models.Model):
    """A removal of payloads (deliveries/retention.py): an erasure someone asked for (an agent's
    or an organization's events), or a retention pass (events created before `cutoff`): who,
    when, what, and how much. The record erasure laws ask for; and, for retention passes, where
    the next pass starts (every event before the last finished pass's `cutoff` is expired)."""

    kind = models.CharField(max_length=7, choices=REMOVAL_KINDS)
    # The scope: an agent's events, an organization's, or (retention, both NULL) everyone's
    # under the default period. Ids, not foreign keys: the record outlives what it names.
    organization_id = models.CharField(max_length=64, null=True, blank=True)
    agent_id = models.CharField(max_length=64, null=True, blank=True)
    cutoff = models.DateTimeField(null=True, blank=True)  # retention: events created before this
    requested_by = models.CharField(max_length=200)  # "API key ahk_12ab… (name)", "user alice", "retention"
    reason = models.CharField(max_length=500, blank=True, default="")  # the asker's words ("ticket 123")
    requested_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    events = models.PositiveIntegerField(default=0)
    deliveries_failed = models.PositiveIntegerField(default=0)
    attempts_cleared = models.PositiveIntegerField(default=0)
    # Deliveries being sent at that moment (leased): their POST may still be answered, and its
    # attempt row written, until this time; their excerpts are cleared again then (settled_at).
    settle_by = models.DateTimeField(null=True, blank=True)
    settled_at = models.DateTimeField(null=True, blank=True)
    # An unfinished erasure is worked on by one process at a time: the one whose lease this is
    # (retention.claim); a process that died lets it run out, and another goes on.
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["kind", "organization_id", "-cutoff"], name="removal_cutoff")]

    def __str__(self) -> str:
        scope = self.agent_id or self.organization_id or "all organizations"
        return f"payloads {self.kind} ({scope}) at {self.requested_at:%Y-%m-%d %H:%M}"
