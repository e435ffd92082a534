"""Endpoint: where an organization wants its events POSTed, and which ones."""

import datetime
import fnmatch
import functools
import secrets

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from . import crypto, signing

# Headers the service sets on every POST; an endpoint's custom headers may not replace them.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "user-agent",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-letta-event-type",
        "x-letta-event-id",
        "x-letta-timestamp",
        "x-letta-signature",
    }
)


# Header names that suggest a credential: their values are never shown or logged.
SENSITIVE_HEADER_WORDS = ("authorization", "cookie", "token", "secret", "key", "password", "auth", "credential")
SIGNATURE_HEADERS = frozenset({"webhook-signature", "x-letta-signature"})  # derived, not secret


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    """Headers as they may be shown (API, admin, attempt log): credential-like values hidden."""
    return {name: "[redacted]" if _is_secret(name) else value for name, value in headers.items()}


@functools.lru_cache(maxsize=4096)
def _is_secret(name: str) -> bool:
    """Whether a header's name suggests a credential (cached: every attempt logs the same few
    names, and this ran per header per attempt)."""
    lowered = name.lower()
    return lowered not in SIGNATURE_HEADERS and any(w in lowered for w in SENSITIVE_HEADER_WORDS)


MAX_RATE_LIMIT = 100_000  # deliveries per second


def new_endpoint_id() -> str:
    return "ep_" + secrets.token_hex(12)


def new_encrypted_secret() -> str:
    return crypto.encrypt(signing.generate_secret())


class EndpointQuerySet(models.QuerySet):
    def disable(self, reason: str, now: datetime.datetime | None = None) -> int:
        """Disable these endpoints, recording when and why (the one place that does)."""
        now = now or timezone.now()
        return self.update(is_active=False, disabled_at=now, disabled_reason=reason, updated_at=now)

    def enable(self) -> int:
        """Enable these endpoints with a clean health record (deliveries: recovery.resume_endpoint)."""
        return self.update(is_active=True, disabled_at=None, disabled_reason="", failing_since=None)


class Endpoint(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=new_endpoint_id, editable=False)
    organization = models.ForeignKey("agents_hooks.Organization", on_delete=models.CASCADE, related_name="endpoints")
    agent = models.ForeignKey(
        "agents_hooks.Agent",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="endpoints",
        help_text="Only this agent's events; empty for every agent of the organization.",
    )
    url = models.URLField(max_length=2048)
    description = models.CharField(max_length=500, blank=True, default="")
    event_types = models.JSONField(
        default=list,
        blank=True,
        help_text='Event types to send, "agent.step.*" style wildcards allowed; empty for all.',
    )
    is_active = models.BooleanField(default=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=500, blank=True, default="")
    # Start of the current run of failed attempts (None after a success): auto-disable clock.
    failing_since = models.DateTimeField(null=True, blank=True)
    # Secrets are stored encrypted (webhooks/crypto.py); use `.secret` to read or set one.
    secret_encrypted = models.TextField(default=new_encrypted_secret, editable=False)
    previous_secret_encrypted = models.TextField(blank=True, default="", editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    headers = models.JSONField(default=dict, blank=True, help_text="Extra HTTP headers sent with every POST.")
    retry_schedule = models.JSONField(
        null=True,
        blank=True,
        help_text="Seconds to wait before each retry, e.g. [5, 300, 1800]; empty for the default schedule.",
    )
    rate_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_RATE_LIMIT)],
        help_text="At most this many deliveries per second (the rest wait their turn); empty for no limit.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["organization", "is_active"])]

    def __str__(self) -> str:
        return self.url

    @property
    def secret(self) -> str:
        return crypto.decrypt(self.secret_encrypted)

    @secret.setter
    def secret(self, value: str) -> None:
        signing.secret_key(value)  # refuse anything that is not whsec_ + base64
        self.secret_encrypted = crypto.encrypt(value)

    def signing_keys(self, now: datetime.datetime | None = None) -> list[bytes]:
        """HMAC keys to sign with: the current secret's, then a rotated-out one's during its grace."""
        keys = [signing.secret_key(self.secret)]
        if self.previous_secret_encrypted and self.previous_secret_expires_at > (now or timezone.now()):
            keys.append(signing.secret_key(crypto.decrypt(self.previous_secret_encrypted)))
        return keys

    def rotate_secret(self, grace: datetime.timedelta | None = None) -> str:
        """Give the endpoint a new secret, keep the old one signing for `grace`; return the new one."""
        if grace is None:
            grace = datetime.timedelta(hours=settings.WEBHOOK_SECRET_ROTATION_GRACE_HOURS)
        new = signing.generate_secret()
        self.previous_secret_encrypted = self.secret_encrypted
        self.previous_secret_expires_at = timezone.now() + grace
        self.secret = new
        self.save(
            update_fields=["secret_encrypted", "previous_secret_encrypted", "previous_secret_expires_at", "updated_at"]
        )
        return new

    def custom_headers(self) -> dict[str, str]:
        """The endpoint's extra headers, less any that would replace one of ours (matched
        case-insensitively, as HTTP does)."""
        return {k: v for k, v in (self.headers or {}).items() if k.lower() not in RESERVED_HEADERS}

    def receives(self, event_type: str, agent_id: str | None) -> bool:
        """Whether this endpoint's scope and filter take an event of this type from this agent."""
        if self.agent_id is not None and self.agent_id != agent_id:
            return False
        patterns = self.event_types or ()
        return not patterns or any(fnmatch.fnmatchcase(event_type, p) for p in patterns)
