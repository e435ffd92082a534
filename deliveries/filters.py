"""Filters of the delivery log, one definition for every surface: the API's query parameters
(`?status=dead&created_after=…`) and the CLI's options (`--status dead --since 2h`) are read
by the same FilterSets."""

import django_filters

from webhooks_project.filters import created_after, created_before

from .models import Delivery, DeliveryKind, DeliveryStatus, Event


class EventFilter(django_filters.FilterSet):
    event_type = django_filters.CharFilter(field_name="type")
    agent = django_filters.CharFilter(field_name="agent_id")
    created_after = created_after()
    created_before = created_before()

    class Meta:
        model = Event
        fields = ["event_type", "agent", "created_after", "created_before"]


class DeliveryFilter(django_filters.FilterSet):
    webhook = django_filters.CharFilter(field_name="endpoint_id")
    status = django_filters.ChoiceFilter(choices=DeliveryStatus.choices)
    kind = django_filters.ChoiceFilter(choices=DeliveryKind.choices)
    event = django_filters.CharFilter(field_name="event_id")
    event_type = django_filters.CharFilter(field_name="event__type")
    agent = django_filters.CharFilter(field_name="event__agent_id")
    created_after = created_after()
    created_before = created_before()

    class Meta:
        model = Delivery
        fields = ["webhook", "status", "kind", "event", "event_type", "agent", "created_after", "created_before"]
