"""The endpoint admin's "Replay events" page: start a replay (deliveries/replay.py) and follow
the endpoint's replays with their progress.

Its own module, so the endpoint admin stays one subject; `EndpointAdmin.get_urls` routes
`<endpoint>/replay/` here. The page calls `replay.start`, as the API and the CLI do: the same
rules, the same words (a field's problem shown on that field).
"""

import datetime

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from deliveries import replay
from deliveries.models import ReplayState

from .forms import EventTypesField
from .models import Endpoint, EndpointKind

REPLAYS_SHOWN = 20
DEFAULT_WINDOW = datetime.timedelta(hours=24)


class ReplayForm(forms.Form):
    since = forms.DateTimeField(
        label="Since",
        help_text="Events created at or after this time: <code>2026-12-01 09:30</code> (the site's time zone) "
        "or ISO 8601 with an offset.",
        widget=forms.DateTimeInput(attrs={"size": 25}, format="%Y-%m-%d %H:%M:%S"),
    )
    until = forms.DateTimeField(
        label="Until",
        required=False,
        help_text="…and before this time. Empty (and at the latest): now.",
        widget=forms.DateTimeInput(attrs={"size": 25, "placeholder": "now"}, format="%Y-%m-%d %H:%M:%S"),
    )
    event_types = EventTypesField(
        required=False,
        label="Only these event types",
        help_text="One type or pattern per line (<code>agent.step.*</code>). Empty: every event the endpoint takes.",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 40, "placeholder": "all the endpoint takes"}),
    )


def replay_page(model_admin, request, endpoint: Endpoint) -> TemplateResponse | HttpResponseRedirect:
    """GET: the form and the endpoint's replays. POST (may change the endpoint): start one, or
    cancel a running one (`cancel`: its id)."""
    if request.method == "POST" and not model_admin.has_change_permission(request, endpoint):
        raise PermissionDenied
    if request.method == "POST" and "cancel" in request.POST:
        found = endpoint.replays.filter(pk=request.POST["cancel"] if request.POST["cancel"].isdigit() else None).first()
        if found is not None and replay.cancel(found):
            model_admin.message_user(request, f"Replay {found.pk} cancelled; the deliveries it created go on.")
        else:
            model_admin.message_user(request, "That replay is not running: nothing to cancel.", messages.WARNING)
        return HttpResponseRedirect(request.path)
    initial = {"since": (timezone.localtime() - DEFAULT_WINDOW).replace(microsecond=0)}
    form = ReplayForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        given = form.cleaned_data
        try:
            started = replay.start(
                endpoint,
                given["since"],
                given.get("until"),
                given.get("event_types"),
                requested_by=f"{request.user.get_username()} (admin)",
            )
        except replay.ReplayRefused as exc:
            if exc.field:
                form.add_error(exc.field, str(exc))
            else:
                model_admin.message_user(request, str(exc), messages.ERROR)
        else:
            held = "" if endpoint.is_active else " The endpoint is disabled: they wait until it is enabled."
            model_admin.message_user(
                request,
                f"Replay {started.pk} started: {started.events_total} events of the window to look through; "
                f"those the endpoint takes and never got are being sent.{held}",
            )
            return HttpResponseRedirect(request.path)
    change_url = reverse("admin:webhooks_endpoint_change", args=[quote(endpoint.pk)])
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Replay events to {endpoint}",
        "opts": model_admin.model._meta,
        "original": endpoint,
        "change_url": change_url,
        "form": form,
        "pull": endpoint.kind == EndpointKind.PULL,
        "can_start": model_admin.has_change_permission(request, endpoint),
        "replays": [(r, replay.progress(r)) for r in endpoint.replays.order_by("-created_at", "-pk")[:REPLAYS_SHOWN]],
        "running": ReplayState.RUNNING,
        "api_path": f"/api/v1/webhooks/{endpoint.pk}/",
    }
    return TemplateResponse(request, "admin/webhooks/endpoint/replay.html", context)
