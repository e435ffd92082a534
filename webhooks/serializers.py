"""API representation of endpoints ("webhooks" in the API) and their validation."""

import re

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents_hooks.models import Agent
from agents_hooks.serializers import OrganizationObject, check_url
from deliveries import policy, recovery

from . import catalog, clientcert, credentials
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
# RFC 9110 5.5: visible ASCII, space and tab. Anything else would be sent mangled or refused.
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
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
    client_certificate = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text=(
            "Mutual TLS: the PEM certificate (leaf first, then any intermediates) presented to the receiver, with "
            'client_key. Write-only: never shown again. "" (with client_key "") removes it; left out keeps it.'
        ),
    )
    client_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text="Mutual TLS: the certificate's private key, PEM, unencrypted. Write-only.",
    )
    has_client_certificate = serializers.BooleanField(read_only=True)
    client_certificate_subject = serializers.CharField(source="client_cert_subject", read_only=True)
    client_certificate_expires_at = serializers.DateTimeField(
        source="client_cert_expires_at", read_only=True, allow_null=True
    )

    class Meta:
        model = Endpoint
        fields = [
            "id", "url", "agent", "description", "event_types", "is_active", "headers", "rate_limit",
            "retry_schedule", "client_certificate", "client_key", "has_client_certificate",
            "client_certificate_subject", "client_certificate_expires_at", "disabled_at", "disabled_reason",
            "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = ["disabled_at", "disabled_reason"]

    def validate(self, attrs):
        cert, key = attrs.pop("client_certificate", None), attrs.pop("client_key", None)
        if cert is None and key is None:
            return attrs
        if not cert and not key:
            attrs["_client_certificate"] = None  # both blank: remove
            return attrs
        missing = "client_key" if cert else "client_certificate"
        if not cert or not key:
            raise serializers.ValidationError({missing: ["required with the other half of the client certificate"]})
        try:
            attrs["_client_certificate"] = clientcert.parse(cert, key)
        except clientcert.ClientCertificateError as exc:
            raise serializers.ValidationError({exc.field: [str(exc)]}) from exc
        return attrs

    def create(self, validated_data):
        if "_client_certificate" in validated_data:
            validated_data.update(_client_fields(validated_data.pop("_client_certificate")))
        return super().create(validated_data)

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
            if not HEADER_NAME.fullmatch(name):  # match() lets "X-A\n" through
                raise serializers.ValidationError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise serializers.ValidationError(f"{name!r} is set by the service and cannot be overridden")
            if not HEADER_VALUE.fullmatch(header_value):
                raise serializers.ValidationError(
                    f"the value of {name!r} may hold only visible ASCII, spaces and tabs (no line break, NUL "
                    "or non-ASCII character such as '€')"
                )
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
        if "_client_certificate" in validated_data:
            validated_data.update(_client_fields(validated_data.pop("_client_certificate")))
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


def _client_fields(parsed: "clientcert.ClientCertificate | None") -> dict:
    """The model fields that set (or, for None, remove) an endpoint's client certificate."""
    endpoint = Endpoint(secret_encrypted="")
    if parsed is None:
        endpoint.remove_client_certificate()
    else:
        endpoint.set_client_certificate(parsed.cert_pem, parsed.key_pem)
    return {
        name: getattr(endpoint, name)
        for name in ("client_cert_encrypted", "client_key_encrypted", "client_cert_subject", "client_cert_expires_at")
    }
