"""The agent platform: the things whose lifecycle our webhooks report.

Names, ids and statuses follow Letta (seeds 000 and 003): ids are `<kind>-<uuid4>`, step
statuses pending/success/failed/cancelled, run and job statuses
created/running/completed/failed/cancelled.

Events are published by `agents_hooks.signals` on `post_save`/`post_delete`. A queryset
`update()` or `bulk_create()` bypasses signals and so publishes nothing, as in Django itself;
use `save()` (or the REST API) when the change should be reported.
"""

import functools
import hashlib
import secrets
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.utils import timezone


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def _id_field(prefix: str) -> models.CharField:
    return models.CharField(primary_key=True, max_length=64, editable=False, default=functools.partial(new_id, prefix))


class PublishesEvents(models.Model):
    """A save that publishes an event runs in a transaction, so the event a signal receiver
    records commits or rolls back together with the change that caused it (outbox), even in
    autocommit mode. Saves that publish nothing stay a bare save. Deletes always publish."""

    class Meta:
        abstract = True

    def publishes_on_save(self) -> bool:
        return self._state.adding  # created: message sent, tool attached

    def save(self, *args, **kwargs):
        if self.publishes_on_save():
            with transaction.atomic(using=kwargs.get("using"), savepoint=False):
                super().save(*args, **kwargs)
        else:
            super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        with transaction.atomic(using=kwargs.get("using"), savepoint=False):
            return super().delete(*args, **kwargs)


class TracksStatus(PublishesEvents):
    """Remembers the status loaded from the database, so a receiver can tell a transition
    from a re-save."""

    class Meta:
        abstract = True

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        instance._loaded_status = instance.__dict__.get("status")
        return instance

    @property
    def previous_status(self) -> str | None:
        return getattr(self, "_loaded_status", None)

    def entered_terminal_state(self) -> bool:
        return self.status in self.TERMINAL and self.previous_status != self.status

    def publishes_on_save(self) -> bool:
        return self.entered_terminal_state()

    def save(self, *args, **kwargs):
        if self.status in self.TERMINAL and getattr(self, "completed_at", False) is None:
            self.completed_at = timezone.now()
            if kwargs.get("update_fields") is not None:
                kwargs["update_fields"] = {*kwargs["update_fields"], "completed_at"}
        super().save(*args, **kwargs)
        self._loaded_status = self.status


class Organization(models.Model):
    id = _id_field("org")
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    # Days its events' payloads are kept (deliveries/retention.py); NULL: the service's
    # WEBHOOK_PAYLOAD_RETENTION_DAYS. Only ever shorter than that (`clean`).
    payload_retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Days event and delivery payloads are kept before they expire; empty: the service's "
        "default (WEBHOOK_PAYLOAD_RETENTION_DAYS). May only be shorter than the default.",
    )

    def clean(self):
        super().clean()
        longest = settings.WEBHOOK_PAYLOAD_RETENTION_DAYS
        if longest and self.payload_retention_days is not None and self.payload_retention_days > longest:
            raise ValidationError(
                {"payload_retention_days": f"at most {longest} days (WEBHOOK_PAYLOAD_RETENTION_DAYS): only shorter"}
            )

    def __str__(self) -> str:
        return self.name


class Agent(models.Model):
    id = _id_field("agent")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=200)
    tools = models.ManyToManyField("Tool", through="AgentTool", related_name="agents", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Tool(models.Model):
    id = _id_field("tool")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class AgentTool(PublishesEvents):
    """A tool attached to an agent: creating the row is `agent.tool.attached`, deleting it
    `agent.tool.detached`."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE)
    tool = models.ForeignKey(Tool, on_delete=models.CASCADE)
    attached_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "tool"], name="unique_agent_tool")]


class RunStatus(models.TextChoices):
    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CallbackFields(TracksStatus):
    """Seed 003: where to POST when the run/job ends, and what happened when we did."""

    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.CREATED)
    completed_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    callback_url = models.URLField(max_length=2048, blank=True, default="")
    callback_sent_at = models.DateTimeField(null=True, blank=True, help_text="When the last callback attempt was made.")
    callback_status_code = models.IntegerField(null=True, blank=True, help_text="HTTP status of the last answer.")
    callback_error = models.TextField(null=True, blank=True, help_text="Network error of the last attempt, if any.")
    created_at = models.DateTimeField(auto_now_add=True)

    TERMINAL = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.pk} ({self.status})"  # the id names the kind: run-…, job-…


class Run(CallbackFields):
    id = _id_field("run")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="runs")


class Job(CallbackFields):
    id = _id_field("job")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="jobs")
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs")


class StepStatus(models.TextChoices):
    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Step(TracksStatus):
    id = _id_field("step")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="steps")
    run = models.ForeignKey(Run, on_delete=models.SET_NULL, null=True, blank=True, related_name="steps")
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.PENDING)
    prompt_tokens = models.IntegerField(default=0)
    completion_tokens = models.IntegerField(default=0)
    total_tokens = models.IntegerField(default=0)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    TERMINAL = (StepStatus.SUCCESS, StepStatus.FAILED, StepStatus.CANCELLED)

    @property
    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class Message(PublishesEvents):
    id = _id_field("message")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="messages")
    step = models.ForeignKey(Step, on_delete=models.SET_NULL, null=True, blank=True, related_name="messages")
    role = models.CharField(
        max_length=16, choices=[(r, r) for r in ("user", "assistant", "system", "tool")], default="user"
    )
    content = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)


class ToolExecutionStatus(models.TextChoices):
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"


class ToolExecution(TracksStatus):
    id = _id_field("toolexec")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tool_executions")
    tool = models.ForeignKey(Tool, on_delete=models.CASCADE, related_name="executions")
    step = models.ForeignKey(Step, on_delete=models.SET_NULL, null=True, blank=True, related_name="tool_executions")
    status = models.CharField(max_length=16, choices=ToolExecutionStatus.choices, default=ToolExecutionStatus.RUNNING)
    duration_ms = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    TERMINAL = (ToolExecutionStatus.SUCCESS, ToolExecutionStatus.ERROR)


class ApiKey(models.Model):
    """An organization's key for the REST API (`Authorization: Bearer <key>`).

    Only a SHA-256 hash is stored: the key is shown once, when created. Keys are 32 random
    bytes, so a fast hash is enough (no brute force can walk that space).
    """

    PREFIX = "ahk_"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True, default="")
    key_prefix = models.CharField(max_length=16, editable=False, help_text="First characters, to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.key_prefix}… ({self.name or self.organization})"

    @staticmethod
    def hash(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def issue(cls, organization: Organization, name: str = "") -> tuple["ApiKey", str]:
        """Create a key; return the row and the key itself, which is not stored anywhere."""
        key = cls.PREFIX + secrets.token_urlsafe(32)
        row = cls.objects.create(organization=organization, name=name, key_prefix=key[:10], key_hash=cls.hash(key))
        return row, key
