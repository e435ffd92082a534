"""API representation of endpoints ("webhooks" in the API) and their validation."""

import datetime
import re

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents_hooks.models import Agent
from agents_hooks.serializers import OrganizationObject, check_json_text, check_url
from deliveries import policy, recovery

from . import catalog, clientcert, content_filter, credentials, event_types, payload_shape, run_subscriptions
from .models import (
    RESERVED_HEADERS,
    Endpoint,
    EndpointKind,
    EndpointState,
    Ordering,
    Payload,
    redact_headers,
    url_problem,
)


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


FILTER_HELP = (
    "Optional content filter over the event envelope (the JSON POSTed: `event_type`, `agent_id`, `data`, ...): "
    "of the events its types and agent take, the endpoint receives only those that pass. null: no filter.\n\n"
    "One condition, as JSON:\n"
    '* `{"path": "data.status", "eq": "failed"}`: equal (a string, number, boolean or null; no conversion, '
    '`1` is not `"1"`)\n'
    '* `{"path": "data.status", "in": ["failed", "cancelled"]}`: equal to one of the list\n'
    '* `{"path": "data.usage.total_tokens", "gt": 10000}`: also `gte`, `lt`, `lte`; numbers only\n'
    '* `{"path": "data.error", "exists": true}`: present and not null (`false`: absent or null)\n'
    '* `{"path": "data.usage.total_tokens", "gte": 1000, "lt": 5000}`: several operators on one path all hold\n'
    '* `{"and": [...]}`, `{"or": [...]}`, `{"not": {...}}`: combine conditions\n\n'
    "A path is dotted from the envelope's top (`event_type`, `data.usage.total_tokens`; a number indexes a list). "
    "An absent path fails every comparison. "
    f"At most {content_filter.MAX_BYTES} bytes as JSON, {content_filter.MAX_DEPTH} levels deep, "
    f"{content_filter.MAX_CONDITIONS} conditions, {content_filter.MAX_IN} values in an `in`. "
    "A mistake is a 400 naming the part: `and[1].gt: expects a number, got 'x'`. "
    "Try one on a sample event with POST /api/v1/webhooks/{id}/test-filter/."
)
FILTER_EXAMPLE = {
    "and": [
        {"path": "data.status", "in": ["failed", "cancelled"]},
        {"or": [{"path": "data.usage.total_tokens", "gt": 10000}, {"path": "data.error", "exists": True}]},
    ]
}


@extend_schema_field({"type": "object", "nullable": True, "additionalProperties": {}, "example": FILTER_EXAMPLE})
class ContentFilterField(serializers.JSONField):
    """A content filter (webhooks/content_filter.py) or null; checked by `content_filter.check`."""


def check_filter(value):
    """`value` as a content filter (None: none), or a 400 naming the bad part of it."""
    try:
        content_filter.check(value)
    except content_filter.FilterError as exc:
        raise serializers.ValidationError(str(exc)) from exc
    check_json_text(value)  # what PostgreSQL's jsonb cannot hold (after the depth is known bounded)
    return value


PAYLOAD_HELP = (
    "What each POST (and each event of a pull endpoint's feed) carries, signed as sent. full (the default): the "
    "whole envelope, less `exclude_fields`. thin: the envelope with only the ids in `data` (`id` and `…_id` fields: "
    '`step_id`, `message_id`, ...) and `"links": {"event": "/api/v1/events/<id>/"}`: GET it with your API key '
    "for the whole event. The event is recorded whole either way."
)
EXCLUDE_FIELDS_HELP = (
    "Fields of `data` never sent to this endpoint: dotted paths from inside `data` (`content`, "
    "`usage.total_tokens`); one that reaches a list applies to each of its items. A path an event does not have is "
    f"passed over (event types differ). At most {payload_shape.MAX_PATHS} paths of "
    f"{payload_shape.MAX_PATH} characters; a bad one is a 400 naming it. [] (the default): nothing excluded."
)


