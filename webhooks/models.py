"""Endpoint: where an organization wants its events POSTed, and which ones."""

import datetime
import fnmatch
import functools
import logging
import re
import secrets

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.utils import timezone

from . import catalog, clientcert, content_filter, credentials, crypto, payload_shape, signing

logger = logging.getLogger(__name__)

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


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    """Headers as they may be shown (API, admin, attempt log): a credential's value becomes
    `credentials.MASK`, found by its header's name or, for any other custom header, by its shape
    (`credentials.looks_like_secret`). Ours (RESERVED_HEADERS: ids, timestamps, signatures) are
    derived, not secret, and stay visible. Runs per attempt: two cache lookups a header at most."""
    shown = {}
    for name, value in headers.items():
        by_name = _secret_by_name(name)
        secret = credentials.looks_like_secret(value) if by_name is None else by_name
        shown[name] = credentials.MASK if secret else value
    return shown


@functools.lru_cache(maxsize=4096)
def _secret_by_name(name: str) -> bool | None:
    """True if a header's name suggests a credential, False for our own headers, None when
    its value must decide. Cached: every attempt logs the same few names."""
    lowered = name.lower()
    if lowered in RESERVED_HEADERS:
        return False
    return True if any(w in lowered for w in SENSITIVE_HEADER_WORDS) else None


@functools.lru_cache(maxsize=4096)
def redact_url(url: str) -> str:
    """A URL as it may be shown anywhere but the endpoint's own record: log lines, attempt
    rows, operational events (which go to chat and paging tools). Receivers put their tokens
    in the query (`?token=…`), in the path (Slack's `/services/T…/B…/<secret>`, Discord's,
    Zapier's seven-character hook keys) and even in the host (`<token>.m.pipedream.net`), in
    shapes no rule recognises for sure. So only what tells endpoints apart is shown: the
    scheme, the host and port, and the first path segment; everything after it becomes `/…`,
    the query `?[redacted]`, and the first segment or a host name label that looks like a
    token (`_looks_like_token`) becomes `…` too. Credentials (`user:pass@`) and the fragment
    are dropped. `https://hooks.slack.com/services/T0/B0/XyZ?a=1` shows as
    `https://hooks.slack.com/services/…?[redacted]`. Cached: it runs on every attempt."""
    base, query, _ = url.partition("#")[0].partition("?")
    scheme, sep, rest = base.partition("://")
    if not sep:
        return "…"  # not a URL: nothing in it can be told safe
    netloc, slash, path = rest.partition("/")
    first, more, after = path.partition("/")
    if _looks_like_token(first):
        path = "…"
    elif more:
        path = f"{first}/…" if after else f"{first}/"
    return f"{scheme}://{redacted_host(netloc)}{slash}{path}" + ("?[redacted]" if query else "")


@functools.lru_cache(maxsize=4096)
def redacted_host(url: str) -> str:
    """The host and port of `url` (or of a bare `host:port`) as `redact_url` shows them: how
    log lines name a target."""
    host_port = url.partition("://")[2] or url
    host_port = host_port.partition("/")[0].partition("?")[0].partition("#")[0]
    host_port = host_port.rpartition("@")[2]  # never the credentials
    if host_port.startswith("["):  # an IPv6 literal: no name in it
        return host_port
    host, colon, port = host_port.partition(":")
    labels = host.split(".")
    if all(label.isdigit() for label in labels):  # an IPv4 address (or a number)
        return host_port
    return ".".join("…" if _looks_like_token(label) else label for label in labels) + colon + port


_WORDS = re.compile(r"[a-z]+(?:[-_.][a-z]+)*")


def _looks_like_token(part: str) -> bool:
    """Whether a path segment or host label may be a secret: 16 characters or more that are
    not lowercase words (`-`, `_`, `.` between them), or 6 or more mixing letters and digits
    (Zapier's `abc1de2`, Slack's `T0ABCDEFG`). Stricter than `credentials.looks_like_secret`,
    which judges header values the owner reads: a URL part shown beyond its owner errs on the
    side of hiding (`/v1` and `/hooks` stay; `/webhookb2` goes)."""
    if len(part) >= 16:
        return not _WORDS.fullmatch(part)
    return len(part) >= 6 and any(c.isdigit() for c in part) and any(c.isalpha() for c in part)


