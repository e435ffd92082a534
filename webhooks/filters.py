"""Query filters of the endpoint list (`GET /api/v1/webhooks/?is_active=false&event_type=…`);
`?search=` looks in the URL and the description (the view's `search_fields`)."""

import django_filters
from rest_framework.exceptions import ValidationError

from agents_hooks.auth import organization_of
from agents_hooks.models import Agent
from webhooks_project.filters import OrganizationObjectFilter, StrictBooleanFilter, created_after, created_before

from . import catalog, event_types
from .models import Endpoint


class EndpointFilter(django_filters.FilterSet):
    is_active = StrictBooleanFilter(
        help_text="true: enabled endpoints; false: disabled ones (by hand or automatically)."
    )
    event_type = django_filters.CharFilter(
        method="receiving",
        help_text="Endpoints that receive this event type (built in, or registered by your organization): their "
        "`event_types` name it or a pattern matching it (or are empty, for an agent event).",
    )
    agent = OrganizationObjectFilter(Agent, help_text="Endpoints scoped to this agent (not those for every agent).")
    created_after = created_after()
    created_before = created_before()

    class Meta:
        model = Endpoint
        fields = ["is_active", "event_type", "agent", "created_after", "created_before"]

    def receiving(self, queryset, name, value):
        """Matched in Python by `Endpoint.receives` (wildcards in a JSON list are not SQL): an
        organization has tens of endpoints, not millions. Operational events concern no agent."""
        if value not in catalog.EVENT_TYPES and value not in event_types.subscribable_names(
            organization_of(self.request)
        ):
            message = f"unknown event type {value[:100]!r}: GET /api/v1/event-types/ lists them"
            raise ValidationError({"event_type": [message]})
        agent_of = (lambda endpoint: None) if value in catalog.OPERATIONAL_EVENT_TYPES else (lambda e: e.agent_id)
        candidates = queryset.only("pk", "agent_id", "run_id", "event_types")  # a run subscription: in its run
        return queryset.filter(pk__in=[e.pk for e in candidates if e.receives(value, agent_of(e), run_id=e.run_id)])
