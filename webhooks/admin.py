"""Admin for endpoints: health at a glance, and the operator's actions.

Like the API, the admin is a surface over both apps: its actions call the same services the
API and the CLI call (`deliveries.events.send_test`, `deliveries.recovery`,
`Endpoint.rotate_secret`). A secret is shown once, in the message after creating or rotating
it, and never in a list or a form.
"""

import datetime
import json
import time
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.widgets import AdminURLFieldWidget
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import HttpResponseRedirect
from django.template.defaultfilters import pluralize
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator

from deliveries import dashboard, policy
from deliveries.admin import DeletesItsLog, status_badge
from deliveries.events import EndpointDisabled, send_test
from deliveries.models import Attempt, Delivery
from deliveries.recovery import disable_endpoints, recover_endpoint, resume_endpoint, retry_pending
from deliveries.selectors import success_rate, wait_for_first_attempt, with_delivery_stats

from . import admin_replay, catalog, clientcert, content_filter, credentials, run_subscriptions, urlsafety
from .forms import EventTypesField, ExcludeFieldsField, HeadersField, format_headers
from .models import Endpoint, EndpointKind, Ordering, Payload, url_problem
from .serializers import EndpointSerializer

# The list's columns: URLs cut to this many characters (whole in the tooltip), at most this
# many event types named (the rest counted).
URL_CHARS = 48
EVENT_TYPES_SHOWN = 3
# How long "send test event" waits for the worker's first attempt before answering.
TEST_WAIT_SECONDS = 5.0
HEADERS_HELP = (
    "Extra HTTP headers sent with every POST, one per line: <code>X-Team: ops</code>. Credential values are "
    f"shown as <code>{credentials.MASK}</code>: leave it to keep the stored value, type a new value to replace "
    "it, delete the line to remove the header."
)
EVENT_TYPES_HELP = (
    "One event type or pattern per line (or separated by commas), e.g. <code>agent.step.*</code>. "
    "<strong>Empty: all agent events</strong> (operational ones, <code>endpoint.*</code> and "
    "<code>delivery.dead</code>, only when named). Known types: {}."
)
FILTER_HELP = (
    "Optional. Of the events its types take, send only those whose envelope passes this JSON condition. "
    'Examples: <code>{"path": "data.status", "in": ["failed", "cancelled"]}</code>, '
    '<code>{"path": "data.usage.total_tokens", "gt": 10000}</code>, '
    '<code>{"path": "data.error", "exists": true}</code>, '
    '<code>{"and": [{...}, {...}]}</code>, <code>{"or": [...]}</code>, <code>{"not": {...}}</code>. '
    "Operators: eq, in, gt, gte, lt, lte, exists; paths are dotted from the envelope "
    "(<code>event_type</code>, <code>agent_id</code>, <code>data.…</code>). <strong>Empty: no filter.</strong>"
)


