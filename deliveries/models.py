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

    class Meta:
        # Every publishing save inserts a row here: only the indexes something reads. (Django's
        # defaults added a second, LIKE-only index to every string key and indexed column.)
        indexes = [
            models.Index(fields=["created_at"], name="event_not_fanned_out", condition=models.Q(fanned_out_at=None)),
            models.Index(fields=["organization", "created_at"], name="event_org_created"),
            models.Index(fields=["created_at"], name="event_created"),
            models.Index(fields=["type"], name="event_type"),
            models.Index(fields=["agent"], name="event_agent"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


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
