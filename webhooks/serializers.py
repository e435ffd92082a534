"""API representation of endpoints ("webhooks" in the API) and their validation."""

import re

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents_hooks.models import Agent
from agents_hooks.serializers import OrganizationObject, check_url
from deliveries import policy, recovery

from . import catalog, credentials
from .models import RESERVED_HEADERS, Endpoint, redact_headers


@extend_schema_field(
    {
        "type": "array",
        "nullable": True,
        "maxItems": policy.MAX_RETRIES,
        "items": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "example": "5m"}]},
        "example": [5, 300, 1800, 7200],
    }
)
class RetryScheduleField(serializers.JSONField):
    """A list of waits; validated by `EndpointSerializer.validate_retry_schedule`."""


HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")  # an RFC 9110 token
MAX_HEADERS = 20


class EndpointSerializer(serializers.ModelSerializer):
    url = serializers.URLField(max_length=2048)
    agent = OrganizationObject(Agent, required=False, allow_null=True)
    event_types = serializers.ListField(child=serializers.CharField(max_length=100), required=False, max_length=50)
    headers = serializers.DictField(
        child=serializers.CharField(max_length=1000, allow_blank=True),
        required=False,
        help_text=(
            "Extra HTTP headers sent with every POST. Credential values (by name, e.g. Authorization, or by "
            f'shape, e.g. a token) are write-only: shown as "{credentials.MASK}", which sent back keeps the '
            "stored value; a new value replaces it, a header left out is removed."
        ),
    )
    retry_schedule = RetryScheduleField(
        required=False,
        allow_null=True,
        help_text=(
            'Waits before each retry, in seconds (or durations: "5m", "2h"), non-decreasing; '
            f"at most {policy.MAX_RETRIES} retries, {policy.MAX_STEP_SECONDS} s each, "
            f"{policy.MAX_TOTAL_SECONDS} s in all. [] never retries; null follows the default schedule "
            "(5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h unless the operator changed it)."
        ),
    )

    class Meta:
        model = Endpoint
        fields = [
            "id", "url", "agent", "description", "event_types", "is_active", "headers", "rate_limit",
            "retry_schedule", "disabled_at", "disabled_reason", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = ["disabled_at", "disabled_reason"]

    def validate_url(self, value):
        return check_url(value)

    def validate_event_types(self, value):
        unknown = catalog.unknown_patterns(value)
        if unknown:
            raise serializers.ValidationError(
                f"unknown event type(s): {', '.join(unknown)}; see /api/v1/event-types/ for the list"
            )
        return value

    def validate_retry_schedule(self, value):
        if value is None:
            return None
        try:
            return policy.parse_schedule(value)
        except policy.ScheduleError as exc:
            raise serializers.ValidationError(str(exc)) from exc

    def validate_headers(self, value):
        if len(value) > MAX_HEADERS:
            raise serializers.ValidationError(f"at most {MAX_HEADERS} custom headers")
        for name, header_value in value.items():
            if not HEADER_NAME.match(name):
                raise serializers.ValidationError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise serializers.ValidationError(f"{name!r} is set by the service and cannot be overridden")
            if any(c in header_value for c in "\r\n\0"):
                raise serializers.ValidationError(f"the value of {name!r} contains a line break or NUL")
        try:  # a masked value written back (GET then PUT) keeps the credential it hides
            return credentials.unmask(value, self.instance.headers if self.instance else None)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from exc

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["headers"] = redact_headers(data.get("headers") or {})  # a custom Authorization is a secret
        return data

    def update(self, instance, validated_data):
        # Switching is the services' to do: they record why, hold or release the deliveries,
        # and report it (`endpoint.disabled` / `endpoint.enabled`).
        wanted = validated_data.pop("is_active", instance.is_active)
        endpoint = super().update(instance, validated_data)
        if endpoint.is_active and not wanted:
            recovery.disable_endpoints(Endpoint.objects.filter(pk=endpoint.pk), "disabled through the API")
            endpoint.refresh_from_db()
        if wanted and not endpoint.is_active:
            recovery.resume_endpoint(endpoint)
            endpoint.refresh_from_db()
        return endpoint


class EndpointWithSecretSerializer(EndpointSerializer):
    """What create answers: the only time, with rotation, that the secret is shown."""

    secret = serializers.CharField(read_only=True)

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "secret"]


class RotatedSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(read_only=True)
    previous_secret_expires_at = serializers.DateTimeField(read_only=True)


class RecoverSerializer(serializers.Serializer):
    since = serializers.DateTimeField()


class RecoveredSerializer(serializers.Serializer):
    recovered = serializers.IntegerField()


class RetriedSerializer(serializers.Serializer):
    retried = serializers.IntegerField(help_text="Deliveries that were waiting for a retry, now being sent.")


class EventTypeSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    example = serializers.DictField()