class EndpointForm(forms.ModelForm):
    """The API's rules for a URL, event types and headers, so both surfaces accept the same."""

    url = forms.URLField(
        max_length=2048, assume_scheme="https", widget=AdminURLFieldWidget, required=False,
        help_text="Where events are POSTed; empty for a pull endpoint.",
    )  # fmt: skip
    event_types = EventTypesField(required=False, label="Event types")
    headers = HeadersField(required=False, label="Custom headers")
    exclude_fields = ExcludeFieldsField(
        required=False,
        label="Excluded fields",
        help_text="Fields of <code>data</code> never sent to this endpoint, one dotted path per line from inside "
        "<code>data</code>: <code>content</code>, <code>usage.total_tokens</code>. A path that reaches a list applies "
        "to each item; one an event does not have is passed over. <strong>Empty: nothing excluded.</strong>",
    )
    filter = forms.CharField(
        required=False,
        label="Content filter",
        widget=forms.Textarea(
            attrs={"rows": 4, "cols": 64, "placeholder": '{"path": "data.status", "in": ["failed", "cancelled"]}'}
        ),
        help_text=FILTER_HELP,
    )
    retry_schedule = forms.CharField(
        required=False,
        label="Retry schedule",
        widget=forms.TextInput(attrs={"size": 60}),
        help_text="",  # set in __init__: it names the default in force
    )
    # Mutual TLS. Never filled in from the stored value (it is a secret): empty keeps it.
    client_certificate = forms.CharField(
        required=False,
        strip=False,
        label="Client certificate",
        widget=forms.Textarea(attrs={"rows": 4, "cols": 64, "placeholder": "-----BEGIN CERTIFICATE-----"}),
        help_text="PEM, leaf first. Presented to receivers that ask for one. Empty: keep the current one.",
    )
    client_key = forms.CharField(
        required=False,
        strip=False,
        label="Client key",
        widget=forms.Textarea(attrs={"rows": 4, "cols": 64, "placeholder": "-----BEGIN PRIVATE KEY-----"}),
        help_text="The certificate's private key, PEM, unencrypted. Stored encrypted; never shown again.",
    )
    remove_client_certificate = forms.BooleanField(required=False, label="Remove the client certificate")

    class Meta:
        model = Endpoint
        fields = [
            "organization", "kind", "url", "agent", "description", "event_types", "filter", "headers", "rate_limit",
            "retry_schedule", "ordering", "is_active", "payload", "exclude_fields", "run", "expires_at",
        ]  # fmt: skip
        help_texts = {
            "run": "Only this run's events, and always its last one, after whose delivery it ends by itself "
            "(a run subscription, as POST /api/v1/runs/&lt;id&gt;/subscriptions/ makes). Chosen once; "
            "empty for an ordinary endpoint.",
            "expires_at": "A run subscription takes no new event after this, if its run has not ended by then "
            "(at most 30 days ahead). Empty: WEBHOOK_RUN_SUBSCRIPTION_TTL_HOURS from now.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "kind" in self.fields:  # push unless chosen (a form posted without it, by a script)
            self.fields["kind"].required = False
        if "ordering" in self.fields:  # as it is unless chosen
            self.fields["ordering"].required = False
        if "payload" in self.fields:  # as it is (full for a new one) unless chosen, as kind
            self.fields["payload"].required = False
        # Credential values are never put in the page: HeadersField shows them masked, and a mask
        # saved unchanged keeps the stored value (`clean_headers`), as the API does.
        if "headers" in self.fields:  # not for someone who may only view
            self.fields["headers"].help_text = HEADERS_HELP
        if "event_types" in self.fields:
            known = ", ".join(f"<code>{name}</code>" for name in catalog.EVENT_TYPES)
            self.fields["event_types"].help_text = EVENT_TYPES_HELP.format(known)
        self.fields["retry_schedule"].help_text = (
            'Waits before each retry, e.g. "5s, 5m, 30m, 2h". Empty: the default, '
            f"{policy.format_schedule(settings.WEBHOOK_RETRY_SCHEDULE)}. "
            '"none": never retried.'
        )
        if self.instance.pk and self.instance.filter is not None:
            self.initial["filter"] = json.dumps(self.instance.filter, indent=2, ensure_ascii=False)
        if self.instance.pk and self.instance.retry_schedule is not None:
            steps = self.instance.retry_schedule
            self.initial["retry_schedule"] = policy.format_schedule(steps) if steps else "none"

    def clean_retry_schedule(self):
        text = (self.cleaned_data["retry_schedule"] or "").strip()
        if not text:
            return None
        if text.lower() == "none":
            return []
        try:
            return policy.parse_schedule(text)
        except policy.ScheduleError as exc:
            raise forms.ValidationError(str(exc)) from exc

    def clean_filter(self) -> dict | None:
        text = (self.cleaned_data["filter"] or "").strip()
        if not text or text == "null":
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not JSON: {exc}") from exc
        return self._api_rules("filter", value)

    def clean_kind(self):
        return self.cleaned_data.get("kind") or EndpointKind.PUSH

    def clean_ordering(self):
        return self.cleaned_data.get("ordering") or self.instance.ordering or Ordering.NONE

    def clean_payload(self):
        return self.cleaned_data.get("payload") or self.instance.payload or Payload.FULL

    def clean_url(self):
        url = self.cleaned_data["url"]
        if url and "url" in self.changed_data:
            try:
                urlsafety.check_url(url)
            except urlsafety.UnsafeURL as exc:
                raise forms.ValidationError(str(exc)) from exc
        return url

    def clean_event_types(self) -> list[str]:
        return self._api_rules("event_types", self.cleaned_data["event_types"])

    def clean_headers(self) -> dict[str, str]:
        return self._api_rules("headers", self.cleaned_data["headers"])

    def clean_exclude_fields(self) -> list[str]:
        return self._api_rules("exclude_fields", self.cleaned_data["exclude_fields"])

    def _api_rules(self, name: str, value):
        """`value` for field `name` as the API's serializer validates it (the same rules, the
        same words), or a ValidationError with its messages."""
        # The organization chosen on the add page (cleaned before these fields) for its registered types.
        context = {"organization": self.cleaned_data.get("organization")}
        instance = self.instance if self.instance.pk else None
        serializer = EndpointSerializer(instance, data={name: value}, partial=True, context=context)
        if serializer.is_valid():
            return serializer.validated_data[name]
        raise forms.ValidationError(_messages(serializer.errors.get(name, serializer.errors)))

    def clean(self):
        cleaned = super().clean()
        if "url" in cleaned and (problem := url_problem(cleaned.get("kind", self.instance.kind), cleaned["url"])):
            self.add_error("url", problem)
        self._clean_client_certificate(cleaned)
        organization = cleaned.get("organization") or getattr(self.instance, "organization", None)
        agent = cleaned.get("agent")
        if agent and organization and agent.organization_id != organization.pk:
            self.add_error("agent", f"{agent} belongs to another organization than {organization}.")
        if cleaned.get("run") is not None:
            self._clean_run(cleaned, cleaned["run"], organization)
        elif cleaned.get("expires_at") is not None:
            self.add_error("expires_at", "Only a run subscription expires: choose its run, or leave this empty.")
        return cleaned

    def _clean_run(self, cleaned: dict, run, organization) -> None:
        """A run subscription made here: the API's rules (its organization's run, not ended;
        the run's agent; a TTL within bounds, by default the setting's; in order unless chosen)."""
        if organization and run.agent.organization_id != organization.pk:
            self.add_error("run", f"Run {run.pk} belongs to another organization than {organization}.")
        elif run_subscriptions.run_ended(run := run_subscriptions.hold_run(run)):  # the admin saves in this transaction
            self.add_error(
                "run",
                f"Run {run.pk} already ended ({run.status}): its last event was published, so nothing is left to send.",
            )
        if cleaned.get("kind", EndpointKind.PUSH) != EndpointKind.PUSH:
            self.add_error("kind", "A run subscription is pushed to its URL: choose push.")
        agent = cleaned.get("agent")
        if agent and agent.pk != run.agent_id:
            self.add_error("agent", f"A run subscription takes its run's agent ({run.agent}): leave this empty.")
        cleaned["agent"] = run.agent
        now = timezone.now()
        if cleaned.get("expires_at") is None:
            cleaned["expires_at"] = now + run_subscriptions.default_ttl()
        elif problem := run_subscriptions.ttl_problem(cleaned["expires_at"], now):
            self.add_error("expires_at", problem[:1].upper() + problem[1:] + ".")
        if not self.data.get(self.add_prefix("ordering")):  # not chosen (a script's post): the API's default
            cleaned["ordering"] = run_subscriptions.DEFAULT_ORDERING

    def _clean_client_certificate(self, cleaned: dict) -> None:
        self.client_certificate = ...  # Ellipsis: unchanged; None: remove; else the new one
        cert, key = cleaned.get("client_certificate") or "", cleaned.get("client_key") or ""
        if cleaned.get("remove_client_certificate"):
            if cert.strip() or key.strip():
                self.add_error("remove_client_certificate", "Either remove it or give a new one, not both.")
            self.client_certificate = None
        elif cert.strip() or key.strip():
            if not cert.strip() or not key.strip():
                missing = "client_key" if cert.strip() else "client_certificate"
                self.add_error(missing, "Required with the other half of the client certificate.")
                return
            try:
                self.client_certificate = clientcert.parse(cert, key)
            except clientcert.ClientCertificateError as exc:
                self.add_error(exc.field, str(exc))

    def save(self, commit=True):
        wanted = getattr(self, "client_certificate", ...)
        if wanted is None:
            self.instance.remove_client_certificate()
        elif isinstance(wanted, clientcert.ClientCertificate):
            self.instance.set_client_certificate(wanted.cert_pem, wanted.key_pem)
        return super().save(commit)


def _messages(detail) -> list[str]:
    """DRF's error detail (a list, or a dict by item or name) as flat sentences."""
    if isinstance(detail, dict):
        return [
            f"{f'Item {key + 1}' if isinstance(key, int) else key}: {message}"
            for key, value in detail.items()
            for message in _messages(value)
        ]
    if isinstance(detail, list):
        return [message for item in detail for message in _messages(item)]
    text = str(detail)
    return [text[:1].upper() + text[1:]]


class ScopeFilter(admin.SimpleListFilter):
    title = "scope"
    parameter_name = "scope"

    def lookups(self, request, model_admin):
        return [("all", "All agents"), ("agent", "One agent"), ("run", "One run (run subscriptions)")]

    def queryset(self, request, queryset):
        if self.value() == "all":
            return queryset.filter(agent__isnull=True)
        if self.value() == "agent":
            return queryset.filter(agent__isnull=False, run__isnull=True)
        if self.value() == "run":
            return queryset.filter(run__isnull=False)
        return queryset


@admin.register(Endpoint)
class EndpointAdmin(DeletesItsLog, admin.ModelAdmin):
    form = EndpointForm
    # Narrow columns, so the list fits a 1400 px screen beside the admin's sidebars: the URL is
    # cut short (whole in its tooltip) with the description under it.
    list_display = [
        "endpoint", "organization", "scope", "subscribed_events", "active", "last_delivery", "success_24h", "charts",
    ]  # fmt: skip
    list_select_related = ["organization", "agent"]
    list_filter = ["is_active", ScopeFilter, "organization"]
    search_fields = ["url", "description", "=id", "agent__name"]
    autocomplete_fields = ["organization", "agent", "run"]
    ordering = ["-created_at"]
    actions = [
        "send_test_event", "enable", "disable", "rotate_secret", "retry_waiting_deliveries",
        "recover_failed_deliveries",
    ]  # fmt: skip
    readonly_fields = [
        "id",
        "organization",
        "disabled_at",
        "disabled_reason",
        "failing_since",
        "consecutive_failures",
        "last_delivery",
        "success_24h",
        "secret_status",
        "client_certificate_status",
        "run_subscription",
        "created_at",
        "updated_at",
    ]

    def get_fieldsets(self, request, obj=None):
        # Shown read-only, a JSON field is shown whole: someone who may only view gets it masked.
        can_change = obj is None or self.has_change_permission(request, obj)
        headers = "headers" if can_change else "masked_headers"
        editable = [
            "kind",
            "url",
            "agent",
            "description",
            "event_types" if can_change else "subscribed_events",
            "filter" if can_change else "filter_shown",
            "payload",
            "exclude_fields",
            headers,
            "rate_limit",
            "retry_schedule",
            "ordering",
            "is_active",
        ]
        # The certificate's fields are write-only: someone who may only view sees its status.
        mtls = ["client_certificate", "client_key"] + (["remove_client_certificate"] if obj else [])
        mtls = ([] if obj is None else ["client_certificate_status"]) + (mtls if can_change else [])
        if obj is None:
            return [
                (None, {"fields": ["organization", *editable]}),
                (
                    "Run subscription",
                    {
                        "fields": ["run", "expires_at"],
                        "description": "To subscribe to one run only, choose it here; choose the ordering "
                        '"run" above to get its events one at a time, in their order.',
                    },
                ),
                ("Mutual TLS", {"fields": mtls}),
            ]
        return [
            (None, {"fields": ["id", "organization", *editable]}),
            *([("Run subscription", {"fields": ["run_subscription"]})] if obj.run_id else []),
            (
                "Health",
                {
                    "fields": [
                        "last_delivery",
                        "success_24h",
                        "disabled_at",
                        "disabled_reason",
                        "failing_since",
                        "consecutive_failures",
                    ]
                },
            ),
            ("Signing", {"fields": ["secret_status", "created_at", "updated_at"]}),
            ("Mutual TLS", {"fields": mtls}),
        ]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else [*self.readonly_fields, "kind"]  # the kind is chosen once

    def get_queryset(self, request):
        # Secrets are never shown, so never loaded for a page either.
        queryset = (
            super()
            .get_queryset(request)
            .defer("secret_encrypted", "previous_secret_encrypted", "client_cert_encrypted", "client_key_encrypted")
        )
        return with_delivery_stats(queryset)

    @admin.display(description="endpoint", ordering="url")
    def endpoint(self, obj) -> str:
        description = Truncator(obj.description).chars(URL_CHARS)
        url = obj.url or "pull: read from the feed"
        return format_html(
            '<span title="{}">{}</span>{}',
            url,
            Truncator(url).chars(URL_CHARS),
            format_html('<br><span class="quiet">{}</span>', description) if description else "",
        )

    @admin.display(description="event types")
    def subscribed_events(self, obj) -> str:
        return format_html("{}{}{}", self._patterns(obj), self._filtered(obj), self._shaped(obj))

    @staticmethod
    def _patterns(obj) -> str:
        patterns = obj.event_types or []
        if not patterns:
            everything = "all the run's events" if obj.run_id else "all agent events"
            return format_html('<span class="quiet">{}</span>', everything)
        shown = ", ".join(patterns[:EVENT_TYPES_SHOWN])
        more = f" +{len(patterns) - EVENT_TYPES_SHOWN} more" if len(patterns) > EVENT_TYPES_SHOWN else ""
        return format_html('<span title="{}">{}{}</span>', ", ".join(patterns), shown, more)

    @staticmethod
    def _shaped(obj) -> str:
        """A "thin" or "redacted" marker under the types, what is left out in its tooltip."""
        if obj.payload == Payload.FULL and not obj.exclude_fields:
            return ""
        label = "thin" if obj.payload == Payload.THIN else "redacted"
        title = "only ids in data" if obj.payload == Payload.THIN else ""
        if obj.exclude_fields:
            title = ", ".join(filter(None, [title, "without " + ", ".join(obj.exclude_fields)]))
        return format_html('<br><span class="quiet shaped" title="{}">{}</span>', title, label)

    @staticmethod
    def _filtered(obj) -> str:
        """A "filtered" marker under the types, the filter in its tooltip."""
        if obj.filter is None:
            return ""
        try:
            condition = content_filter.describe(content_filter.check(obj.filter))
        except content_filter.FilterError as exc:
            condition = f"invalid, ignored: {exc}"
        return format_html('<br><span class="quiet filtered" title="{}">filtered</span>', condition)

    @admin.display(description="content filter")
    def filter_shown(self, obj) -> str:
        if obj.filter is None:
            return "—"
        return format_html('<pre style="margin: 0">{}</pre>', json.dumps(obj.filter, indent=2, ensure_ascii=False))

    @admin.display(description="scope", ordering="agent__name")
    def scope(self, obj) -> str:
        if obj.run_id:  # a run subscription (webhooks/run_subscriptions.py): its run, and whether it still takes events
            return format_html('run <code>{}</code><br><span class="quiet">{}</span>', obj.run_id, obj.state)
        return obj.agent.name if obj.agent_id else "all agents"

    @admin.display(description="run subscription")
    def run_subscription(self, obj) -> str:
        """Its run, its state, and when it ended or expires."""
        moment, at = ("ended", obj.ended_at) if obj.ended_at else ("expires", obj.expires_at)
        when = f"{moment} {at:%Y-%m-%d %H:%M:%S} UTC" if at else "no time to live"
        url = reverse("admin:agents_hooks_run_change", args=[quote(obj.run_id)])
        return format_html('run <a href="{}">{}</a>: {} ({})', url, obj.run_id, obj.state, when)

    @admin.display(description="active", boolean=True, ordering="is_active")
    def active(self, obj) -> bool:
        return obj.is_active

    @admin.display(description="last delivery", ordering="last_delivery_status")
    def last_delivery(self, obj) -> str:
        return status_badge(getattr(obj, "last_delivery_status", None))

    @admin.display(description="success (24 h)", ordering="deliveries_24h")
    def success_24h(self, obj) -> str:
        rate = success_rate(obj)
        if rate is None:
            return "—"
        url = reverse("admin:deliveries_delivery_changelist") + "?" + urlencode({"endpoint__id__exact": obj.pk})
        return format_html('<a href="{}">{}</a>', url, f"{rate:.0%} of {obj.deliveries_24h}")

    @admin.display(description="statistics")
    def charts(self, obj) -> str:
        return format_html('<a href="{}">charts</a>', reverse("admin:webhooks_endpoint_stats", args=[quote(obj.pk)]))

    def get_urls(self):
        stats = self.admin_site.admin_view(self.stats_view)
        replays = self.admin_site.admin_view(self.replay_view)
        return [
            path("<path:object_id>/stats/", stats, name="webhooks_endpoint_stats"),
            path("<path:object_id>/replay/", replays, name="webhooks_endpoint_replay"),
            *super().get_urls(),
        ]

    def replay_view(self, request, object_id):
        """Start a replay of past events to the endpoint, and follow its replays (admin_replay.py)."""
        endpoint = self.get_object(request, unquote(object_id))
        if endpoint is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_permission(request, endpoint):
            raise PermissionDenied
        return admin_replay.replay_page(self, request, endpoint)

    def stats_view(self, request, object_id):
        """The endpoint's charts over the last 24 hours and 7 days (deliveries/dashboard.py)."""
        endpoint = self.get_object(request, unquote(object_id))
        if endpoint is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_permission(request, endpoint):
            raise PermissionDenied
        return dashboard.endpoint_page(request, endpoint, self.admin_site.each_context(request))

    @admin.display(description="custom headers")
    def masked_headers(self, obj) -> str:
        return format_html('<pre style="margin: 0">{}</pre>', format_headers(obj.headers)) if obj.headers else "—"

    @admin.display(description="secret")
    def secret_status(self, obj) -> str:
        if obj.previous_secret_expires_at and obj.previous_secret_expires_at > timezone.now():
            return f"Rotated; the previous secret also signs until {obj.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC."
        return (
            "Set. It was shown once, when the endpoint was created; it is shown once again only when rotated "
            "(action “Rotate secret”), never here."
        )

    @admin.display(description="client certificate")
    def client_certificate_status(self, obj) -> str:
        if not obj.client_cert_subject:
            return "None."
        return (
            f"Set: {obj.client_cert_subject}, expires {obj.client_cert_expires_at:%Y-%m-%d %H:%M} UTC. "
            "The certificate and key are never displayed."
        )

    def save_model(self, request, obj, form, change):
        # Switching it on or off is the services' to do (they record why, hold or release the
        # deliveries, and report it); the form saves the rest.
        switch_on = switch_off = False
        if change and "is_active" in form.changed_data:
            switch_on, switch_off = obj.is_active, not obj.is_active
            obj.is_active = not obj.is_active
        super().save_model(request, obj, form, change)
        if not change:
            # The endpoint's page, where "Save" now leads (`response_post_save_add`), shows it.
            self.message_user(request, secret_message(obj, obj.secret), messages.WARNING)
        if switch_off:
            disable_endpoints(Endpoint.objects.filter(pk=obj.pk), f"disabled by {request.user.get_username()}")
            obj.refresh_from_db()
        if switch_on:
            held = resume_endpoint(obj)
            if held:
                self.message_user(request, f"Enabled; {held} held deliveries are being sent.", messages.INFO)

    def response_post_save_add(self, request, obj):
        """After "Save" on the add page, the new endpoint's page (with its secret, once), not the list."""
        return HttpResponseRedirect(reverse("admin:webhooks_endpoint_change", args=[quote(obj.pk)]))

    # --- actions ------------------------------------------------------------------------

    @staticmethod
    def _selected(queryset):
        """The selected endpoints without the changelist's aggregate annotations."""
        return Endpoint.objects.filter(pk__in=list(queryset.values_list("pk", flat=True))).order_by("created_at")

    @admin.action(description="Send test event", permissions=["change"])
    def send_test_event(self, request, queryset):
        sent = []
        for endpoint in self._selected(queryset):
            try:
                sent.append((endpoint, send_test(endpoint)))
            except EndpointDisabled:
                self.message_user(
                    request, f"{endpoint.url} is disabled: enable it, then send a test event.", messages.WARNING
                )
            except RuntimeError as exc:
                self.message_user(request, f"{endpoint.url}: {exc}", messages.ERROR)
        # Inside a transaction the delivery is not committed, so no worker could see it yet.
        wait = 0.0 if connection.in_atomic_block else TEST_WAIT_SECONDS
        deadline = time.monotonic() + wait
        for endpoint, delivery in sent:
            if delivery is None:  # a pull endpoint: nothing is POSTed
                self.message_user(request, f"{endpoint.pk}: a pull endpoint, its test event is in its feed.")
                continue
            attempt = wait_for_first_attempt(delivery, deadline - time.monotonic())
            self.message_user(request, *_test_result(endpoint, delivery, attempt, wait))

    @admin.action(description="Enable selected endpoints (send held deliveries)", permissions=["change"])
    def enable(self, request, queryset):
        enabled = held = 0
        for endpoint in self._selected(queryset):
            enabled += not endpoint.is_active
            held += resume_endpoint(endpoint)
        self.message_user(request, f"Enabled {enabled} endpoint(s); {held} held deliveries are being sent.")

    @admin.action(description="Disable selected endpoints", permissions=["change"])
    def disable(self, request, queryset):
        reason = f"disabled by {request.user.get_username()}"
        count = disable_endpoints(self._selected(queryset), reason)
        self.message_user(
            request, f"Disabled {count} endpoint(s). New deliveries are held until they are enabled again."
        )

    @admin.action(description="Rotate secret (the new one is shown once)", permissions=["change"])
    def rotate_secret(self, request, queryset):
        for endpoint in self._selected(queryset):
            secret = endpoint.rotate_secret()
            grace = f"The previous secret also signs until {endpoint.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC."
            self.message_user(request, secret_message(endpoint, secret, grace), messages.WARNING)

    @admin.action(description="Retry waiting deliveries now", permissions=["change"])
    def retry_waiting_deliveries(self, request, queryset):
        total = 0
        for endpoint in self._selected(queryset):
            if not endpoint.is_active:
                self.message_user(
                    request, f"{endpoint.url} is disabled: enabling it sends its held deliveries.", messages.WARNING
                )
                continue
            total += retry_pending(endpoint)
        self.message_user(
            request, f"Sending {total} waiting deliver{pluralize(total, 'y,ies')} now instead of at their retry time."
        )

    @admin.action(description="Recover failed deliveries (last 24 h)", permissions=["change"])
    def recover_failed_deliveries(self, request, queryset):
        since = timezone.now() - datetime.timedelta(hours=24)
        total = 0
        for endpoint in self._selected(queryset):
            count = recover_endpoint(endpoint, since=since)
            total += count
            if count and not endpoint.is_active:
                self.message_user(
                    request,
                    f"{endpoint.url} is disabled: its {count} recovered deliveries wait until it is enabled.",
                    messages.WARNING,
                )
        self.message_user(
            request, f"Retrying {total} failed or dead deliver{pluralize(total, 'y,ies')} from the last 24 h."
        )


def secret_message(endpoint: Endpoint, secret: str, after: str = "") -> str:
    """The one showing of a new signing secret (on creation or rotation), in a message."""
    return format_html(
        'Signing secret of {}: <code class="new-secret" style="{}">{}</code> Copy it now: '
        "<strong>it will not be shown again.</strong> {}",
        endpoint.url,
        "font-size: 1.1em; padding: 2px 6px; background: var(--body-bg); user-select: all",
        secret,
        after,
    )


def _test_result(endpoint: Endpoint, delivery: Delivery, attempt: Attempt | None, waited: float):
    """The message for one test send: (text, level)."""
    link = reverse("admin:deliveries_delivery_change", args=[delivery.pk])
    if attempt is None:
        text = format_html(
            'Test event to {} queued (<a href="{}">delivery {}</a>); no attempt within {} s: is a worker running?',
            endpoint.url,
            link,
            delivery.pk,
            f"{waited:.0f}",
        )
        return text, messages.WARNING
    if attempt.status_code is None:
        text = format_html(
            'Test event to {} failed after {} ms: {} (<a href="{}">delivery {}</a>, retried automatically).',
            endpoint.url,
            attempt.duration_ms,
            attempt.error,
            link,
            delivery.pk,
        )
        return text, messages.ERROR
    ok = 200 <= attempt.status_code < 300
    excerpt = "" if ok or not attempt.response_body else f" Response: {Truncator(attempt.response_body).chars(120)}"
    text = format_html(
        'Test event to {}: HTTP {} in {} ms (<a href="{}">delivery {}</a>).{}',
        endpoint.url,
        attempt.status_code,
        attempt.duration_ms,
        link,
        delivery.pk,
        excerpt,
    )
    return text, messages.SUCCESS if ok else messages.WARNING


# Event types organizations registered (POST /api/v1/event-types/): their admin has its own module.
from . import admin_event_types  # noqa: E402, F401