MAX_RATE_LIMIT = 100_000  # deliveries per second


def new_endpoint_id() -> str:
    return "ep_" + secrets.token_hex(12)


def new_encrypted_secret() -> str:
    return crypto.encrypt(signing.generate_secret())


class EndpointQuerySet(models.QuerySet):
    def disable(self, reason: str, now: datetime.datetime | None = None) -> list["Endpoint"]:
        """Disable those of these endpoints that are active, recording when and why (the one
        place that does); return them, as disabled. Their rows are locked first (in key order),
        so of two concurrent disables of an endpoint only one returns it: each disable is
        reported once (`endpoint.disabled`, deliveries/operational.py)."""
        now = now or timezone.now()
        changes = {"is_active": False, "disabled_at": now, "disabled_reason": reason, "updated_at": now}
        return self._switch({"is_active": True}, changes)

    def enable(self) -> list["Endpoint"]:
        """Enable those of these endpoints that are disabled, with a clean health record; return
        them, locked and reported as `disable` does. (Their held deliveries: recovery.resume_endpoint.)"""
        changes = {
            "is_active": True, "disabled_at": None, "disabled_reason": "", "failing_since": None,
            "consecutive_failures": 0, "updated_at": timezone.now(),
        }  # fmt: skip
        return self._switch({"is_active": False}, changes)

    def taking_events(self, now: datetime.datetime | None = None) -> "EndpointQuerySet":
        """Those of these endpoints that take new events: all but the run subscriptions that
        ended or expired (fan-out's choice of endpoints, with `is_active`). Deliveries already
        made to those still finish their retries: that is why this is not `is_active`."""
        return self.filter(ended_at__isnull=True).exclude(expires_at__lte=now or timezone.now())

    def _switch(self, where: dict, changes: dict) -> list["Endpoint"]:
        """Apply `changes` to those of these endpoints that match `where`; return them, changed."""
        with transaction.atomic(savepoint=False):
            endpoints = list(self.filter(**where).select_for_update().order_by("pk"))
            if endpoints:
                self.model.objects.filter(pk__in=[e.pk for e in endpoints]).update(**changes)
        for endpoint in endpoints:
            for name, value in changes.items():
                setattr(endpoint, name, value)
        return endpoints


class EndpointKind(models.TextChoices):
    PUSH = "push", "push: POSTed to its URL"
    PULL = "pull", "pull: read from the event feed"


def url_problem(kind: str, url: str) -> str | None:
    """What is wrong with `url` for an endpoint of `kind` (the API and the admin say the same)."""
    if kind == EndpointKind.PUSH and not url:
        return "required for a push endpoint (or choose kind: pull)"
    if kind == EndpointKind.PULL and url:
        return "a pull endpoint has no URL: its events are read from the feed"
    return None


class Ordering(models.TextChoices):
    NONE = "none", "none: deliveries go as soon as they can, concurrently"
    RUN = "run", "run: a run's deliveries go one at a time, in sequence"


class Payload(models.TextChoices):
    FULL = payload_shape.FULL, "full: the whole event envelope"
    THIN = payload_shape.THIN, "thin: the envelope with only ids in data, and a link to the whole event"


class EndpointState(models.TextChoices):
    ACTIVE = "active", "active: takes its events"
    DISABLED = "disabled", "disabled: its deliveries are held until it is enabled"
    ENDED = "ended", "ended: its run's last event was delivered (a run subscription)"
    EXPIRED = "expired", "expired: its time to live passed (a run subscription)"


