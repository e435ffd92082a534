"""Admin for the agent platform: the things whose lifecycle our webhooks report.

Saving goes through the model's `save()`, so the admin publishes events like any other
caller: a Step saved as success here sends `agent.step.completed`, a tool added to an agent
inline sends `agent.tool.attached`.
"""

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.db import models
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from deliveries.admin import DeletesItsLog, ErasesPayloads

from .models import Agent, AgentTool, ApiKey, Job, Message, Organization, Run, Step, Tool, ToolExecution


@admin.register(Organization)
class OrganizationAdmin(DeletesItsLog, ErasesPayloads, admin.ModelAdmin):
    list_display = ["name", "id", "created_at"]
    actions = ["erase_payloads"]
    erases = "organization"
    search_fields = ["name", "=id"]
    readonly_fields = ["id", "created_at"]
    ordering = ["name"]


class AgentToolInline(admin.TabularInline):
    model = AgentTool
    extra = 0
    autocomplete_fields = ["tool"]
    readonly_fields = ["attached_at"]
    verbose_name = "attached tool"
    verbose_name_plural = "attached tools (adding one sends agent.tool.attached, removing agent.tool.detached)"


@admin.register(Agent)
class AgentAdmin(DeletesItsLog, ErasesPayloads, admin.ModelAdmin):
    list_display = ["name", "id", "organization", "created_at"]
    actions = ["erase_payloads"]
    list_select_related = ["organization"]
    list_filter = ["organization"]
    search_fields = ["name", "=id", "organization__name"]
    autocomplete_fields = ["organization"]
    readonly_fields = ["id", "created_at"]
    inlines = [AgentToolInline]
    ordering = ["-created_at"]


@admin.register(Tool)
class ToolAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "organization", "created_at"]
    list_select_related = ["organization"]
    list_filter = ["organization"]
    search_fields = ["name", "=id", "description"]
    autocomplete_fields = ["organization"]
    readonly_fields = ["id", "created_at"]
    ordering = ["name"]


