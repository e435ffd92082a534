"""API representation of the delivery log."""

import json

from django.conf import settings
from rest_framework import serializers

from agents_hooks.models import Agent, Organization
from agents_hooks.serializers import OrganizationObject
from webhooks import event_types
from webhooks.models import Endpoint

from . import feed, stats
from .events import dumps
from .models import Attempt, Delivery, Event, PayloadRemoval, Replay
from .replay import progress as replay_progress


class EventSerializer(serializers.ModelSerializer):
    event_type = serializers.CharField(source="type")
    payload = serializers.SerializerMethodField(
        help_text="The envelope as POSTed; null once its payload expired or was erased (`payload_removed`)."
    )

    class Meta:
        model = Event
        fields = [
            "id", "event_type", "agent", "run_id", "sequence", "previous_event_id", "created_at", "payload",
            "payload_removed", "payload_removed_at",
        ]  # fmt: skip
        extra_kwargs = {
            "payload_removed": {
                "help_text": '"" while the payload is kept; "expired" (past its retention period) or "erased" (on '
                "request) once it was removed: the event stays, without its data."
            },
        }

    def get_payload(self, event) -> dict | None:
        return None if event.payload_removed else json.loads(event.body)


class PublishSerializer(serializers.Serializer):
    """`POST /api/v1/events/`: an event of a type the organization registered (webhooks/event_types.py)."""

    event_type = serializers.CharField(
        max_length=100, help_text="A type your organization registered with POST /api/v1/event-types/."
    )
    data = serializers.DictField(
        help_text="A JSON object: the event's `data`, checked against the type's JSON Schema if it has one."
    )
    agent = OrganizationObject(
        Agent, required=False, allow_null=True, help_text="The agent the event is about (one of yours), if any."
    )

    def validate_event_type(self, value: str):
        try:
            return event_types.publishable(self.context["organization"], value)
        except event_types.EventTypeError as exc:
            raise serializers.ValidationError(str(exc)) from exc

    def validate_data(self, value: dict) -> dict:
        try:
            dumps(value)  # as publish will: what it cannot encode, no event can carry
        except (TypeError, ValueError) as exc:
            raise serializers.ValidationError(f"cannot be sent in a webhook event: {exc}") from exc
        return value

    def validate(self, attrs):
        problems = event_types.data_errors(attrs["event_type"], attrs["data"])
        if problems:
            raise serializers.ValidationError({"data": problems})
        return attrs


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Attempt
        fields = [
            "number", "started_at", "url", "status_code", "duration_ms", "response_body", "error", "request_headers",
        ]  # fmt: skip


class DeliverySerializer(serializers.ModelSerializer):
    event = serializers.CharField(source="event_id")
    payload_removed = serializers.CharField(
        source="event.payload_removed", read_only=True,
        help_text='"expired" or "erased" once its event\'s payload was removed (the attempts\' response excerpts '
        'too); "" while kept.',
    )  # fmt: skip
    event_type = serializers.CharField(source="event.type")
    webhook = serializers.CharField(source="endpoint_id", allow_null=True)
    url = serializers.CharField(source="target_url")
    skipped_event_ids = serializers.ListField(
        child=serializers.CharField(), allow_null=True, read_only=True,
        help_text="Ordered deliveries: the run's earlier events whose deliveries to this endpoint failed or went dead "
        "before this one went (the 100 most recent; null if none): what the receiver did not get.",
    )  # fmt: skip

    class Meta:
        model = Delivery
        fields = [
            "id", "event", "event_type", "webhook", "kind", "url", "status", "attempt_count", "next_attempt_at",
            "last_attempt_at", "last_status_code", "last_error", "created_at", "finished_at",
            "run_id", "sequence", "waiting", "skipped_event_ids", "payload_removed",
        ]  # fmt: skip
        extra_kwargs = {
            "run_id": {
                "help_text": 'The run of the event, for a delivery to an endpoint with ordering "run"; else null.'
            },
            "sequence": {"help_text": "The event's sequence in its run (ordered deliveries only; else null)."},
            "waiting": {
                "help_text": "Ordered deliveries: true while it waits for the run's earlier delivery to this endpoint "
                "to finish (next_attempt_at is null meanwhile)."
            },
        }


class DeliveryDetailSerializer(DeliverySerializer):
    attempts = AttemptSerializer(many=True, read_only=True)

    class Meta(DeliverySerializer.Meta):
        fields = [*DeliverySerializer.Meta.fields, "attempts"]

    def to_representation(self, instance):
        """No response excerpt once the event's payload is gone: an attempt that was on the wire
        when it was erased is recorded after, with the receiver's answer, until retention's
        `settle` clears it; `payload_removed` says why the excerpts are empty."""
        data = super().to_representation(instance)
        if instance.event.payload_removed:
            for attempt in data["attempts"]:
                attempt["response_body"] = ""
        return data


