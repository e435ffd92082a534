"""REST API for endpoints ("webhooks"): CRUD, secret rotation, test-send, recovery, statistics,
and the event type catalog."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_hooks.auth import HasOrganization, OrganizationScoped
from deliveries import recovery, selectors
from deliveries.events import send_test
from deliveries.serializers import (
    AttemptSerializer,
    DeliverySerializer,
    StatsQuerySerializer,
    StatsSerializer,
    TestSendSerializer,
)
from deliveries.stats import window_stats

from . import catalog
from . import serializers as s
from .models import Endpoint


class EndpointViewSet(OrganizationScoped, viewsets.ModelViewSet):
    queryset = Endpoint.objects.order_by("created_at")
    serializer_class = s.EndpointSerializer

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
        if not endpoint.is_active:
            return Response({"detail": "the endpoint is disabled: enable it first"}, status=status.HTTP_409_CONFLICT)
        try:
            wait = serializers.FloatField(min_value=0, max_value=30).run_validation(request.query_params.get("wait", 0))
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"wait": exc.detail}) from exc
        delivery = send_test(endpoint)
        attempt = selectors.wait_for_first_attempt(delivery, wait) if wait else None
        delivery.refresh_from_db()
        return Response(
            {
                "delivery": DeliverySerializer(delivery).data,
                "attempt": AttemptSerializer(attempt).data if attempt else None,
            },
            status=status.HTTP_202_ACCEPTED,
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
        """Every event type, with a description and an example of its `data`."""
        return Response(
            [
                {"name": name, "description": description, "example": example}
                for name, (description, example) in catalog.EVENT_TYPES.items()
            ]
        )
