"""Admin for the event types organizations registered (`POST /api/v1/event-types/`).

Its own module, imported at the end of admin.py, so the endpoint admin stays one subject. The
form applies the API's rules (`webhooks.event_types`: the name rule, the schema checks), with
the same words, so both surfaces accept the same.
"""

import json

from django import forms
from django.contrib import admin

from . import event_types
from .models import EventType


class SchemaField(forms.JSONField):
    """JSON in a textarea, indented for people to read and edit; empty for none."""

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value  # what was typed, shown back with its error
        return "" if value is None else json.dumps(value, indent=2, ensure_ascii=False)


class EventTypeForm(forms.ModelForm):
    schema = SchemaField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 16, "cols": 80, "style": "font-family: monospace"}),
        help_text="A JSON Schema (Draft 2020-12) that every published event's <code>data</code> must satisfy; "
        "empty for none. It applies to events published from now on.",
    )

    class Meta:
        model = EventType
        fields = ["organization", "name", "description", "schema"]

    def clean_name(self) -> str:
        return self._rule(event_types.check_name, self.cleaned_data["name"])

    def clean_schema(self):
        return self._rule(event_types.check_schema, self.cleaned_data["schema"])

    @staticmethod
    def _rule(check, value):
        try:
            return check(value)
        except event_types.EventTypeError as exc:
            raise forms.ValidationError(str(exc)) from exc


@admin.register(EventType)
class EventTypeAdmin(admin.ModelAdmin):
    form = EventTypeForm
    list_display = ["name", "organization", "description", "has_schema", "updated_at"]
    list_filter = ["organization"]
    search_fields = ["name", "description"]
    list_select_related = ["organization"]
    ordering = ["organization", "name"]

    def get_readonly_fields(self, request, obj=None):
        # Endpoints subscribe to it, and its events carry it, by name: it never changes.
        return ["organization", "name"] if obj is not None else []

    @admin.display(boolean=True, description="schema")
    def has_schema(self, obj: EventType) -> bool:
        return obj.schema is not None