class RetrySerializer(serializers.Serializer):
    force = serializers.BooleanField(default=False, help_text="Send again even if it already succeeded.")


class TestSendSerializer(serializers.Serializer):
    delivery = DeliverySerializer(allow_null=True, help_text="null for a pull endpoint: its test event is in its feed.")
    attempt = AttemptSerializer(allow_null=True)
    detail = serializers.CharField(required=False, help_text="For a pull endpoint: where its test event is.")


# --- statistics (deliveries/stats.py) -------------------------------------------------------


class WindowField(serializers.ChoiceField):
    def get_value(self, dictionary):
        # DRF reads an empty query parameter as an absent one; `?window=` is a mistake to name.
        return dictionary.get(self.field_name, serializers.empty)


class StatsQuerySerializer(serializers.Serializer):
    window = WindowField(
        choices=list(stats.WINDOWS),
        default="24h",
        help_text="The last hour (5-minute buckets), 24 hours (hourly) or 7 days (6-hourly).",
    )


class ServiceStatsQuerySerializer(StatsQuerySerializer):
    organization = serializers.CharField(required=False, help_text="Only this organization's deliveries.")

    def validate_organization(self, value: str) -> str:
        # PostgreSQL text cannot hold NUL: no organization has such an id.
        if "\x00" in value or not Organization.objects.filter(pk=value).exists():
            raise serializers.ValidationError(f"no organization {value!r}")
        return value


class PercentilesSerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)


# Attempts by outcome class: the field names ("2xx", "connection_error"...) are not identifiers.
OutcomesSerializer = type(
    "OutcomesSerializer",
    (serializers.Serializer,),
    {key: serializers.IntegerField(help_text=label) for key, label in stats.OUTCOME_LABELS.items()},
)


class StatsAttemptsSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="Attempts started in the window.")
    succeeded = serializers.IntegerField(help_text="Attempts answered 2xx.")
    success_rate = serializers.FloatField(allow_null=True, help_text="succeeded / total.")
    retries = serializers.IntegerField(help_text="Attempts after a delivery's first.")
    retry_rate = serializers.FloatField(allow_null=True, help_text="retries / total.")
    outcomes = OutcomesSerializer()
    duration_ms = PercentilesSerializer(help_text="Attempt duration.")


class StatsDeliveriesSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="Deliveries created in the window.")
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    dead = serializers.IntegerField()
    pending = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True, help_text="succeeded / total, so far.")
    latency_ms = PercentilesSerializer(help_text="From the event's creation to the delivery's success.")


class StatsBucketSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    attempts = serializers.IntegerField()
    retries = serializers.IntegerField()
    outcomes = OutcomesSerializer()
    duration_ms = PercentilesSerializer()
    deliveries = serializers.IntegerField()
    deliveries_succeeded = serializers.IntegerField()


class StatsSerializer(serializers.Serializer):
    window = serializers.CharField()
    since = serializers.DateTimeField(help_text="Start of the window: now minus the window, down to a whole bucket.")
    until = serializers.DateTimeField()
    bucket_seconds = serializers.IntegerField()
    attempts = StatsAttemptsSerializer()
    deliveries = StatsDeliveriesSerializer()
    series = StatsBucketSerializer(many=True)


class FeedQuerySerializer(serializers.Serializer):
    """GET /api/v1/events/feed/'s parameters. Too large a `wait` or `limit` is taken as the most
    allowed (a client need not know the server's cap); anything else wrong is a 400 naming it."""

    after = serializers.CharField(
        required=False, max_length=200,
        help_text="The `next` of an earlier answer (or an event's `cursor`); `latest` to start from now. Absent: "
        "from the oldest event kept.",
    )  # fmt: skip
    wait = serializers.FloatField(
        required=False, default=0, min_value=0,
        help_text="Seconds to wait for an event when there is none yet (a long poll); at most WEBHOOK_FEED_MAX_WAIT "
        "(25 by default), more is taken as that.",
    )  # fmt: skip
    limit = serializers.IntegerField(required=False, default=100, min_value=1, help_text="At most this many, 1-500.")
    endpoint = OrganizationObject(
        Endpoint, required=False,
        help_text="A pull endpoint's id: only the events it subscribes to, each with the signed headers of a POST "
        "to it.",
    )  # fmt: skip

    def validate_wait(self, value):
        return min(value, settings.WEBHOOK_FEED_MAX_WAIT)

    def validate_limit(self, value):
        return min(value, 500)

    def validate_endpoint(self, value):
        try:
            feed.check_endpoint(value)
        except feed.BadEndpoint as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value