class CallbackAdmin(admin.ModelAdmin):
    """Runs and jobs: status and what became of the seed 003 callback."""

    list_filter = ["status"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    readonly_fields = ["id", "created_at", "callback_sent_at", "callback_status_code", "callback_error"]
    ordering = ["-created_at"]

    @admin.display(description="callback", ordering="callback_status_code")
    def callback(self, obj) -> str:
        if not obj.callback_url:
            return "—"
        if obj.callback_error:
            return f"error: {Truncator(obj.callback_error).chars(60)}"
        if obj.callback_status_code is not None:
            return f"HTTP {obj.callback_status_code}"
        return "not sent yet"


@admin.register(Run)
class RunAdmin(CallbackAdmin):
    list_display = ["id", "agent", "status", "created_at", "completed_at", "callback"]
    list_select_related = ["agent"]
    search_fields = ["=id", "agent__name", "=agent__id"]
    raw_id_fields = ["agent"]

    def get_readonly_fields(self, request, obj=None):
        # The subscriptions' URLs are endpoints' data: shown to those who may see endpoints.
        fields = super().get_readonly_fields(request, obj)
        return [*fields, "subscriptions"] if request.user.has_perm("webhooks.view_endpoint") else fields

    @admin.display(description="run subscriptions")
    def subscriptions(self, obj) -> str:
        """The run's subscriptions (webhooks/run_subscriptions.py) with their state, and a link
        that opens a new one's form with this run chosen."""
        if obj.pk is None:
            return "—"
        rows = format_html_join(
            "",
            '<div><a href="{}">{}</a> {}: {}</div>',
            (
                (reverse("admin:webhooks_endpoint_change", args=[quote(sub.pk)]), sub.pk, sub.url, sub.state)
                for sub in obj.subscriptions.order_by("created_at", "pk")
            ),
        )
        if obj.status in Run.TERMINAL:
            more = format_html(
                '<span class="quiet">The run ended ({}): it takes no new subscription.</span>', obj.status
            )
        else:
            query = urlencode({"organization": obj.agent.organization_id, "run": obj.pk, "ordering": "run"})
            more = format_html(
                '<a href="{}?{}">Subscribe a URL to this run</a>', reverse("admin:webhooks_endpoint_add"), query
            )
        return format_html("{}<div>{}</div>", rows, more) if rows else more


@admin.register(Job)
class JobAdmin(CallbackAdmin):
    list_display = ["id", "organization", "agent", "status", "created_at", "completed_at", "callback"]
    list_select_related = ["organization", "agent"]
    search_fields = ["=id", "agent__name", "=agent__id", "organization__name"]
    raw_id_fields = ["organization", "agent"]


@admin.register(Step)
class StepAdmin(admin.ModelAdmin):
    list_display = ["id", "agent", "run", "status", "total_tokens", "created_at", "completed_at"]
    list_select_related = ["agent", "run"]
    list_filter = ["status"]
    search_fields = ["=id", "agent__name", "=agent__id", "=run__id"]
    raw_id_fields = ["agent", "run"]
    readonly_fields = ["id", "created_at"]
    ordering = ["-created_at"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "agent", "role", "excerpt", "created_at"]
    list_select_related = ["agent"]
    list_filter = ["role"]
    search_fields = ["=id", "agent__name", "=agent__id", "=step__id"]
    raw_id_fields = ["agent", "step"]
    readonly_fields = ["id", "created_at"]
    ordering = ["-created_at"]

    @admin.display(description="content")
    def excerpt(self, obj) -> str:
        return Truncator(obj.content).chars(80)


@admin.register(ToolExecution)
class ToolExecutionAdmin(admin.ModelAdmin):
    list_display = ["id", "agent", "tool", "status", "duration_ms", "created_at"]
    list_select_related = ["agent", "tool"]
    list_filter = ["status"]
    search_fields = ["=id", "agent__name", "tool__name", "=step__id"]
    raw_id_fields = ["agent", "tool", "step"]
    readonly_fields = ["id", "created_at"]
    ordering = ["-created_at"]


class RevokedFilter(admin.SimpleListFilter):
    title = "revoked"
    parameter_name = "revoked"

    def lookups(self, request, model_admin):
        return [("no", "Active"), ("yes", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(revoked_at__isnull=True)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are issued here: the key is shown once, in the message after saving; only its
    hash is stored, so it can never be shown again."""

    list_display = ["key_prefix", "name", "organization", "created_at", "last_used_at", "status"]
    list_select_related = ["organization"]
    list_filter = [RevokedFilter, "organization"]
    search_fields = ["key_prefix", "name", "organization__name"]
    autocomplete_fields = ["organization"]
    actions = ["revoke"]
    ordering = ["-created_at"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["organization", "name"]
        return ["key_prefix", "organization", "name", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["key_prefix", "organization", "created_at", "last_used_at"]

    @admin.display(description="status", ordering="revoked_at")
    def status(self, obj) -> str:
        """Active (green) or revoked and when: a red cross under "revoked" read as a problem."""
        if obj.revoked_at is None:
            return format_html('<strong style="color: #2e7d32">{}</strong>', "active")
        revoked = timezone.localtime(obj.revoked_at).strftime("%Y-%m-%d %H:%M")
        return format_html('<span style="color: #c62828">revoked {}</span>', revoked)

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        row, key = ApiKey.issue(obj.organization, name=obj.name)
        # The admin goes on with `obj` (log entry, redirect): make it the row just issued.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(row, field.attname))
        obj._state.adding, obj._state.db = False, row._state.db
        messages.warning(
            request,
            f"New API key for {obj.organization}: {key} — copy it now: only its hash is stored, "
            "it will not be shown again.",
        )

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} API key(s).", messages.SUCCESS)
