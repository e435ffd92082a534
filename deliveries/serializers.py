"""API representation of the delivery log."""

import json

from rest_framework import serializers

from agents_hooks.models import Organization

from . import stats
from .models import Attempt, Delivery, Event


class EventSerializer(serializers.ModelSerializer):
    event_type = serializers.CharField(source="type")
    payload = serializers.SerializerMethodField()

    class Meta:
        model = Event
        fields = ["id", "event_type", "agent", "created_at", "payload"]

    def get_payload(self, event) -> dict:
        return json.loads(event.body)


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
    delivery = DeliverySerializer()
    attempt = AttemptSerializer(allow_null=True)


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