class FeedEventSerializer(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.CharField()
    created_at = serializers.DateTimeField()
    cursor = serializers.CharField(help_text="The feed's position after this event: `after` to go on from it.")
    body = serializers.CharField(
        allow_null=True,
        help_text="The event envelope, the exact text a POST would carry (and is signed). With `endpoint`, in its "
        "payload shape: thin, or without its `exclude_fields`. null once its payload expired or was erased.",
    )
    payload_removed = serializers.CharField(
        required=False, help_text='Only for an event whose payload was removed: "expired" or "erased" (`body` is null).'
    )
    headers = serializers.DictField(
        child=serializers.CharField(), required=False,
        help_text="With `endpoint`: the headers of a POST to it, signed with its secret.",
    )  # fmt: skip
    oversize_bytes = serializers.IntegerField(
        required=False, help_text="Only for an event over WEBHOOK_MAX_PAYLOAD_BYTES: `body` is its stand-in."
    )


class FeedSerializer(serializers.Serializer):
    events = FeedEventSerializer(many=True)
    next = serializers.CharField(help_text="Pass as `after` for what comes next.")
    has_more = serializers.BooleanField(help_text="More is waiting already: ask again at once.")


class ReplayRequestSerializer(serializers.Serializer):
    """`POST /api/v1/webhooks/<id>/replay/` (deliveries/replay.py: what is replayed, and why)."""

    since = serializers.DateTimeField(help_text="Replay events created at or after this time (ISO 8601).")
    until = serializers.DateTimeField(
        required=False, help_text="...and before this time (ISO 8601); default and latest: now."
    )
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        max_length=50,
        help_text='Only these event types ("agent.step.*" style patterns allowed), of those the endpoint takes; '
        "default: every type it takes.",
    )


class ReplaySerializer(serializers.ModelSerializer):
    webhook = serializers.CharField(source="endpoint_id")
    progress = serializers.SerializerMethodField(
        help_text="events_examined / events_total, 0 to 1 (1 once done; null for an empty window)."
    )

    class Meta:
        model = Replay
        fields = [
            "id", "webhook", "state", "since", "until", "event_types", "events_total", "events_examined",
            "deliveries_created", "progress", "requested_by", "error", "created_at", "updated_at", "finished_at",
        ]  # fmt: skip
        extra_kwargs = {
            "state": {"help_text": "running, then done; failed (see error) or cancelled."},
            "events_total": {"help_text": "Events of the organization in the window when the replay started."},
            "events_examined": {"help_text": "Of those, how many were looked at so far (oldest first)."},
            "deliveries_created": {
                "help_text": "Deliveries created for events the endpoint takes and had not received: being sent."
            },
        }

    def get_progress(self, replay) -> float | None:
        return replay_progress(replay)


# --- payload erasure (deliveries/retention.py) ----------------------------------------------


class EraseRequestSerializer(serializers.Serializer):
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=500, default="",
        help_text="Why (a ticket, a user's request): recorded with who asked and when.",
    )  # fmt: skip


class PayloadRemovalSerializer(serializers.ModelSerializer):
    state = serializers.SerializerMethodField(
        help_text='"running": a worker goes on with it (an erasure of more than a request\'s time); "finished".'
    )

    class Meta:
        model = PayloadRemoval
        fields = [
            "id", "kind", "state", "organization_id", "agent_id", "requested_by", "reason", "requested_at",
            "finished_at", "events", "deliveries_failed", "attempts_cleared", "settle_by",
        ]  # fmt: skip
        extra_kwargs = {
            "finished_at": {"help_text": "When the last payload was removed; null while it goes on."},
            "events": {
                "help_text": "Events whose payloads were removed (their rows stay, without data); it grows "
                "while `state` is `running`."
            },  # fmt: skip
            "deliveries_failed": {"help_text": "Undelivered deliveries finished `failed`: they will not be sent."},
            "attempts_cleared": {"help_text": "Attempts whose response excerpt was removed."},
            "settle_by": {
                "help_text": "Deliveries were being sent at that moment: their answers' excerpts are removed too once "
                "they are recorded, by this time. null if none was."
            },
        }

    def get_state(self, record) -> str:
        return "running" if record.finished_at is None else "finished"