@extend_schema_field(
    {
        "type": "array",
        "maxItems": payload_shape.MAX_PATHS,
        "items": {"type": "string", "maxLength": payload_shape.MAX_PATH},
        "example": ["content", "usage.total_tokens"],
    }
)
class ExcludeFieldsField(serializers.ListField):
    """Dotted paths inside `data`; validated by `payload_shape.check_exclude_fields`."""


HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")  # an RFC 9110 token
# RFC 9110 5.5: visible ASCII, space and tab. Anything else would be sent mangled or refused.
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
MAX_HEADERS = 20


class EndpointSerializer(serializers.ModelSerializer):
    url = serializers.URLField(
        max_length=2048, required=False, allow_blank=True, help_text="Where events are POSTed; a push endpoint's only."
    )
    kind = serializers.ChoiceField(
        choices=EndpointKind.choices,
        required=False,
        help_text=(
            "push (the default): events are POSTed to `url`. pull: no URL; its events are read, signed with its "
            "secret, from GET /api/v1/events/feed/?endpoint=<id> (what `listen` follows). Set on create only."
        ),
    )
    agent = OrganizationObject(Agent, required=False, allow_null=True)
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=100),
        required=False,
        max_length=50,
        help_text=(
            'Event types to receive, "agent.step.*" style patterns allowed (GET /api/v1/event-types/ lists them). '
            "Empty ([], the default) means every agent event; operational events (endpoint.*, delivery.dead) only "
            'where a pattern names them ("endpoint.*", "*").'
        ),
    )
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
    filter = ContentFilterField(required=False, allow_null=True, help_text=FILTER_HELP)
    run_id = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="A run subscription's run (POST /api/v1/runs/{id}/subscriptions/): it takes only that run's "
        "events; null for an ordinary endpoint.",
    )
    state = serializers.ChoiceField(
        choices=EndpointState.choices,
        read_only=True,
        help_text="active; disabled (deliveries held); for a run subscription, ended (its run's last event was "
        "delivered) or expired (past expires_at): neither takes new events, deliveries made finish their retries.",
    )
    payload = serializers.ChoiceField(choices=Payload.choices, required=False, help_text=PAYLOAD_HELP)
    exclude_fields = ExcludeFieldsField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        required=False,
        help_text=EXCLUDE_FIELDS_HELP,
    )
    has_client_certificate = serializers.BooleanField(read_only=True)
    client_certificate_subject = serializers.CharField(source="client_cert_subject", read_only=True)
    client_certificate_expires_at = serializers.DateTimeField(
        source="client_cert_expires_at", read_only=True, allow_null=True
    )

    class Meta:
        model = Endpoint
        fields = [
            "id", "kind", "url", "agent", "description", "event_types", "is_active", "headers", "rate_limit",
            "retry_schedule", "filter", "ordering", "client_certificate", "client_key", "has_client_certificate",
            "client_certificate_subject", "client_certificate_expires_at", "disabled_at", "disabled_reason",
            "payload", "exclude_fields", "created_at", "updated_at", "run_id", "state", "expires_at", "ended_at",
        ]  # fmt: skip
        read_only_fields = ["disabled_at", "disabled_reason", "expires_at", "ended_at"]

    def validate(self, attrs):
        self._check_kind(attrs)
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

    def _check_kind(self, attrs) -> None:
        """A push endpoint needs a URL, a pull endpoint has none; the kind is chosen once."""
        if self.partial and "kind" not in attrs and "url" not in attrs:
            return  # a PATCH of other fields (or the admin checking one field by these rules)
        kind = attrs.get("kind", self.instance.kind if self.instance else EndpointKind.PUSH)
        if self.instance is not None and kind != self.instance.kind:
            raise serializers.ValidationError({"kind": ["set on create only: create another endpoint"]})
        if problem := url_problem(kind, attrs.get("url", self.instance.url if self.instance else "")):
            raise serializers.ValidationError({"url": [problem]})

    def create(self, validated_data):
        if "_client_certificate" in validated_data:
            validated_data.update(_client_fields(validated_data.pop("_client_certificate")))
        return super().create(validated_data)

    def validate_url(self, value):
        return check_url(value) if value else value

    def validate_event_types(self, value):
        # The organization's registered types count too: from the API's context, or for an
        # endpoint being changed (the admin's form), its own organization.
        organization = self.context.get("organization") or getattr(self.instance, "organization", None)
        unknown = catalog.unknown_patterns(value, event_types.subscribable_names(organization))
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

    def validate_filter(self, value):
        return check_filter(value)

    def validate_exclude_fields(self, value):
        try:
            return payload_shape.check_exclude_fields(value)
        except payload_shape.ShapeError as exc:
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