class Endpoint(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=new_endpoint_id, editable=False)
    # A pull endpoint has no URL and is never POSTed to: its events are read, signed with its
    # secret, from GET /api/v1/events/feed/?endpoint=<id> (`webhooks listen`, deliveries/feed.py).
    kind = models.CharField(max_length=4, choices=EndpointKind.choices, default=EndpointKind.PUSH)
    organization = models.ForeignKey("agents_hooks.Organization", on_delete=models.CASCADE, related_name="endpoints")
    agent = models.ForeignKey(
        "agents_hooks.Agent",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="endpoints",
        help_text="Only this agent's events; empty for every agent of the organization.",
    )
    url = models.URLField(max_length=2048, blank=True, help_text="Where events are POSTed; empty for a pull endpoint.")
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
    # Attempts failed in a row (0 after a success): `endpoint.failing` when it crosses
    # WEBHOOK_FAILING_AFTER_FAILURES (webhooks/health.py).
    consecutive_failures = models.PositiveIntegerField(default=0)
    # Secrets are stored encrypted (webhooks/crypto.py); use `.secret` to read or set one.
    secret_encrypted = models.TextField(default=new_encrypted_secret, editable=False)
    previous_secret_encrypted = models.TextField(blank=True, default="", editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Mutual TLS: a client certificate and key presented to the receiver, encrypted like the
    # secret and never shown again; set them with `set_client_certificate`. Subject and expiry
    # are kept in the clear to be shown.
    client_cert_encrypted = models.TextField(blank=True, default="", editable=False)
    client_key_encrypted = models.TextField(blank=True, default="", editable=False)
    client_cert_subject = models.CharField(max_length=500, blank=True, default="", editable=False)
    client_cert_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
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
    # A content filter over the envelope (webhooks/content_filter.py: its grammar and bounds),
    # checked by the API and the admin before it is stored; null: every event its types take.
    filter = models.JSONField(
        null=True,
        blank=True,
        help_text='Only events whose envelope passes, e.g. {"path": "data.status", "in": ["failed"]}; '
        "empty for every event its types take.",
    )
    # deliveries/ordering.py: with "run", the deliveries of one run's events go strictly in
    # sequence, each after the one before it finished; different runs stay concurrent.
    ordering = models.CharField(
        max_length=4,
        choices=Ordering.choices,
        default=Ordering.NONE,
        help_text='"run": the events of one run are delivered one at a time, in their order.',
    )
    # webhooks/payload_shape.py: what of each event is sent (and signed), checked by the API
    # and the admin before it is stored. The event itself is always recorded whole.
    payload = models.CharField(
        max_length=4,
        choices=Payload.choices,
        default=Payload.FULL,
        help_text='"thin": only the ids in data, and links.event to fetch the whole event with an API key.',
    )
    exclude_fields = models.JSONField(
        default=list,
        blank=True,
        help_text='Dotted paths inside data never sent, e.g. ["content", "usage.total_tokens"]; empty: none.',
    )
    # A run subscription (webhooks/run_subscriptions.py, POST /api/v1/runs/<id>/subscriptions/):
    # an endpoint that takes only its run's events, and no new one once the run's last event was
    # delivered to it (`ended_at`) or after `expires_at`. Null `run`: an ordinary endpoint.
    run = models.ForeignKey(
        "agents_hooks.Run",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="subscriptions",
        help_text="A run subscription's run: only its events are sent; empty for an ordinary endpoint.",
    )
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="A run subscription takes no new event after this (its TTL)."
    )
    ended_at = models.DateTimeField(
        null=True, blank=True, help_text="When the run's last event was delivered to this run subscription."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["organization", "is_active"])]

    def __str__(self) -> str:
        return self.url or f"pull endpoint {self.pk}"

    @property
    def state(self) -> str:
        """An `EndpointState`. A run subscription that ended or expired says so even when it was
        also disabled: it will take no new event either way."""
        if self.ended_at is not None:
            return EndpointState.ENDED
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return EndpointState.EXPIRED
        return EndpointState.ACTIVE if self.is_active else EndpointState.DISABLED

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

    @property
    def has_client_certificate(self) -> bool:
        return bool(self.client_cert_encrypted)

    @property
    def client_certificate(self) -> tuple[str, str] | None:
        """(certificate PEM, key PEM) to present for mutual TLS, or None."""
        if not self.client_cert_encrypted:
            return None
        return crypto.decrypt(self.client_cert_encrypted), crypto.decrypt(self.client_key_encrypted)

    def set_client_certificate(self, cert_pem: str, key_pem: str) -> None:
        """Check (clientcert.parse: raises ClientCertificateError naming the field) and keep
        a client certificate and key, encrypted; the caller saves."""
        parsed = clientcert.parse(cert_pem, key_pem)
        self.client_cert_encrypted = crypto.encrypt(parsed.cert_pem)
        self.client_key_encrypted = crypto.encrypt(parsed.key_pem)
        self.client_cert_subject, self.client_cert_expires_at = parsed.subject, parsed.expires_at

    def remove_client_certificate(self) -> None:
        self.client_cert_encrypted = self.client_key_encrypted = self.client_cert_subject = ""
        self.client_cert_expires_at = None

    def custom_headers(self) -> dict[str, str]:
        """The endpoint's extra headers, less any that would replace one of ours (matched
        case-insensitively, as HTTP does)."""
        return {k: v for k, v in (self.headers or {}).items() if k.lower() not in RESERVED_HEADERS}

    def receives(
        self,
        event_type: str,
        agent_id: str | None,
        envelope: content_filter.Envelope | None = None,
        run_id: str | None = None,
    ) -> bool:
        """Whether this endpoint's scope and filter take an event of this type from this agent
        (and, given the event's `envelope`, whether that passes its content filter).

        An empty filter takes every agent event but no operational one (`endpoint.*`,
        `delivery.dead`): those are for the people running the service, and go only where a
        pattern names them ("endpoint.*", "delivery.dead", "*"), as Svix does. They concern
        the organization, not an agent: an endpoint scoped to one agent never gets them.

        Without `envelope` the content filter is not consulted: a search by event type, or an
        oversize event whose data is gone (fan-out then records a failed delivery, never nothing).

        A run subscription (`run_id` set) takes only events of its run (`run_id`: the event's;
        None, outside runs), and always its run's last one (catalog.RUN_ENDED), whatever its
        types and filter say: that delivery tells the receiver the run is over, and ends the
        subscription (webhooks/run_subscriptions.py) when the run does rather than at its TTL."""
        if self.run_id is not None:
            if run_id != self.run_id:
                return False
            if event_type == catalog.RUN_ENDED:
                return True
        if self.agent_id is not None and self.agent_id != agent_id:
            return False
        patterns = self.event_types or ()
        if not patterns:
            taken = event_type not in catalog.OPERATIONAL_EVENT_TYPES
        else:
            taken = any(fnmatch.fnmatchcase(event_type, p) for p in patterns)
        if not taken or envelope is None or self.filter is None:
            return taken
        return self.compiled_filter(envelope.value)

    @functools.cached_property
    def compiled_filter(self) -> content_filter.Test:
        """`filter` compiled (once per instance: fan-out loads its endpoints once per batch).

        A filter the API would refuse can only come from code or SQL around it: it is ignored,
        with an ERROR in the log, so its events are delivered rather than lost."""
        if self.filter is None:
            return lambda envelope: True
        try:
            return content_filter.compile_filter(content_filter.check(self.filter))
        except Exception as exc:  # a filter that cannot compile must never stop fan-out for everyone
            logger.error("endpoint %s: invalid content filter ignored (%s): fix it through the API", self.pk, exc)
            return lambda envelope: True


class EventType(models.Model):
    """An event type an organization registered to publish itself (`POST /api/v1/events/`),
    beside the built-in catalog (webhooks/catalog.py). Its rules (the name, the schema) are
    `webhooks.event_types`'s; endpoints subscribe to it like to any type."""

    organization = models.ForeignKey(
        "agents_hooks.Organization", on_delete=models.CASCADE, related_name="event_types", db_index=False
    )
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=500)
    # A JSON Schema (Draft 2020-12) each published event's `data` must satisfy; null: any object.
    schema = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="event_type_name_per_org")]

    def __str__(self) -> str:
        return self.name
