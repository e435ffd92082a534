"""REST API for the delivery log: events, deliveries with their attempts, manual retry, and the
service-wide statistics and an organization's erasure (staff only)."""

import django_filters
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import filters, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_hooks.auth import OrganizationScoped, requester
from agents_hooks.models import Organization
from webhooks_project.schema import ERROR_BODY

from . import feed, publishing, recovery, retention, stats
from . import serializers as s
from .filters import DeliveryFilter, EventFilter
from .models import Delivery, DeliveryKind, Event, PayloadRemoval

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="Any unique string of yours (1-255 printable ASCII characters), e.g. a UUID: a retried publish "
    "with the same key and body answers the first event (200) instead of publishing it again, for 24 hours.",
)


class EventViewSet(OrganizationScoped, viewsets.ReadOnlyModelViewSet):
    queryset = Event.objects.order_by("-created_at")
    serializer_class = s.EventSerializer
    filterset_class = EventFilter
    filter_backends = [django_filters.rest_framework.DjangoFilterBackend, filters.OrderingFilter]
    ordering_fields = ["created_at"]

    @extend_schema(
        request=s.PublishSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            201: OpenApiResponse(s.EventSerializer, description="Published: delivered to every subscribed endpoint."),
            200: OpenApiResponse(
                s.EventSerializer,
                description="A retry (same Idempotency-Key, same body, within 24 hours): the event published by the "
                "first request, not published again.",
            ),
            409: OpenApiResponse(ERROR_BODY, description="The Idempotency-Key was used with another body."),
            413: OpenApiResponse(
                ERROR_BODY,
                description="The request body is over API_MAX_BODY_BYTES, or the event would be over "
                "WEBHOOK_MAX_PAYLOAD_BYTES: nothing was published.",
            ),
            503: OpenApiResponse(ERROR_BODY, description="The event could not be recorded; nothing was published."),
        },
    )
    def create(self, request, *args, **kwargs):
        """Publish an event of a type your organization registered (POST /api/v1/event-types/): it is
        signed and delivered to every endpoint subscribed to it, like the platform's own events.
        `data` must be a JSON object satisfying the type's schema (a 400 names each failing path in
        it, `$.amount: ...`). With an `Idempotency-Key` header, a retry with the same key and body
        within 24 hours answers 200 with the event of the first request instead of publishing again,
        and the key with another body is a 409."""
        key = request.headers.get("Idempotency-Key")
        try:
            key = None if key is None else publishing.check_key(key)
        except ValueError as exc:
            raise ValidationError({"Idempotency-Key": [str(exc)]}) from exc
        fingerprint = publishing.fingerprint(request.data)
        try:
            published = publishing.replay(self.organization, key, fingerprint) if key else None
            if published is None:
                body = s.PublishSerializer(data=request.data, context=self.get_serializer_context())
                body.is_valid(raise_exception=True)
                fields = body.validated_data
                published = publishing.publish_event(
                    self.organization, fields["event_type"].name, data=fields["data"], agent=fields.get("agent"),
                    idempotency_key=key, body_fingerprint=fingerprint,
                )  # fmt: skip
        except publishing.KeyReused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        except publishing.TooLarge as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        except publishing.NotRecorded as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        answer = status.HTTP_200_OK if published.replayed else status.HTTP_201_CREATED
        return Response(s.EventSerializer(published.event).data, status=answer)

    @extend_schema(
        parameters=[s.FeedQuerySerializer],
        responses={200: s.FeedSerializer, 400: OpenApiResponse(ERROR_BODY, description="A parameter is wrong.")},
    )
    @action(detail=False, methods=["get"], filter_backends=[], pagination_class=None)
    def feed(self, request):
        """The pull feed: your organization's events in the order they were committed, for receivers
        that cannot take a POST. Pass each answer's `next` back as `after`; with `wait`, an answer
        comes as soon as there is an event (a long poll). With `endpoint` (a pull endpoint), only the
        events it subscribes to, each with the signed headers of a POST to it: what `listen` forwards."""
        query = s.FeedQuerySerializer(data=request.query_params, context=self.get_serializer_context())
        query.is_valid(raise_exception=True)
        options = query.validated_data
        try:
            page = feed.read(
                self.organization.pk, after=options.get("after"), limit=options["limit"], wait=options["wait"],
                endpoint=options.get("endpoint"),
            )  # fmt: skip
        except feed.BadCursor as exc:
            raise ValidationError({"after": [str(exc)]}) from exc
        return Response(feed.as_json(page))


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
                "it succeeded and `force` was not given, its event is too large to send, or its event's payload "
                "expired or was erased.",
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


class IsStaffToErase(permissions.IsAdminUser):
    message = (
        "Erasing an organization's payloads is for staff users (log in to the admin). An API key erases an "
        "agent's: POST /api/v1/agents/<id>/erase/."
    )


ERASURE_GOES_ON = OpenApiResponse(
    s.PayloadRemovalSerializer,
    description="Not finished within the request (10 s): a worker goes on (`state: running`). Follow it at "
    "`GET /api/v1/payload-removals/<id>/` until `state` is `finished`.",
)


def erase(request, **scope) -> Response:
    """An erasure asked for over the API (`agent=` or `organization=`), its body checked:
    10 s of it in the request, then 200 with its record if it is done, or 202 with it while a
    worker goes on."""
    body = s.EraseRequestSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    record = retention.erase(
        requested_by=requester(request),
        reason=body.validated_data["reason"],
        seconds=retention.IN_REQUEST_SECONDS,
        **scope,
    )
    done = record.finished_at is not None
    return Response(s.PayloadRemovalSerializer(record).data, status=status.HTTP_200_OK if done else 202)


class PayloadRemovalViewSet(OrganizationScoped, viewsets.ReadOnlyModelViewSet):
    """The record of your organization's payload erasures (and of retention passes for its own,
    shorter period), newest first: who asked, when, why, and how much; `state: running` while a
    worker goes on with an erasure too large for one request."""

    queryset = PayloadRemoval.objects.order_by("-requested_at", "-pk")
    serializer_class = s.PayloadRemovalSerializer

    def get_queryset(self):
        return PayloadRemoval.objects.filter(organization_id=self.organization.pk).order_by("-requested_at", "-pk")


class OrganizationEraseView(APIView):
    permission_classes = [IsStaffToErase]

    @extend_schema(
        request=s.EraseRequestSerializer,
        responses={
            200: s.PayloadRemovalSerializer,
            202: ERASURE_GOES_ON,
            403: OpenApiResponse(ERROR_BODY, description="Not a staff user (API keys are refused)."),
            404: OpenApiResponse(ERROR_BODY, description="No such organization."),
        },
    )
    def post(self, request, pk: str):
        """Erase the payloads of every event of an organization now (staff users only): as an
        agent's erase, for all of its agents and its organization-level events."""
        if "\x00" in pk:  # PostgreSQL text cannot hold NUL: no organization has this id
            raise Http404
        return erase(request, organization=get_object_or_404(Organization, pk=pk))
