"""Query filters shared by every list endpoint, all strict: a value that cannot be read (an unknown
status, a bad datetime, an id that is not the caller's) is a 400 naming the parameter, never a
500 and never silently ignored, so a typo cannot pass for "nothing matched".

For every list's filter set (agents_hooks/filters.py, webhooks/filters.py); drf-spectacular
reads them into the schema's query parameters, so the docs and generated clients know them."""

import datetime

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField, ModelChoiceField
from rest_framework import exceptions, filters

from agents_hooks.auth import organization_of


class UTCIsoDateTimeField(IsoDateTimeField):
    """ISO 8601, in UTC: Python accepts offsets up to ±23:59, PostgreSQL only up to ±15:59 (a 500),
    and a time that UTC cannot hold (year 1 minus an offset) is invalid."""

    def to_python(self, value):
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(datetime.UTC)
        except OverflowError:
            raise ValidationError(self.error_messages["invalid"], code="invalid") from None


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


def created_after() -> UTCIsoDateTimeFilter:
    return UTCIsoDateTimeFilter(
        field_name="created_at", lookup_expr="gte", help_text="Created at or after this time (ISO 8601)."
    )


def created_before() -> UTCIsoDateTimeFilter:
    return UTCIsoDateTimeFilter(
        field_name="created_at", lookup_expr="lt", help_text="Created before this time (ISO 8601)."
    )


class StrictBooleanField(forms.Field):
    """`true` or `false` (`1`, `0`, any case); anything else is an error, where django-filter's own
    boolean reads it as "no filter"."""

    def to_python(self, value):
        if value in self.empty_values:
            return None
        word = str(value).strip().lower()
        if word in ("true", "1"):
            return True
        if word in ("false", "0"):
            return False
        raise ValidationError("must be true or false, not %(value)s", code="invalid", params={"value": repr(value)})


class StrictBooleanFilter(django_filters.BooleanFilter):
    field_class = StrictBooleanField


def choice_filter(choices, **kwargs) -> django_filters.ChoiceFilter:
    """A status (or other choice) filter whose error lists the values it takes."""
    kwargs.setdefault("help_text", "Only those with this status.")
    values = ", ".join(value for value, _ in choices)
    return django_filters.ChoiceFilter(
        choices=choices,
        error_messages={"invalid_choice": f"unknown value '%(value)s': one of {values}"},
        **kwargs,
    )


class OrganizationObjectField(ModelChoiceField):
    def to_python(self, value):
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL: no such object
            raise ValidationError(
                self.error_messages["invalid_choice"],
                code="invalid_choice",
                params={"value": value.replace("\x00", "\\x00")},
            )
        return super().to_python(value)


class OrganizationObjectFilter(django_filters.ModelChoiceFilter):
    """The id of an object of the caller's organization (`?agent=agent-…`): any other id, another
    organization's included, is a 400 naming the parameter (never an empty page, which would
    read as "none yet")."""

    field_class = OrganizationObjectField

    def __init__(self, model, organization_path: str = "organization", **kwargs):
        # Not `self.model`: the FilterSet sets that to its own model.
        self.object_model, self.organization_path = model, organization_path
        name = model._meta.verbose_name
        kwargs.setdefault("error_messages", {"invalid_choice": f"no {name} '%(value)s' in your organization"})
        # A text box in the browsable API's filter form, not a <select> of every run or step.
        kwargs.setdefault("widget", forms.TextInput)
        super().__init__(queryset=self.scoped, **kwargs)

    def scoped(self, request):
        return self.object_model.objects.filter(**{self.organization_path: organization_of(request)})


class SearchFilter(filters.SearchFilter):
    """`?search=` words, each found (case-insensitive) in one of the view's `search_fields`; a bad
    value is a 400 naming `search`, and the docs say which fields are searched."""

    def get_search_terms(self, request):
        try:
            return super().get_search_terms(request)
        except exceptions.ValidationError as exc:
            raise exceptions.ValidationError({self.search_param: exc.detail}) from exc

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        fields = ", ".join(field.lstrip("^=@$") for field in getattr(view, "search_fields", ()))
        for parameter in parameters:
            parameter["description"] = f"Words to look for (case-insensitive), each in any of: {fields}."
        return parameters
