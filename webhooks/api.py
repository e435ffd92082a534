"""REST API for endpoints ("webhooks"): CRUD, secret rotation, test-send, recovery, statistics,
run subscriptions, and the event type catalog."""

import functools

from django.db import transaction
from django.urls import reverse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_hooks.auth import HasOrganization, OrganizationScoped, organization_of, requester
from agents_hooks.models import Run
from deliveries import recovery, replay, selectors
from deliveries.events import EndpointDisabled, send_test
from deliveries.models import Event
from deliveries.serializers import (
    AttemptSerializer,
    DeliverySerializer,
    ReplayRequestSerializer,
    ReplaySerializer,
    StatsQuerySerializer,
    StatsSerializer,
    TestSendSerializer,
)
from deliveries.stats import window_stats
from webhooks_project.filters import SearchFilter
from webhooks_project.schema import ERROR_BODY

from . import catalog, content_filter, event_types, run_subscriptions
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
        run_id = envelope.get("run_id")
        subscribed = endpoint.receives(event_type, agent_id, run_id=run_id) if isinstance(event_type, str) else None
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

    @extend_schema(
        request=ReplayRequestSerializer,
        responses={
            202: ReplaySerializer,
            400: OpenApiResponse(ERROR_BODY, description="Bad input (naming the field), or a pull endpoint."),
            409: OpenApiResponse(ERROR_BODY, description="A replay of this endpoint is still running."),
        },
        examples=[
            OpenApiExample("The last day", request_only=True, value={"since": "2026-11-30T09:00:00Z"}),
            OpenApiExample(
                "Failed steps of one morning",
                request_only=True,
                value={
                    "since": "2026-12-01T06:00:00Z",
                    "until": "2026-12-01T12:00:00Z",
                    "event_types": ["agent.step.failed"],
                },
            ),
        ],
    )
    @action(detail=True, methods=["post"])
    def replay(self, request, pk=None):
        """Send this endpoint the past events created in [`since`, `until`) that it takes now (its
        types, agent, run and filter as they are) and never got a delivery of: after creating it,
        or widening what it takes. Each goes once, signed as usual, in order for an endpoint with
        ordering "run". Worked through in batches by the workers: follow `progress` at
        `replays/<id>/`. Failed or dead deliveries are not replayed (`recover` retries them); nor
        are events too large to send, or whose payload was removed. A disabled endpoint's replay
        is held with its other deliveries until it is enabled. One replay per endpoint at a time."""
        endpoint = self.get_object()
        body = ReplayRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        given = body.validated_data
        try:
            started = replay.start(
                endpoint,
                given["since"],
                given.get("until"),
                given.get("event_types"),
                requested_by=requester(request),
            )
        except replay.ReplayRefused as exc:
            if exc.field:
                raise serializers.ValidationError({exc.field: [str(exc)]}) from exc
            code = status.HTTP_409_CONFLICT if exc.conflict else status.HTTP_400_BAD_REQUEST
            return Response({"detail": str(exc)}, status=code)
        location = request.build_absolute_uri(reverse("endpoint-replay-detail", args=[endpoint.pk, started.pk]))
        return Response(ReplaySerializer(started).data, status=status.HTTP_202_ACCEPTED, headers={"Location": location})

    @extend_schema(responses={200: ReplaySerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[])
    def replays(self, request, pk=None):
        """This endpoint's replays, the latest first, with their progress."""
        endpoint = self.get_object()
        rows = endpoint.replays.order_by("-created_at", "-pk")
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(ReplaySerializer(page, many=True).data)

    @extend_schema(
        parameters=[OpenApiParameter("replay_id", int, OpenApiParameter.PATH, description="The replay's id.")],
        responses={200: ReplaySerializer},
    )
    @action(detail=True, methods=["get"], url_path=r"replays/(?P<replay_id>[0-9]{1,18})")
    def replay_detail(self, request, pk=None, replay_id=None):
        """One replay of this endpoint: its state and progress."""
        return Response(ReplaySerializer(self._replay(replay_id)).data)

    @extend_schema(
        request=None,
        parameters=[OpenApiParameter("replay_id", int, OpenApiParameter.PATH, description="The replay's id.")],
        responses={200: ReplaySerializer},
    )
    @action(detail=True, methods=["post"], url_path=r"replays/(?P<replay_id>[0-9]{1,18})/cancel")
    def cancel_replay(self, request, pk=None, replay_id=None):
        """Stop a running replay after the batch in hand; the deliveries it created go on. A
        replay already finished is answered as it is."""
        found = self._replay(replay_id)
        replay.cancel(found)
        return Response(ReplaySerializer(found).data)

    def _replay(self, replay_id: str):
        found = self.get_object().replays.filter(pk=int(replay_id)).first()
        if found is None:
            raise NotFound(f"no replay {replay_id} of this endpoint")
        return found

    @extend_schema(parameters=[StatsQuerySerializer], responses={200: StatsSerializer})
    @action(detail=True, methods=["get"])
    def stats(self, request, pk=None):
        """Volume, success rate, attempt duration, event-to-success latency, outcome classes and
        retries of this endpoint over `window`, with a time series for charts."""
        endpoint = self.get_object()
        query = StatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(StatsSerializer(window_stats(query.validated_data["window"], endpoint=endpoint)).data)


RUN_ENDED = OpenApiResponse(ERROR_BODY, description="The run already ended: its last event was published.")


@extend_schema(parameters=[OpenApiParameter("run_id", str, OpenApiParameter.PATH, description="The run's id.")])
class RunSubscriptionsView(OrganizationScoped, generics.ListCreateAPIView):
    """A run's subscriptions (webhooks/run_subscriptions.py): endpoints that take that run's
    events only, until its last one was delivered or their TTL. Each is an endpoint like any
    other, also under /api/v1/webhooks/ (where it is changed or deleted)."""

    queryset = Endpoint.objects.order_by("created_at", "pk")
    serializer_class = s.RunSubscriptionSerializer

    @extend_schema(responses={200: s.RunSubscriptionSerializer(many=True)})
    def get(self, request, *args, **kwargs):
        """The run's subscriptions, oldest first, each with its `state`: active, ended (the run's last
        event was delivered to it), expired (past `expires_at`) or disabled."""
        return super().get(request, *args, **kwargs)

    @extend_schema(
        responses={201: s.RunSubscriptionWithSecretSerializer, 409: RUN_ENDED},
        examples=[
            OpenApiExample(
                "Every event of the run",
                request_only=True,
                value={"url": "https://example.com/runs/hook"},
            ),
            OpenApiExample(
                "Its failed steps only, for an hour",
                request_only=True,
                value={
                    "url": "https://example.com/runs/hook",
                    "event_types": ["agent.step.failed"],
                    "ttl_seconds": 3600,
                },
            ),
        ],
    )
    def post(self, request, *args, **kwargs):
        """Subscribe a URL to this run's events only: those of `event_types` (all of the run's if empty)
        that pass `filter`, and always the run's last event, `agent.run.completed`, after which the
        subscription ends by itself (`state: ended`); deliveries already made finish their retries.
        If the run never ends, it takes no new event after `expires_at` (`ttl_seconds` from now;
        by default WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS). Delivered in the run's order by default
        (`ordering: "run"`). The URL is checked, the POSTs signed and logged, as for any endpoint;
        the signing secret is in this answer only. A run that already ended is a 409."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with transaction.atomic():
            run = run_subscriptions.hold_run(self.run)
            if run_subscriptions.run_ended(run):
                detail = f"run {run.pk} already ended ({run.status}): its last event was published"
                return Response({"detail": detail}, status=status.HTTP_409_CONFLICT)
            serializer.save(organization=self.organization, run=run, agent_id=run.agent_id)
        return Response(s.RunSubscriptionWithSecretSerializer(serializer.instance).data, status=status.HTTP_201_CREATED)

    @functools.cached_property
    def run(self) -> Run:
        """The run named in the URL, if it is the caller's organization's; else a 404."""
        run_id, run = self.kwargs["run_id"], None
        if "\x00" not in run_id:  # PostgreSQL text cannot hold NUL: no run has such an id
            run = Run.objects.filter(pk=run_id, agent__organization=self.organization).first()
        if run is None:
            raise NotFound(f"no run {run_id!r} in your organization")
        return run

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no run
            return Endpoint.objects.none()
        return super().get_queryset().filter(run=self.run)


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
