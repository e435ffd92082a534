from django.contrib import admin
from django.http import JsonResponse
from django.urls import Resolver404, include, path, re_path, resolve
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
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


@csrf_exempt  # any method: a POST must get this answer too, not the CSRF check's 403 page
def api_not_found(request):
    """Every /api/ URL no API view takes, in any method and whatever DEBUG says: a JSON 404, and for
    a URL missing its trailing slash, one naming the URL that works. (Left to Django, a POST
    there was a 500 page in DEBUG, from APPEND_SLASH, and otherwise a 301 that loses the body;
    and any unknown /api/ URL was an HTML page in DEBUG, which skips handler404.)"""
    detail = "Not found."
    if not request.path_info.endswith("/"):
        try:
            match = resolve(request.path_info + "/")
        except Resolver404:
            match = None
        if match is not None and match.func is not api_not_found:
            query = request.META.get("QUERY_STRING", "")
            with_slash = request.path + "/" + (f"?{query}" if query else "")
            detail = f"Not found; API URLs end with a slash: {with_slash}"
    return JsonResponse({"detail": detail}, status=404)


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
router.register("payload-removals", deliveries_api.PayloadRemovalViewSet)

urlpatterns = [
    path("admin/stats/", admin.site.admin_view(dashboard.service_page), name="delivery-stats"),
    path("admin/", admin.site.urls),
    path("health/", health),
    re_path(r"^health/live/?$", probes.live_view),  # probes: with or without the slash
    re_path(r"^health/ready/?$", probes.ready_view),
    path("metrics", monitoring.view),
    path("api/v1/event-types/", webhooks_api.EventTypesView.as_view(), name="event-types"),
    path("api/v1/event-types/<str:name>/", webhooks_api.EventTypeView.as_view(), name="event-type"),
    path("api/v1/stats/", deliveries_api.StatsView.as_view(), name="stats"),
    path("api/v1/organizations/<str:pk>/erase/", deliveries_api.OrganizationEraseView.as_view(), name="org-erase"),
    path(
        "api/v1/runs/<str:run_id>/subscriptions/",
        webhooks_api.RunSubscriptionsView.as_view(),
        name="run-subscriptions",
    ),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    re_path(r"^api(?:/|$)", api_not_found),  # last: whatever no pattern above takes
]