class RunSubscriptionSerializer(EndpointSerializer):
    """A run subscription: an endpoint that takes one run's events only, until the run's last
    event (`agent.run.completed`) was delivered to it or its time to live passed. Its fields
    are checked as any endpoint's (webhooks/run_subscriptions.py)."""

    url = serializers.URLField(max_length=2048, help_text="Where the run's events are POSTed.")
    ordering = serializers.ChoiceField(
        choices=Ordering.choices,
        default=run_subscriptions.DEFAULT_ORDERING,
        help_text='"run" (the default here): the run\'s events are delivered one at a time, in their order; '
        '"none": as soon as they can, concurrently.',
    )
    ttl_seconds = serializers.IntegerField(
        write_only=True,
        required=False,
        min_value=run_subscriptions.MIN_TTL_SECONDS,
        max_value=run_subscriptions.MAX_TTL_SECONDS,
        help_text="Take no new event after this many seconds, if the run has not ended by then. Default: "
        "WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS (24 h unless the operator changed it). Or give expires_at.",
    )
    expires_at = serializers.DateTimeField(
        required=False,
        help_text="When it takes no new event, if the run has not ended by then (instead of ttl_seconds); at most "
        "30 days ahead.",
    )

    class Meta(EndpointSerializer.Meta):
        fields = [
            "id", "run_id", "url", "description", "event_types", "filter", "headers", "ordering", "ttl_seconds",
            "expires_at", "state", "ended_at", "is_active", "disabled_at", "disabled_reason", "created_at",
        ]  # fmt: skip
        read_only_fields = ["is_active", "disabled_at", "disabled_reason", "ended_at"]

    def validate(self, attrs):
        attrs = super().validate(attrs)
        now = timezone.now()
        ttl = attrs.pop("ttl_seconds", None)
        if ttl is not None and "expires_at" in attrs:
            raise serializers.ValidationError({"ttl_seconds": ["give ttl_seconds or expires_at, not both"]})
        if "expires_at" in attrs:
            if problem := run_subscriptions.ttl_problem(attrs["expires_at"], now):
                raise serializers.ValidationError({"expires_at": [problem]})
        else:
            ttl = datetime.timedelta(seconds=ttl) if ttl is not None else run_subscriptions.default_ttl()
            attrs["expires_at"] = now + ttl
        return attrs


class RunSubscriptionWithSecretSerializer(RunSubscriptionSerializer):
    """What creating one answers: the only time, with rotation, that its secret is shown."""

    secret = serializers.CharField(read_only=True)

    class Meta(RunSubscriptionSerializer.Meta):
        fields = [*RunSubscriptionSerializer.Meta.fields, "secret"]


