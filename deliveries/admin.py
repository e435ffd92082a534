"""Admin for the delivery log: events, deliveries and their attempts, read-only.

The log is a record: nothing here edits or deletes a row (not even a superuser: rows go only
with their endpoint or organization, or when `purge_attempts` ages them out). The one write is
"retry" (the action, and the button on a delivery's page), which calls
`recovery.retry_delivery` like the API. Event bodies can be large, so lists never load them;
filters are on indexed or enumerated columns only, and tables this big are not counted whole.
"""

import datetime
import json
import time

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.timezone import localtime

from agents_hooks.auth import requester
from webhooks.catalog import EVENT_TYPES
from webhooks.models import Endpoint

from . import retention
from .models import Attempt, Delivery, DeliveryStatus, Event, PayloadRemoval
from .recovery import NotRetryable, retry_delivery

# The index page with a link to the statistics charts (/admin/stats/, deliveries/dashboard.py) on top.
admin.site.index_template = "admin/deliveries/index.html"
# No app list down the left of every page: it took 300 px of a 1400 px screen from the lists,
# which then had to scroll sideways. The breadcrumbs and the index lead everywhere it did.
admin.site.enable_nav_sidebar = False

STATUS_COLOURS = {
    DeliveryStatus.SUCCEEDED: "#2e7d32",
    DeliveryStatus.PENDING: "#b26a00",
    DeliveryStatus.FAILED: "#c62828",
    DeliveryStatus.DEAD: "#6a1b9a",
}


def status_badge(status: str | None) -> str:
    """A delivery status in its colour; "—" when there is none."""
    if not status:
        return "—"
    return format_html('<strong style="color: {}">{}</strong>', STATUS_COLOURS.get(status, "inherit"), status)


def pretty_json(text: str | None) -> str:
    if not text:
        return "—"
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        pass
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


def when(moment) -> str:
    """A log timestamp to the second, in the site's time zone."""
    return localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def until(moment, now: datetime.datetime | None = None) -> str:
    """How far `moment` is from now, to the second: "in 4 min 12 s", "overdue by 3 s", "due now"."""
    seconds = round((moment - (now or timezone.now())).total_seconds())
    if seconds == 0:
        return "due now"
    span = []
    rest = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if rest >= size or (unit == "s" and not span):
            span.append(f"{rest // size} {unit}")
            rest %= size
    span = " ".join(span[:2])  # "2 h 5 min", not "2 h 5 min 12 s"
    return f"in {span}" if seconds > 0 else f"overdue by {span}"


def next_attempt(delivery) -> str:
    """When a pending delivery's next attempt is due, to the second and from now."""
    if delivery.status != DeliveryStatus.PENDING:
        return "—"
    if delivery.waiting:
        return "waiting for its turn (the run's earlier delivery to this endpoint has not finished)"
    if delivery.next_attempt_at is None:
        return "held (endpoint disabled)"
    return format_html(
        '{}<br><span class="quiet">{}</span>', when(delivery.next_attempt_at), until(delivery.next_attempt_at)
    )


def shortened(url: str, chars: int = 48) -> str:
    """A long URL cut short for a list's column; the whole of it in the tooltip."""
    return format_html('<span title="{}">{}</span>', url, Truncator(url).chars(chars))


def admin_link(obj, label=None) -> str:
    if obj is None:
        return "—"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[quote(obj.pk)])
    return format_html('<a href="{}">{}</a>', url, label if label is not None else obj)


class CountsWhenFiltered(ChangeList):
    """A log list's count: with `show_full_result_count` off (no COUNT of the whole table),
    Django shows "7 results (Show all)" even when nothing is filtered; shown only when a
    filter or a search is applied, since only then is there an "all" to go back to."""

    def get_results(self, request):
        super().get_results(request)
        if self.full_result_count is None and not self.query and not self.get_filters_params():
            self.full_result_count = self.result_count  # the same: nothing is filtered


class ReadOnlyAdmin(admin.ModelAdmin):
    """Log rows: viewable, never added, edited or deleted here (by anyone, superusers too)."""

    def get_changelist(self, request, **kwargs):
        return CountsWhenFiltered

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


