"""API representation of the delivery log."""

import json

from rest_framework import serializers

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
