"""REST API for the delivery log: events, deliveries with their attempts, manual retry, and the
service-wide statistics (staff only)."""

import datetime

import django_filters
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import filters, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_hooks.auth import OrganizationScoped
from webhooks_project.schema import ERROR_BODY

from . import recovery, stats
from . import serializers as s
from .models import Delivery, DeliveryKind, DeliveryStatus, Event


class UTCIsoDateTimeField(IsoDateTimeField):
    """ISO 8601, in UTC: Python accepts offsets up to ±23:59, PostgreSQL only up to ±15:59 (a 500),
    and a time that UTC cannot hold (year 1 minus an offset) is invalid."""

    def to_python(self, value):
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(datetime.UTC)
        except OverflowError:
            raise ValidationError(self.error_messages["invalid"], code="invalid") from None


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


class EventFilter(django_filters.FilterSet):
    event_type = django_filters.CharFilter(field_name="type")
    agent = django_filters.CharFilter(field_name="agent_id")
    created_after = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

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
    created_after = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Delivery
        fields = ["webhook", "status", "kind", "event", "event_type", "agent", "created_after", "created_before"]


class EventViewSet(OrganizationScoped, viewsets.ReadOnlyModelViewSet):
    queryset = Event.objects.order_by("-created_at")
    serializer_class = s.EventSerializer
    filterset_class = EventFilter
    filter_backends = [django_filters.rest_framework.DjangoFilterBackend, filters.OrderingFilter]
    ordering_fields = ["created_at"]


class DeliveryViewSet(OrganizationScoped, viewsets.ReadOnlyModelViewSet):
    # STEP_COMPLETE_WEBHOOK deliveries go to the operator's URL, not the organization's: the
    # admin shows them, the organization's API does not.
    queryset = (
        Delivery.objects.exclude(kind=DeliveryKind.STEP_COMPLETE)
        .select_related("event", "endpoint")
        .order_by("-created_at", "-pk")
    )
    serializer_class = s.DeliverySerializer
    organization_field = "event__organization"
    filterset_class = DeliveryFilter
    filter_backends = [django_filters.rest_framework.DjangoFilterBackend, filters.OrderingFilter]
    ordering_fields = ["created_at", "last_attempt_at", "attempt_count"]

    def get_serializer_class(self):
        return s.DeliveryDetailSerializer if self.action in ("retrieve", "retry") else s.DeliverySerializer

    @extend_schema(
        request=s.RetrySerializer,
        responses={
            202: s.DeliveryDetailSerializer,
            409: OpenApiResponse(
                ERROR_BODY,
                description="An attempt is being made right now, the endpoint is disabled (held), "
                "it succeeded and `force` was not given, or its event is too large to send.",
            ),
        },
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Send the delivery now. Waiting for a retry: its next attempt is made now. Failed or dead: a
        fresh series of attempts starts now. Succeeded: sent again only with `{"force": true}`."""
        delivery = self.get_object()
        body = s.RetrySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            delivery = recovery.retry_delivery(delivery, force=body.validated_data["force"])
        except recovery.NotRetryable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(s.DeliveryDetailSerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


class IsStaffUser(permissions.IsAdminUser):
    message = (
        "Service-wide statistics are for staff users (log in to the admin). An API key sees its own "
        "endpoints' at /api/v1/webhooks/<id>/stats/."
    )


class StatsView(APIView):
    permission_classes = [IsStaffUser]

    @extend_schema(parameters=[s.ServiceStatsQuerySerializer], responses={200: s.StatsSerializer})
    def get(self, request):
        """Volume, success rate, attempt duration, event-to-success latency, outcome classes and
        retries of the whole service (or one `organization`) over `window`, with a time series.
        Staff users only: API keys are refused (403)."""
        query = s.ServiceStatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        window, organization = query.validated_data["window"], query.validated_data.get("organization")
        return Response(s.StatsSerializer(stats.window_stats(window, organization=organization)).data)
