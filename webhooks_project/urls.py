from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path, re_path
from django.views import defaults
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from agents_hooks import api as agents_api
from deliveries import api as deliveries_api
from deliveries import dashboard
from webhooks import api as webhooks_api
from webhooks_project import probes

from . import monitoring


def health(request):
    """Liveness probe for load balancers and the run-everything command."""
    return JsonResponse({"status": "ok"})


def not_found(request, exception):
    """An unknown URL under /api/ answers JSON like every other API error, not an HTML page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


handler404 = not_found


router = DefaultRouter()
router.register("agents", agents_api.AgentViewSet)
router.register("tools", agents_api.ToolViewSet)
router.register("runs", agents_api.RunViewSet)
router.register("jobs", agents_api.JobViewSet)
router.register("steps", agents_api.StepViewSet)
router.register("messages", agents_api.MessageViewSet)
router.register("tool-executions", agents_api.ToolExecutionViewSet)
router.register("webhooks", webhooks_api.EndpointViewSet)
router.register("events", deliveries_api.EventViewSet)
router.register("deliveries", deliveries_api.DeliveryViewSet)

urlpatterns = [
    path("admin/stats/", admin.site.admin_view(dashboard.service_page), name="delivery-stats"),
    path("admin/", admin.site.urls),
    path("health/", health),
    re_path(r"^health/live/?$", probes.live_view),  # probes: with or without the slash
    re_path(r"^health/ready/?$", probes.ready_view),
    path("metrics", monitoring.view),
    path("api/v1/event-types/", webhooks_api.EventTypesView.as_view(), name="event-types"),
    path("api/v1/stats/", deliveries_api.StatsView.as_view(), name="stats"),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]