LOG_MODELS = (Event, Delivery, Attempt)


class DeletesItsLog:
    """For the admins of rows that own log rows (an endpoint its deliveries, an organization its
    events): deleting one deletes its log, as the API's DELETE does, although log rows cannot be
    deleted on their own (`ReadOnlyAdmin`)."""

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        log = {str(model._meta.verbose_name) for model in LOG_MODELS}
        return deleted, counts, {name for name in perms_needed if str(name) not in log}, protected


class EventTypeFilter(admin.SimpleListFilter):
    """The catalog's event types: no DISTINCT scan of the event table."""

    title = "event type"
    parameter_name = "type"

    def lookups(self, request, model_admin):
        return [(name, name) for name in EVENT_TYPES]

    def queryset(self, request, queryset):
        if self.value():
            field = "type" if queryset.model is Event else "event__type"
            return queryset.filter(**{field: self.value()})
        return queryset


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = ["delivery", "kind", "target", "status_", "attempt_count", "last_status_code", "next_attempt_"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("endpoint").defer("body")

    @admin.display(description="delivery")
    def delivery(self, obj) -> str:
        return admin_link(obj, f"delivery {obj.pk}")

    @admin.display(description="target")
    def target(self, obj) -> str:
        return obj.target_url

    @admin.display(description="status")
    def status_(self, obj) -> str:
        return status_badge(obj.status)

    @admin.display(description="next attempt")
    def next_attempt_(self, obj) -> str:
        return next_attempt(obj)


class EndpointFilter(admin.SimpleListFilter):
    """One endpoint's deliveries. Lists only the endpoint chosen (from its page's "Deliveries"
    button or its success rate in the endpoint list), never every endpoint: there may be
    thousands. The search box finds deliveries by endpoint URL."""

    title = "endpoint"
    parameter_name = "endpoint__id__exact"  # the links' parameter since Django's own filter
    template = "admin/deliveries/endpoint_filter.html"

    def lookups(self, request, model_admin):
        value = self.value()
        if not value:
            return []
        url = Endpoint.objects.filter(pk=value).values_list("url", flat=True).first()
        return [(value, Truncator(url).chars(40) if url else value)]

    def has_output(self):
        return True  # the hint shows even with no endpoint chosen

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(endpoint_id=self.value())
        return queryset


class FannedOutFilter(admin.SimpleListFilter):
    """Events still waiting for the worker to create their deliveries (a partial index)."""

    title = "fanned out"
    parameter_name = "fanned_out"

    def lookups(self, request, model_admin):
        return [("no", "Not yet (waiting for a worker)"), ("yes", "Yes")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(fanned_out_at__isnull=self.value() == "no")
        return queryset


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["id", "type", "organization", "agent", "created", "fanned_out"]
    list_select_related = ["organization", "agent"]
    list_filter = [EventTypeFilter, FannedOutFilter, "payload_removed"]
    search_fields = ["=id", "^type", "=agent__id", "=dedupe_key"]
    ordering = ["-created_at"]
    show_full_result_count = False
    fields = ["id", "type", "organization", "agent", "created_at", "fanned_out_at", "dedupe_key", "payload"]
    readonly_fields = fields
    inlines = [DeliveryInline]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("body")

    @admin.display(description="created at", ordering="created_at")
    def created(self, obj) -> str:
        return when(obj.created_at)

    @admin.display(description="fanned out", boolean=True, ordering="fanned_out_at")
    def fanned_out(self, obj) -> bool:
        return obj.fanned_out_at is not None

    @admin.display(description="payload (as POSTed)")
    def payload(self, obj) -> str:
        return obj.payload_gone or pretty_json(obj.body)


class AttemptInline(admin.TabularInline):
    model = Attempt
    fields = ["number", "started", "status_code", "duration_ms", "error", "response"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "attempts"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="started at")
    def started(self, obj) -> str:
        return when(obj.started_at)

    @admin.display(description="response (excerpt)")
    def response(self, obj) -> str:
        return Truncator(obj.response_body).chars(200) or "—"


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ["created", "event_type", "target", "status_", "attempts", "last_answer", "next_attempt"]
    list_display_links = ["created"]
    list_select_related = ["event", "endpoint"]
    list_filter = ["status", "kind", EventTypeFilter, EndpointFilter]
    search_fields = ["=id", "=event__id", "endpoint__url", "url"]
    ordering = ["-pk"]  # creation order, on the primary key index
    show_full_result_count = False
    actions = ["retry"]
    inlines = [AttemptInline]

    def get_search_results(self, request, queryset, search_term):
        """A number is a delivery id, matched exactly: not also every URL whose port or path
        happens to contain those digits."""
        term = search_term.strip()
        if term.isdigit() and len(term) < 19:  # within a bigint
            return queryset.filter(pk=int(term)), False
        return super().get_search_results(request, queryset, search_term)

    # What an operator asks of a delivery; the worker's bookkeeping (series start, lease, rate
    # limit slot) stays out of sight. Times to the second.
    PROGRESS = ["attempts", "next_attempt", "last_attempt", "last_answer", "last_error_", "created", "finished"]
    fieldsets = [
        (None, {"fields": ["event_link", "event_type", "kind", "full_target", "status_", "run_order"]}),
        ("Progress", {"fields": PROGRESS}),
        ("Payload", {"fields": ["payload"], "classes": ["collapse"]}),
    ]
    readonly_fields = ["event_link", "event_type", "kind", "full_target", "status_", "run_order", *PROGRESS, "payload"]

    def get_queryset(self, request):
        # Bodies are up to WEBHOOK_MAX_PAYLOAD_BYTES each: a page of them is not loaded for a list.
        return super().get_queryset(request).select_related("event", "endpoint").defer("body", "event__body")

    def has_retry_permission(self, request) -> bool:
        return request.user.has_perm("deliveries.change_delivery")

    def get_urls(self):
        retry = self.admin_site.admin_view(self.retry_view)  # admin_view checks the CSRF token
        return [path("<path:object_id>/retry/", retry, name="deliveries_delivery_retry"), *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "can_retry": self.has_retry_permission(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def retry_view(self, request, object_id):
        """The "Retry now" button on a delivery's page: `recovery.retry_delivery`, as the API's
        retry, then back to the page with what became of it."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        delivery = self.get_object(request, unquote(object_id))
        if delivery is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_retry_permission(request):
            raise PermissionDenied
        was = delivery.status
        try:
            retry_delivery(delivery)
        except NotRetryable as exc:
            self.message_user(request, f"Not retried: {refusal(exc)}", messages.ERROR)
        else:
            how = "its next attempt is made now" if was == DeliveryStatus.PENDING else "a new series of attempts starts"
            self.message_user(
                request, f"Retrying delivery {delivery.pk} now: {how}. Reload to see the attempt.", messages.SUCCESS
            )
        return HttpResponseRedirect(reverse("admin:deliveries_delivery_change", args=[quote(delivery.pk)]))

    @admin.display(description="event type", ordering="event__type")
    def event_type(self, obj) -> str:
        return obj.event.type

    @admin.display(description="endpoint / URL")
    def target(self, obj) -> str:
        if obj.endpoint_id:
            return admin_link(obj.endpoint, shortened(obj.endpoint.url))
        return format_html("{} ({})", shortened(obj.url), obj.get_kind_display())

    @admin.display(description="endpoint / URL")
    def full_target(self, obj) -> str:
        if obj.endpoint_id:
            return admin_link(obj.endpoint, obj.endpoint.url)
        return obj.url

    @admin.display(description="status", ordering="status")
    def status_(self, obj) -> str:
        return status_badge(obj.status)

    @admin.display(description="attempts", ordering="attempt_count")
    def attempts(self, obj) -> int:
        return obj.attempt_count

    @admin.display(description="last answer", ordering="last_status_code")
    def last_answer(self, obj) -> str:
        if obj.last_status_code is not None:
            return f"HTTP {obj.last_status_code}"
        return "no answer" if obj.last_attempt_at else "—"

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, obj) -> str:
        return next_attempt(obj)

    @admin.display(description="last attempt at")
    def last_attempt(self, obj) -> str:
        return when(obj.last_attempt_at)

    @admin.display(description="created at", ordering="pk")
    def created(self, obj) -> str:
        return when(obj.created_at)

    @admin.display(description="last error")
    def last_error_(self, obj) -> str:
        return obj.last_error or "—"

    @admin.display(description="finished at")
    def finished(self, obj) -> str:
        return when(obj.finished_at)

    @admin.display(description="order in its run")
    def run_order(self, obj) -> str:
        """For a delivery to an endpoint that delivers runs in order: its place, and what its
        receiver did not get before it."""
        if obj.run_id is None:
            return "— (its endpoint does not deliver runs in order)"
        skipped = ", ".join(obj.skipped_event_ids or []) or "none"
        return f"event {obj.sequence} of run {obj.run_id}; earlier events not delivered: {skipped}"

    @admin.display(description="event")
    def event_link(self, obj) -> str:
        return admin_link(obj.event)

    @admin.display(description="payload (as POSTed)")
    def payload(self, obj) -> str:
        if obj.event.payload_removed:
            return obj.event.payload_gone
        return pretty_json(obj.body if obj.body is not None else obj.event.body)

    @admin.action(description="Retry selected deliveries now", permissions=["retry"])
    def retry(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        retried, refused = 0, {}
        for delivery in Delivery.objects.filter(pk__in=ids).defer("body").order_by("pk"):
            try:
                retry_delivery(delivery)
                retried += 1
            except NotRetryable as exc:
                refused.setdefault(exc.reason, []).append(str(delivery.pk))
        if retried:
            self.message_user(
                request,
                f"Sending {retried} deliver{pluralize(retried, 'y,ies')} now (failed and dead ones start a "
                "new series of attempts; waiting ones make their next attempt now).",
            )
        for reason, pks in refused.items():
            why = "held until its endpoint is enabled" if reason == NotRetryable.HELD else reason
            self.message_user(request, f"Not retried, {why}: delivery {', '.join(pks)}.", messages.WARNING)


def refusal(exc: NotRetryable) -> str:
    """Why a delivery was not retried, in an operator's words (the API's are for its callers)."""
    return {
        NotRetryable.SUCCEEDED: "this delivery already succeeded, so it is not sent again.",
        NotRetryable.HELD: "this delivery is held because its endpoint is disabled; enable the endpoint to send it "
        "(with its other held deliveries).",
        NotRetryable.IN_PROGRESS: "an attempt of this delivery is being made right now; reload to see it.",
        NotRetryable.WAITING: "this delivery is waiting for its turn: its endpoint delivers runs in order, and it "
        "goes as soon as the run's earlier delivery has finished.",
    }.get(exc.reason, f"{exc}.")


class OutcomeFilter(admin.SimpleListFilter):
    title = "outcome"
    parameter_name = "outcome"
    RANGES = {"2xx": (200, 299), "3xx": (300, 399), "4xx": (400, 499), "5xx": (500, 599)}

    def lookups(self, request, model_admin):
        return [*((k, k) for k in self.RANGES), ("none", "no answer")]

    def queryset(self, request, queryset):
        if self.value() == "none":
            return queryset.filter(status_code__isnull=True)
        if self.value() in self.RANGES:
            return queryset.filter(status_code__range=self.RANGES[self.value()])
        return queryset


@admin.register(Attempt)
class AttemptAdmin(ReadOnlyAdmin):
    list_display = ["attempt", "delivery_link", "started", "outcome", "duration_ms", "url"]
    list_filter = [OutcomeFilter]
    search_fields = ["=delivery__event__id", "url"]
    ordering = ["-started_at"]
    show_full_result_count = False
    fields = [
        "delivery_link",
        "number",
        "started_at",
        "url",
        "status_code",
        "duration_ms",
        "error",
        "response",
        "headers_sent",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).defer("response_body", "request_headers")

    @admin.display(description="attempt", ordering="number")
    def attempt(self, obj) -> str:
        return f"attempt {obj.number}"

    @admin.display(description="delivery", ordering="delivery")
    def delivery_link(self, obj) -> str:
        url = reverse("admin:deliveries_delivery_change", args=[obj.delivery_id])
        return format_html('<a href="{}">delivery {}</a>', url, obj.delivery_id)

    @admin.display(description="started at", ordering="started_at")
    def started(self, obj) -> str:
        return when(obj.started_at)

    @admin.display(description="outcome", ordering="status_code")
    def outcome(self, obj) -> str:
        if obj.status_code is not None:
            return f"HTTP {obj.status_code}"
        return Truncator(obj.error).chars(60) or "—"

    @admin.display(description="response body (as kept)")
    def response(self, obj) -> str:
        gone = Event.objects.filter(deliveries=obj.delivery_id).only("payload_removed", "payload_removed_at").first()
        if gone is not None and gone.payload_removed:
            return gone.payload_gone
        return pretty_json(obj.response_body)

    @admin.display(description="request headers (credentials redacted)")
    def headers_sent(self, obj) -> str:
        return pretty_json(json.dumps(obj.request_headers))


@admin.register(PayloadRemoval)
class PayloadRemovalAdmin(ReadOnlyAdmin):
    """Who had payloads erased, and when; and each retention pass that expired some."""

    list_display = ["requested_at", "kind", "scope", "requested_by", "events", "deliveries_failed", "state", "reason"]
    list_filter = ["kind"]
    search_fields = ["=agent_id", "=organization_id", "requested_by"]
    ordering = ["-requested_at"]

    @admin.display(description="state", ordering="finished_at")
    def state(self, obj) -> str:
        return "running (a worker goes on)" if obj.finished_at is None else f"finished {when(obj.finished_at)}"

    @admin.display(description="scope")
    def scope(self, obj) -> str:
        if obj.agent_id:
            return f"agent {obj.agent_id}"
        if obj.organization_id:
            return f"organization {obj.organization_id}"
        return f"all organizations, created before {when(obj.cutoff)}"


class ErasesPayloads:
    """The "Erase payloads" action of the agent and organization admins: `retention.erase` for
    each selected one, after a confirmation page (it cannot be undone), recorded with the
    admin user as the one who asked."""

    erases = "agent"  # the keyword of retention.erase that the selected rows are

    @admin.action(description="Erase the payloads of their events…", permissions=["change"])
    def erase_payloads(self, request, queryset):
        if request.POST.get("confirmed") == "yes":
            reason = request.POST.get("reason", "").strip()[:500]
            # One request's time for all of them: past it, each is recorded and a worker does it.
            deadline = time.monotonic() + retention.IN_REQUEST_SECONDS
            records = [
                retention.erase(
                    requested_by=requester(request),
                    reason=reason,
                    seconds=max(0.0, deadline - time.monotonic()),
                    **{self.erases: obj},
                )
                for obj in queryset
            ]
            events = sum(r.events for r in records)
            failed = sum(r.deliveries_failed for r in records)
            going_on = sum(r.finished_at is None for r in records)
            self.message_user(
                request,
                f"Erased the payloads of {events} event{pluralize(events)}{' so far' if going_on else ''} of "
                f"{len(records)} {self.erases}{pluralize(len(records))}; {failed} undelivered "
                f"deliver{pluralize(failed, 'y,ies')} finished failed.",
                messages.SUCCESS,
            )
            if going_on:
                self.message_user(
                    request,
                    f"{going_on} erasure{pluralize(going_on)} did not finish within the request: a worker goes on "
                    "(see Payload removals, where the counts grow until it is finished).",
                    messages.WARNING,
                )
            return None
        field = "agent" if self.erases == "agent" else "organization"
        kept = Event.objects.filter(payload_removed="")
        rows = [(obj, kept.filter(**{field: obj}).count()) for obj in queryset]
        context = {
            **self.admin_site.each_context(request),
            "title": "Erase payloads: are you sure?",
            "opts": self.model._meta,
            "rows": rows,
            "scope": self.erases,
            "action": "erase_payloads",
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/deliveries/erase_payloads.html", context)
