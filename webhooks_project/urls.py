from django.contrib import admin
from django.http import JsonResponse
from django.urls import path


def health(request):
    """Liveness probe for load balancers and the run-everything command."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health),
]
