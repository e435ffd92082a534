"""The admin's endpoint fields as people type them: event types one per line, headers as
"Name: value" lines.

The API takes JSON (a list, an object); a person typing `agent.step.*` into a JSON box got
"Enter a valid JSON." These fields only turn lines into the API's values; the rules (known
event types, header names, credentials written back masked) are the API serializer's, applied
by the form (`EndpointForm.clean_event_types`, `clean_headers`), so both surfaces accept the same.
JSON typed the old way (`["agent.step.*"]`, `{"X-Team": "ops"}`) is still understood.
"""

import json
import re

from django import forms

from .models import redact_headers

# Event types hold no spaces or commas: any run of them separates two.
_SEPARATORS = re.compile(r"[,\s]+")


def parse_event_types(text: str) -> list[str]:
    """The event types or patterns in `text`, in order, once each; [] for none."""
    text = (text or "").strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                text = ",".join(value)
    items = (item.strip("\"'") for item in _SEPARATORS.split(text))
    return list(dict.fromkeys(item for item in items if item))


def format_event_types(patterns: list[str] | None) -> str:
    return "\n".join(patterns or [])


def parse_headers(text: str) -> dict[str, str]:
    """The headers of "Name: value" lines (blank lines skipped). Raises ValidationError naming
    the line that is not one, or a name given twice."""
    text = text or ""
    if text.strip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
                return value
    headers: dict[str, str] = {}
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name:
            shown = line.strip() if len(line.strip()) <= 40 else line.strip()[:40] + "…"
            raise forms.ValidationError(
                f"Line {number} ({shown!r}) is not a header: write one per line as “Name: value”, e.g. “X-Team: ops”."
            )
        if name.lower() in seen:
            raise forms.ValidationError(f"Header {name!r} is given twice (lines {seen[name.lower()]} and {number}).")
        seen[name.lower()] = number
        headers[name] = value.strip()
    return headers


def format_headers(headers: dict[str, str] | None) -> str:
    """`headers` as "Name: value" lines, credential values masked: never a secret in the page."""
    return "\n".join(f"{name}: {value}" for name, value in redact_headers(headers or {}).items())


class EventTypesField(forms.CharField):
    """One event type or pattern per line, or separated by commas; empty for all agent events."""

    # The empty box says what empty means (an example here would read as a subscription).
    widget = forms.Textarea(attrs={"rows": 3, "cols": 40, "placeholder": "all agent events"})

    def to_python(self, value) -> list[str]:
        return parse_event_types(super().to_python(value))

    def prepare_value(self, value):
        return format_event_types(value) if isinstance(value, list) else value


class ExcludeFieldsField(EventTypesField):
    """Dotted paths inside an event's `data` never sent, one per line (or separated by commas,
    as event types are); empty for none. The rules are the API's (`payload_shape`)."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 40, "placeholder": "nothing excluded"})


class HeadersField(forms.CharField):
    """Custom headers, one "Name: value" per line. Shown with credential values masked
    (`credentials.MASK`); the mask written back stands for the stored value."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 60, "placeholder": "X-Team: ops"})

    def __init__(self, **kwargs):
        kwargs.setdefault("strip", False)
        super().__init__(**kwargs)

    def to_python(self, value) -> dict[str, str]:
        return parse_headers(super().to_python(value))

    def prepare_value(self, value):
        return format_headers(value) if isinstance(value, dict) else value
