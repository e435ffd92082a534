"""API representations of the platform models; validation lives here (400s name the field)."""

import copy

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from webhooks import urlsafety

from .events import too_large_for_its_event
from .models import Agent, Job, Message, Run, RunStatus, Step, StepStatus, Tool, ToolExecution, ToolExecutionStatus


@extend_schema_field(OpenApiTypes.STR)
class OrganizationObject(serializers.PrimaryKeyRelatedField):
    """A reference to an object of the caller's organization; any other id "does not exist"."""

    def __init__(self, model, organization_path: str = "organization", **kwargs):
        self.model = model
        self.organization_path = organization_path
        super().__init__(**kwargs)

    def get_queryset(self):
        organization = self.context.get("organization")
        if organization is None:
            return self.model.objects.none()
        return self.model.objects.filter(**{self.organization_path: organization})

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:  # PostgreSQL text cannot hold NUL: no such object
            self.fail("does_not_exist", pk_value=data.replace("\x00", "\\x00"))
        return super().to_internal_value(data)


def check_transition(instance, new: str, order: tuple[str, ...]) -> str:
    """Statuses only move forward along `order`; the last entries of a model's TERMINAL are final."""
    if instance is None or new == instance.status:
        return new
    old = instance.status
    if old in instance.TERMINAL:
        raise serializers.ValidationError(f"cannot change status from {old} to {new}: {old} is final")
    if order.index(new) < order.index(old):
        raise serializers.ValidationError(f"cannot change status from {old} back to {new}")
    return new


INT_MAX = 2**31 - 1  # the models' IntegerFields are PostgreSQL integers


def check_json_text(value, path: str = ""):
    """Refuse what PostgreSQL's jsonb cannot store: NUL and lone surrogates, in keys or strings."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_json_text(key, path)
            check_json_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json_text(item, f"{path}[{i}]")
    elif isinstance(value, str):
        if "\x00" in value:
            raise serializers.ValidationError(f"{path or 'a key'}: NUL characters are not allowed")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise serializers.ValidationError(f"{path or 'a key'}: lone surrogate characters are not allowed") from None
    return value


def check_url(value: str) -> str:
    try:
        urlsafety.check_url(value)
    except urlsafety.UnsafeURL as exc:
        raise serializers.ValidationError(str(exc)) from exc
    return value


class SendableEvent:
    """Refuses an object whose event could never be sent, being over WEBHOOK_MAX_PAYLOAD_BYTES
    (a 400 naming the field that makes it so), rather than save it and have every endpoint's
    delivery of its event fail. Checked on every write until the object's event is published:
    a message when created, a step, run or job until it finishes. (Saves by code are not
    refused: webhooks never break the agent; see deliveries.events.publish.)"""

    def validate(self, attrs):
        attrs = super().validate(attrs)
        instance = self.instance
        if instance is not None and getattr(instance, "status", None) in getattr(instance, "TERMINAL", ()):
            return attrs  # finished before this change: its event is published already
        if instance is None:
            obj = self.Meta.model(**attrs)
            if "organization" in self.context and hasattr(obj, "organization_id") and not obj.organization_id:
                obj.organization = self.context["organization"]  # as perform_create will
        else:
            obj = copy.copy(instance)
            for name, value in attrs.items():
                setattr(obj, name, value)
        if problem := too_large_for_its_event(obj):
            field, message = problem
            raise serializers.ValidationError({field: [message]})
        return attrs


class AgentSerializer(serializers.ModelSerializer):
    tools = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = Agent
        fields = ["id", "name", "tools", "created_at"]


class ToolSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tool
        fields = ["id", "name", "description", "created_at"]


class AttachToolSerializer(serializers.Serializer):
    tool = OrganizationObject(Tool)


class _CompletionSerializer(SendableEvent, serializers.ModelSerializer):
    ORDER = (RunStatus.CREATED, RunStatus.RUNNING, RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
    callback_url = serializers.URLField(max_length=2048, required=False, allow_blank=True)
    metadata = serializers.DictField(required=False)

    def validate_status(self, value):
        return check_transition(self.instance, value, self.ORDER)

    def validate_metadata(self, value):
        return check_json_text(value)

    def validate_callback_url(self, value):
        return check_url(value) if value else value


COMPLETION_FIELDS = [
    "id", "agent", "status", "completed_at", "metadata", "callback_url",
    "callback_sent_at", "callback_status_code", "callback_error", "created_at",
]  # fmt: skip
COMPLETION_READ_ONLY = ["completed_at", "callback_sent_at", "callback_status_code", "callback_error"]


class RunSerializer(_CompletionSerializer):
    agent = OrganizationObject(Agent)

    class Meta:
        model = Run
        fields = COMPLETION_FIELDS
        read_only_fields = COMPLETION_READ_ONLY


class JobSerializer(_CompletionSerializer):
    agent = OrganizationObject(Agent, required=False, allow_null=True)

    class Meta:
        model = Job
        fields = COMPLETION_FIELDS
        read_only_fields = COMPLETION_READ_ONLY


class StepSerializer(SendableEvent, serializers.ModelSerializer):
    agent = OrganizationObject(Agent)
    run = OrganizationObject(Run, "agent__organization", required=False, allow_null=True)
    prompt_tokens = serializers.IntegerField(min_value=0, max_value=INT_MAX, required=False)
    completion_tokens = serializers.IntegerField(min_value=0, max_value=INT_MAX, required=False)
    total_tokens = serializers.IntegerField(min_value=0, max_value=INT_MAX, required=False)

    class Meta:
        model = Step
        fields = [
            "id", "agent", "run", "status", "prompt_tokens", "completion_tokens", "total_tokens",
            "error", "created_at", "completed_at",
        ]  # fmt: skip
        read_only_fields = ["completed_at"]

    def validate_status(self, value):
        return check_transition(self.instance, value, (StepStatus.PENDING, *Step.TERMINAL))

    def validate(self, attrs):
        agent = attrs.get("agent") or getattr(self.instance, "agent", None)
        run = attrs.get("run")
        if run is not None and agent is not None and run.agent_id != agent.pk:
            raise serializers.ValidationError({"run": "the run belongs to another agent"})
        if self.instance is not None and "agent" in attrs and attrs["agent"].pk != self.instance.agent_id:
            raise serializers.ValidationError({"agent": "a step cannot move to another agent"})
        return super().validate(attrs)


class MessageSerializer(SendableEvent, serializers.ModelSerializer):
    agent = OrganizationObject(Agent)
    step = OrganizationObject(Step, "agent__organization", required=False, allow_null=True)

    class Meta:
        model = Message
        fields = ["id", "agent", "step", "role", "content", "created_at"]


class ToolExecutionSerializer(serializers.ModelSerializer):
    agent = OrganizationObject(Agent)
    tool = OrganizationObject(Tool)
    step = OrganizationObject(Step, "agent__organization", required=False, allow_null=True)
    duration_ms = serializers.IntegerField(min_value=0, max_value=INT_MAX, required=False, allow_null=True)

    class Meta:
        model = ToolExecution
        fields = ["id", "agent", "tool", "step", "status", "duration_ms", "created_at"]

    def validate_status(self, value):
        return check_transition(self.instance, value, (ToolExecutionStatus.RUNNING, *ToolExecution.TERMINAL))
