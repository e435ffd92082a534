"""REST API for the agent platform: changes made here fire the same events as model saves
(the views only save models; the signals do the rest)."""

from django.db import IntegrityError, transaction
from django.http import Http404
from django.shortcuts import get_object_or_404
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from deliveries import api as erasures
from deliveries.serializers import EraseRequestSerializer, PayloadRemovalSerializer
from webhooks_project.filters import SearchFilter

from . import filters as f
from . import serializers as s
from .auth import OrganizationScoped
from .models import Agent, AgentTool, Job, Message, Run, Step, Tool, ToolExecution


class _Scoped(OrganizationScoped, viewsets.GenericViewSet):
    pass


class _CreateReadUpdate(
    mixins.CreateModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, mixins.ListModelMixin, _Scoped
):
    """No DELETE: runs, steps and executions are history."""

    http_method_names = ["get", "post", "patch", "head", "options"]


class AgentViewSet(OrganizationScoped, viewsets.ModelViewSet):
    queryset = Agent.objects.prefetch_related("tools").order_by("created_at")
    serializer_class = s.AgentSerializer
    filterset_class = f.AgentFilter
    filter_backends = [DjangoFilterBackend, SearchFilter]
    search_fields = ["name"]

    def perform_create(self, serializer):
        serializer.save(organization=self.organization)

    @extend_schema(request=s.AttachToolSerializer, responses={201: s.AgentSerializer})
    @action(detail=True, methods=["post"], url_path="tools")
    def attach_tool(self, request, pk=None):
        """Attach a tool (`agent.tool.attached`); attaching one already attached is a 400."""
        agent = self.get_object()
        body = s.AttachToolSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        try:
            with transaction.atomic():
                AgentTool.objects.create(agent=agent, tool=body.validated_data["tool"])
        except IntegrityError:
            return Response({"tool": ["already attached to this agent"]}, status=status.HTTP_400_BAD_REQUEST)
        agent = self.get_queryset().get(pk=agent.pk)
        return Response(self.get_serializer(agent).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=EraseRequestSerializer, responses={200: PayloadRemovalSerializer, 202: erasures.ERASURE_GOES_ON}
    )
    @action(detail=True, methods=["post"])
    def erase(self, request, pk=None):
        """Erase the payloads of every event of this agent now: the events' bodies, their
        deliveries' bodies and their attempts' response excerpts. The rows stay (ids, types,
        statuses, times), shown as `"erased"`; deliveries not delivered yet finish `failed` and are
        never sent. Recorded with your key and the time. Cannot be undone. Done within the request
        (200), or, for an agent with very many events, begun and then continued by a worker (202,
        `state: running`: follow it at `GET /api/v1/payload-removals/<id>/`)."""
        return erasures.erase(request, agent=self.get_object())

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["delete"], url_path=r"tools/(?P<tool_id>[^/]+)")
    def detach_tool(self, request, pk=None, tool_id=None):
        """Detach a tool (`agent.tool.detached`); a tool that is not attached is a 404."""
        agent = self.get_object()
        if "\x00" in tool_id:  # PostgreSQL text cannot hold NUL: no tool has this id
            raise Http404
        attachment = get_object_or_404(AgentTool, agent=agent, tool_id=tool_id)
        attachment.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class ToolViewSet(OrganizationScoped, viewsets.ModelViewSet):
    queryset = Tool.objects.order_by("created_at")
    serializer_class = s.ToolSerializer
    filterset_class = f.ToolFilter
    filter_backends = [DjangoFilterBackend, SearchFilter]
    search_fields = ["name", "description"]

    def perform_create(self, serializer):
        serializer.save(organization=self.organization)


class RunViewSet(_CreateReadUpdate):
    queryset = Run.objects.order_by("created_at")
    serializer_class = s.RunSerializer
    filterset_class = f.RunFilter
    organization_field = "agent__organization"


class JobViewSet(_CreateReadUpdate):
    queryset = Job.objects.order_by("created_at")
    serializer_class = s.JobSerializer
    filterset_class = f.JobFilter

    def perform_create(self, serializer):
        serializer.save(organization=self.organization)


class StepViewSet(_CreateReadUpdate):
    queryset = Step.objects.order_by("created_at")
    serializer_class = s.StepSerializer
    filterset_class = f.StepFilter
    organization_field = "agent__organization"


class MessageViewSet(mixins.CreateModelMixin, mixins.RetrieveModelMixin, mixins.ListModelMixin, _Scoped):
    queryset = Message.objects.order_by("created_at")
    serializer_class = s.MessageSerializer
    filterset_class = f.MessageFilter
    filter_backends = [DjangoFilterBackend, SearchFilter]
    search_fields = ["content"]
    organization_field = "agent__organization"


class ToolExecutionViewSet(_CreateReadUpdate):
    queryset = ToolExecution.objects.order_by("created_at")
    serializer_class = s.ToolExecutionSerializer
    filterset_class = f.ToolExecutionFilter
    organization_field = "agent__organization"