class TestFilterSerializer(serializers.Serializer):
    """A sample to try the endpoint's filter (or another) on: an event given whole, or by id."""

    event = serializers.DictField(
        required=False,
        help_text="A sample event: an envelope (an object with `event_type` or `data`, as POSTed), or only its "
        '`data` (any other object, taken as `{"data": <it>}`).',
    )
    event_id = serializers.CharField(
        required=False, max_length=40, help_text="Or one of your organization's events, by id (`evt_…`)."
    )
    filter = ContentFilterField(
        required=False,
        allow_null=True,
        help_text="A filter to try instead of the endpoint's own (nothing is saved); left out: the endpoint's.",
    )

    def validate_filter(self, value):
        return check_filter(value)

    def validate(self, attrs):
        if ("event" in attrs) == ("event_id" in attrs):
            raise serializers.ValidationError({"event": ["give either event (a sample) or event_id, not both"]})
        if "event" in attrs:
            try:
                check_json_text(attrs["event"])  # what could not be answered back as JSON
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"event": exc.detail}) from exc
        return attrs


class FilterVerdictSerializer(serializers.Serializer):
    matches = serializers.BooleanField(help_text="Whether the event passes the filter (true when there is none).")
    failed = serializers.CharField(
        allow_null=True, help_text="The part of the filter that failed (`and[0].in`, `not`, `or`); null if it matches."
    )
    reason = serializers.CharField(
        allow_null=True,
        help_text="Why, e.g. \"data.status is 'success': wanted one of ['failed', 'cancelled']\"; null if it matches.",
    )
    filter = ContentFilterField(allow_null=True, help_text="The filter evaluated (null: none, every event passes).")
    subscribed = serializers.BooleanField(
        allow_null=True,
        help_text="Whether the endpoint's event types and agent take this event at all (null: the sample has no "
        "event_type). An event is sent only if subscribed and matching.",
    )
    envelope = serializers.DictField(help_text="The envelope the filter was evaluated on.")


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
    built_in = serializers.BooleanField(
        help_text="true: the service's own, published by the platform; false: registered by your organization, "
        "published by you with POST /api/v1/events/."
    )
    example = serializers.DictField(allow_null=True, help_text="An example of `data` (built-in types; null otherwise).")
    schema = serializers.JSONField(
        allow_null=True, help_text="The JSON Schema every published event's `data` must satisfy (registered types)."
    )
    created_at = serializers.DateTimeField(allow_null=True, help_text="When it was registered (null: built-in).")
    updated_at = serializers.DateTimeField(allow_null=True)


@extend_schema_field({"type": "object", "nullable": True, "additionalProperties": {}, "example": {"type": "object"}})
class SchemaField(serializers.JSONField):
    """A JSON Schema (Draft 2020-12) or null; checked by `event_types.check_schema`."""


class EventTypeWriteSerializer(serializers.Serializer):
    """Registers (POST) or changes (PATCH: description, schema) one of the organization's types;
    the rules are `webhooks.event_types`'s."""

    name = serializers.CharField(
        max_length=event_types.NAME_MAX,
        help_text="Lower-case dotted segments, e.g. billing.invoice.paid. Not a built-in name, nor under agent., "
        "tool., webhook., endpoint. or delivery. Cannot be changed.",
    )
    description = serializers.CharField(max_length=event_types.DESCRIPTION_MAX)
    schema = SchemaField(
        required=False,
        allow_null=True,
        help_text=f"Optional JSON Schema (Draft 2020-12; `format` is not checked) that `data` must satisfy. "
        f"At most {event_types.SCHEMA_MAX_BYTES} bytes and {event_types.SCHEMA_MAX_DEPTH} levels; "
        "`$ref` only within the schema.",
    )

    def validate_name(self, value):
        if self.instance is not None and value != self.instance.name:
            raise serializers.ValidationError("cannot be changed (endpoints subscribe to it by name)")
        return _rule(event_types.check_name, value) if self.instance is None else value

    def validate_schema(self, value):
        check_json_text(value)  # what PostgreSQL's jsonb cannot hold
        return _rule(event_types.check_schema, value)


def _rule(check, value):
    """`check(value)`, its EventTypeError turned into this field's 400."""
    try:
        return check(value)
    except event_types.EventTypeError as exc:
        raise serializers.ValidationError(str(exc)) from exc


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
