"""REST API for endpoints ("webhooks"): CRUD, secret rotation, test-send, recovery, statistics,
and the event type catalog."""

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_hooks.auth import HasOrganization, OrganizationScoped, organization_of
from deliveries import recovery, selectors
from deliveries.events import EndpointDisabled, send_test
from deliveries.models import Event
from deliveries.serializers import (
    AttemptSerializer,
    DeliverySerializer,
    StatsQuerySerializer,
    StatsSerializer,
    TestSendSerializer,
)
from deliveries.stats import window_stats
from webhooks_project.filters import SearchFilter
from webhooks_project.schema import ERROR_BODY

from . import catalog, content_filter, event_types
from . import serializers as s
from .filters import EndpointFilter
from .models import Endpoint, EventType


class EndpointViewSet(OrganizationScoped, viewsets.ModelViewSet):
    queryset = Endpoint.objects.order_by("created_at")
    serializer_class = s.EndpointSerializer
    filterset_class = EndpointFilter
    filter_backends = [DjangoFilterBackend, SearchFilter]
    search_fields = ["url", "description"]

    def perform_create(self, serializer):
        serializer.save(organization=self.organization)

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        self.perform_create(serializer)
        return Response(s.EndpointWithSecretSerializer(serializer.instance).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: s.RotatedSecretSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, pk=None):
        """New secret now; the old one keeps signing (a second `webhook-signature`) for the grace period."""
        endpoint = self.get_object()
        secret = endpoint.rotate_secret()
        return Response({"secret": secret, "previous_secret_expires_at": endpoint.previous_secret_expires_at})

    @extend_schema(
        request=None,
        parameters=[OpenApiParameter("wait", OpenApiTypes.FLOAT, description="Seconds (0-30) to wait for the attempt")],
        responses={202: TestSendSerializer},
    )
    @action(detail=True, methods=["post"])
    def test(self, request, pk=None):
        """Send a `webhook.test` event through the normal pipeline; `?wait=` waits for its first attempt."""
        endpoint = self.get_object()
        try:
            wait = serializers.FloatField(min_value=0, max_value=30).run_validation(request.query_params.get("wait", 0))
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"wait": exc.detail}) from exc
        try:
            delivery = send_test(endpoint)
        except EndpointDisabled as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        if delivery is None:  # a pull endpoint: nothing is POSTed
            detail = f"a pull endpoint: the test event is in its feed, GET /api/v1/events/feed/?endpoint={endpoint.pk}"
            return Response({"delivery": None, "attempt": None, "detail": detail}, status=status.HTTP_202_ACCEPTED)
        attempt = selectors.wait_for_first_attempt(delivery, wait) if wait else None
        delivery.refresh_from_db()
        return Response(
            {
                "delivery": DeliverySerializer(delivery).data,
                "attempt": AttemptSerializer(attempt).data if attempt else None,
            },
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(
        request=s.TestFilterSerializer,
        responses={200: s.FilterVerdictSerializer},
        examples=[
            OpenApiExample(
                "A sample envelope",
                request_only=True,
                value={"event": {"event_type": "agent.step.completed", "data": {"status": "success"}}},
            ),
            OpenApiExample(
                "Only the data, and a filter to try",
                request_only=True,
                value={
                    "event": {"status": "failed", "usage": {"total_tokens": 12000}},
                    "filter": {
                        "and": [
                            {"path": "data.status", "eq": "failed"},
                            {"path": "data.usage.total_tokens", "gt": 10000},
                        ]
                    },
                },
            ),
            OpenApiExample("A past event", request_only=True, value={"event_id": "evt_01J…"}),
            OpenApiExample(
                "Not matching",
                response_only=True,
                value={
                    "matches": False,
                    "failed": "and[0].in",
                    "reason": "data.status is 'success': wanted one of ['failed', 'cancelled']",
                    "filter": {"and": [{"path": "data.status", "in": ["failed", "cancelled"]}]},
                    "subscribed": True,
                    "envelope": {"event_type": "agent.step.completed", "data": {"status": "success"}},
                },
            ),
        ],
    )
    @action(detail=True, methods=["post"], url_path="test-filter")
    def test_filter(self, request, pk=None):
        """Whether a sample event passes this endpoint's content filter (or `filter`, tried without
        saving), and if not, which part failed and why. Nothing is sent. The sample is `event` (an
        envelope, or only its `data`) or `event_id` (one of your events)."""
        endpoint = self.get_object()
        body = s.TestFilterSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        given = body.validated_data
        envelope = _sample_envelope(endpoint, given)
        value = given["filter"] if "filter" in given else endpoint.filter
        if "filter" not in given:
            try:  # only code or SQL around the API can store a bad one
                content_filter.check(value)
            except content_filter.FilterError as exc:
                raise serializers.ValidationError(
                    {"filter": [f"the endpoint's filter is invalid (fan-out ignores it): {exc}"]}
                ) from exc
        verdict = content_filter.explain(value, envelope) if value else content_filter.Verdict(True)
        event_type = envelope.get("event_type")
        agent_id = envelope.get("agent_id")
        subscribed = endpoint.receives(event_type, agent_id) if isinstance(event_type, str) else None
        return Response(
            {
                "matches": verdict.matches,
                "failed": verdict.failed,
                "reason": verdict.reason,
                "filter": value,
                "subscribed": subscribed,
                "envelope": envelope,
            }  # fmt: skip
        )

    @extend_schema(request=s.RecoverSerializer, responses={202: s.RecoveredSerializer})
    @action(detail=True, methods=["post"])
    def recover(self, request, pk=None):
        """Retry every failed or dead delivery of this endpoint created since `since`."""
        endpoint = self.get_object()
        body = s.RecoverSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        count = recovery.recover_endpoint(endpoint, body.validated_data["since"])
        return Response({"recovered": count}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: s.RetriedSerializer})
    @action(detail=True, methods=["post"], url_path="retry-pending")
    def retry_pending(self, request, pk=None):
        """Send now every delivery of this endpoint that waits for a retry (after fixing the receiver)."""
        endpoint = self.get_object()
        if not endpoint.is_active:
            return Response(
                {"detail": "the endpoint is disabled: enabling it sends its held deliveries"},
                status=status.HTTP_409_CONFLICT,
            )
        return Response({"retried": recovery.retry_pending(endpoint)}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(parameters=[StatsQuerySerializer], responses={200: StatsSerializer})
    @action(detail=True, methods=["get"])
    def stats(self, request, pk=None):
        """Volume, success rate, attempt duration, event-to-success latency, outcome classes and
        retries of this endpoint over `window`, with a time series for charts."""
        endpoint = self.get_object()
        query = StatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(StatsSerializer(window_stats(query.validated_data["window"], endpoint=endpoint)).data)


class EventTypesView(APIView):
    permission_classes = [HasOrganization]

    @extend_schema(responses={200: s.EventTypeSerializer(many=True)})
    def get(self, request):
        """Every event type an endpoint can subscribe to: the built-in ones (`built_in: true`), each
        with an example of its `data`, then those your organization registered, with their schema."""
        return Response(s.EventTypeSerializer(event_types.listing(organization_of(request)), many=True).data)

    @extend_schema(request=s.EventTypeWriteSerializer, responses={201: s.EventTypeSerializer})
    def post(self, request):
        """Register an event type for your organization, to publish with POST /api/v1/events/ and
        for endpoints to subscribe to. `name`: lower-case dotted segments (`billing.invoice.paid`),
        not a built-in name nor under `agent.`, `tool.`, `webhook.`, `endpoint.` or `delivery.`.
        `schema` (optional): a JSON Schema, Draft 2020-12, that every published event's `data` must
        satisfy; an invalid one is a 400 saying what is wrong."""
        body = s.EventTypeWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        created = _or_400(event_types.register, organization_of(request), **body.validated_data)
        return Response(s.EventTypeSerializer(event_types.shown(created)).data, status=status.HTTP_201_CREATED)


BUILT_IN_IS_FIXED = OpenApiResponse(ERROR_BODY, description="A built-in event type: it cannot be changed or deleted.")


@extend_schema(parameters=[OpenApiParameter("name", str, OpenApiParameter.PATH, description="The event type's name.")])
class EventTypeView(APIView):
    """One event type by name: built-in ones can be read; registered ones read, changed, deleted."""

    permission_classes = [HasOrganization]
    http_method_names = ["get", "patch", "delete", "head", "options"]

    @extend_schema(responses={200: s.EventTypeSerializer})
    def get(self, request, name):
        """One event type, built-in or registered by your organization, by name."""
        if name in catalog.EVENT_TYPES:
            return Response(s.EventTypeSerializer(event_types.shown_built_in(name)).data)
        return Response(s.EventTypeSerializer(event_types.shown(self._registered(request, name))).data)

    @extend_schema(
        request=s.EventTypeWriteSerializer(partial=True),
        responses={200: s.EventTypeSerializer, 405: BUILT_IN_IS_FIXED},
    )
    def patch(self, request, name):
        """Change a registered type's `description` or `schema` (null: none); its name cannot change.
        A new schema applies to events published from then on."""
        if name in catalog.EVENT_TYPES:
            return self._built_in_is_fixed(name)
        event_type = self._registered(request, name)
        body = s.EventTypeWriteSerializer(event_type, data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        changed = _or_400(event_types.change, event_type, **body.validated_data)
        return Response(s.EventTypeSerializer(event_types.shown(changed)).data)

    @extend_schema(responses={204: None, 405: BUILT_IN_IS_FIXED})
    def delete(self, request, name):
        """Delete a registered type: it can no longer be published. Events already published are
        still delivered; endpoints keep their subscription (registering it again resumes it)."""
        if name in catalog.EVENT_TYPES:
            return self._built_in_is_fixed(name)
        event_types.remove(self._registered(request, name))
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _registered(self, request, name: str) -> EventType:
        found = event_types.find(organization_of(request), name)
        if found is None:
            raise NotFound(f"no event type {name!r}: see GET /api/v1/event-types/ for the list")
        return found

    def _built_in_is_fixed(self, name: str) -> Response:
        self.headers["Allow"] = "GET, HEAD, OPTIONS"  # what this one allows (finalize_response sets it)
        detail = f"{name} is a built-in event type: it cannot be changed or deleted (only types you registered can)"
        return Response({"detail": detail}, status=status.HTTP_405_METHOD_NOT_ALLOWED)


def _sample_envelope(endpoint: Endpoint, given: dict) -> dict:
    """The envelope test-filter evaluates: the sample (an envelope, or only its data), or a
    stored event's body; an oversize event's is refused (filters do not apply to it)."""
    if "event" in given:
        sample = given["event"]
        return sample if "event_type" in sample or "data" in sample else {"data": sample}
    event = Event.objects.filter(pk=given["event_id"], organization_id=endpoint.organization_id).first()
    if event is None:
        raise serializers.ValidationError({"event_id": [f"no event {given['event_id']!r} in your organization"]})
    if event.oversize_bytes is not None:
        raise serializers.ValidationError(
            {"event_id": ["too large to keep its data: content filters do not apply to it (its deliveries failed, "
                          "saying why); give a sample event instead"]}
        )  # fmt: skip
    return content_filter.Envelope(event.body).value


def _or_400(service, *args, **kwargs):
    """`service(*args, **kwargs)`, its EventTypeError a 400 naming the field."""
    try:
        return service(*args, **kwargs)
    except event_types.EventTypeError as exc:
        raise serializers.ValidationError({exc.field: [str(exc)]}) from exc
