"""Endpoint: where an organization wants its events POSTed, and which ones."""

import fnmatch
import secrets

from django.db import models

from . import signing

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


def new_endpoint_id() -> str:
    return "ep_" + secrets.token_hex(12)


class EndpointQuerySet(models.QuerySet):
    def subscribed(self, organization_id: str, agent_id: str | None, event_type: str) -> list["Endpoint"]:
        """Active endpoints of the organization that want this event from this agent."""
        scope = models.Q(agent__isnull=True)
        if agent_id:
            scope |= models.Q(agent_id=agent_id)
        candidates = self.filter(scope, organization_id=organization_id, is_active=True).only(
            "id", "event_types", "url"
        )
        return [ep for ep in candidates if ep.wants(event_type)]


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
    secret = models.CharField(max_length=100, default=signing.generate_secret, editable=False)
    headers = models.JSONField(default=dict, blank=True, help_text="Extra HTTP headers sent with every POST.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = EndpointQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["organization", "is_active"])]

    def __str__(self) -> str:
        return self.url

    def custom_headers(self) -> dict[str, str]:
        """The endpoint's extra headers, less any that would replace one of ours (matched
        case-insensitively, as HTTP does)."""
        return {k: v for k, v in (self.headers or {}).items() if k.lower() not in RESERVED_HEADERS}

    def wants(self, event_type: str) -> bool:
        patterns = self.event_types or ()
        return not patterns or any(fnmatch.fnmatchcase(event_type, p) for p in patterns)
