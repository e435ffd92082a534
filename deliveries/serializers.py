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
from .models import Attempt, Delivery, Event


class EventSerializer(serializers.ModelSerializer):
    event_type = serializers.CharField(source="type")
    payload = serializers.SerializerMethodField()

    class Meta:
        model = Event
        fields = ["id", "event_type", "agent", "run_id", "sequence", "previous_event_id", "created_at", "payload"]

    def get_payload(self, event) -> dict:
        return json.loads(event.body)


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
    event_type = serializers.CharField(source="event.type")
    webhook = serializers.CharField(source="endpoint_id", allow_null=True)
    url = serializers.CharField(source="target_url")

    class Meta:
        model = Delivery
        fields = [
            "id", "event", "event_type", "webhook", "kind", "url", "status", "attempt_count", "next_attempt_at",
            "last_attempt_at", "last_status_code", "last_error", "created_at", "finished_at",
        ]  # fmt: skip


class DeliveryDetailSerializer(DeliverySerializer):
    attempts = AttemptSerializer(many=True, read_only=True)

    class Meta(DeliverySerializer.Meta):
        fields = [*DeliverySerializer.Meta.fields, "attempts"]


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
    body = serializers.CharField(help_text="The event envelope, the exact text a POST would carry (and is signed).")
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
