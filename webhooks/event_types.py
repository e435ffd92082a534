"""Event types an organization registers to publish itself (`POST /api/v1/event-types/`, then
`POST /api/v1/events/`): the name rule, the JSON Schema checks, and the services that register,
change, list and look them up.

The built-in catalog (catalog.py) is the platform's own: its types are published by the
platform, never over HTTP, and no registered name may collide with it or take one of its
prefixes. Endpoints subscribe to registered types as to built-in ones (`subscribable_names`,
used by the endpoint's validation through `catalog.unknown_patterns`).

Schemas are JSON Schema Draft 2020-12, checked by the reference validator (`jsonschema`) when
registered, so a broken schema is a 400 then rather than every publish failing later. `format`
stays an annotation, as the draft makes it by default: the validator checks only some formats
(not `date-time` without extra packages), and a check that silently skips is worse than none.
A schema is bounded (size, depth, local `$ref`s only, short regexes without nested
quantifiers) because it runs on the web process against every published event.
"""

import itertools
import json
import re

from django.db import IntegrityError, transaction
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from . import catalog
from .models import EventType

NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
NAME_MAX = EventType._meta.get_field("name").max_length
DESCRIPTION_MAX = EventType._meta.get_field("description").max_length
# The service's own namespaces: what it and the platform publish, now or later.
RESERVED_PREFIXES = ("agent.", "tool.", "webhook.", "endpoint.", "delivery.")
MAX_PER_ORGANIZATION = 500

SCHEMA_MAX_BYTES = 32 * 1024  # as compact JSON
SCHEMA_MAX_DEPTH = 32  # objects and arrays within one another
PATTERN_MAX = 500  # characters of a `pattern` or `patternProperties` regex
# A repeated group: `(a+)+`, `(a|aa)+`, `(\w|\d)*`, `((x)){2,}`. Such a regex can take exponential
# time on a string that almost matches (ReDoS), and Python's `re` has no timeout; telling the
# harmless repeated groups from the others is beyond a check this size, so none is taken
# (repeat single characters and classes: `[ab]+`). An optional group `(x)?` is fine.
NESTED_QUANTIFIER = re.compile(r"\)[*+{]")
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

MAX_DATA_ERRORS = 20  # a publish refused names at most this many failing paths
MESSAGE_MAX = 300  # characters of one error (jsonschema quotes the failing value whole)


class EventTypeError(ValueError):
    """A refused name, schema or event type; `field` is what a 400 names."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def check_name(name: str) -> str:
    """`name` if an organization may register it; else EventTypeError naming `name`."""
    if len(name) > NAME_MAX:
        raise EventTypeError("name", f"at most {NAME_MAX} characters")
    if not NAME.fullmatch(name):
        raise EventTypeError(
            "name",
            "lower-case dotted segments, each a letter then letters, digits or '_', at least two of them "
            "(e.g. billing.invoice.paid)",
        )
    if name in catalog.EVENT_TYPES:
        raise EventTypeError("name", f"{name} is a built-in event type")
    if name.startswith(RESERVED_PREFIXES):
        prefixes = ", ".join(f"{p}*" for p in RESERVED_PREFIXES)
        raise EventTypeError("name", f"{prefixes} are reserved for the service's own event types")
    return name


def check_schema(schema) -> dict | None:
    """`schema` if it is a usable JSON Schema (Draft 2020-12) or None; else EventTypeError naming
    `schema` and saying what is wrong."""
    if schema is None:
        return None
    if not isinstance(schema, dict):
        raise EventTypeError("schema", "must be a JSON object (a JSON Schema), or null for none")
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode(errors="surrogatepass"))
    if size > SCHEMA_MAX_BYTES:
        raise EventTypeError("schema", f"{size} bytes as JSON; at most {SCHEMA_MAX_BYTES}")
    if _depth(schema) > SCHEMA_MAX_DEPTH:
        raise EventTypeError("schema", f"nested more than {SCHEMA_MAX_DEPTH} levels deep")
    declared = schema.get("$schema")
    if declared is not None and str(declared).rstrip("#") != DRAFT_2020_12:
        raise EventTypeError("schema", f"only JSON Schema Draft 2020-12: $schema {DRAFT_2020_12!r}, or none")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "".join(f"[{p!r}]" if isinstance(p, int) else f"/{p}" for p in exc.path) or "the root"
        raise EventTypeError("schema", f"not a valid JSON Schema at {where}: {_short(exc.message)}") from None
    for keyword, value in _keywords(schema):
        if keyword in ("$ref", "$dynamicRef") and isinstance(value, str):
            _check_ref(schema, keyword, value)
        if keyword == "pattern" and isinstance(value, str):
            _check_pattern(value)
        if keyword == "patternProperties" and isinstance(value, dict):
            for pattern in value:
                _check_pattern(pattern)
    return schema


def _depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > SCHEMA_MAX_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _keywords(schema):
    """Every (key, value) of every object in `schema` (keywords, and property names alike)."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield from item.items()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_ref(schema: dict, keyword: str, ref: str) -> None:
    # No retrieval: a remote $ref would be fetched by no one and fail every publish.
    if not ref.startswith("#"):
        raise EventTypeError("schema", f"{keyword} {ref!r}: only references within the schema (#/$defs/…) are allowed")
    resolver = Registry().with_resource("", DRAFT202012.create_resource(schema)).resolver()
    try:
        resolver.lookup(ref)
    except Unresolvable:
        raise EventTypeError("schema", f"{keyword} {ref!r} points at nothing in the schema") from None


def _check_pattern(pattern: str) -> None:
    if len(pattern) > PATTERN_MAX:
        raise EventTypeError("schema", f"a regular expression of {len(pattern)} characters; at most {PATTERN_MAX}")
    if NESTED_QUANTIFIER.search(pattern):
        raise EventTypeError(
            "schema",
            f"the regular expression {pattern!r} repeats a group ((a+)+, (a|aa)+, (x)* ...), which can take "
            "exponential time on some strings; repeat single characters or classes only ([ab]+)",
        )


def _short(message: str) -> str:
    return message if len(message) <= MESSAGE_MAX else message[: MESSAGE_MAX - 1] + "…"


def data_errors(event_type: EventType, data) -> list[str]:
    """What is wrong with `data` for `event_type`, as "<path in data>: <what>" lines (`$` is
    `data` itself: `$.amount: -5 is less than the minimum of 0`); [] when it is fine."""
    if not isinstance(data, dict):
        return ["$: must be a JSON object"]
    if event_type.schema is None:
        return []
    validator = Draft202012Validator(event_type.schema)
    try:
        errors = list(itertools.islice(validator.iter_errors(data), MAX_DATA_ERRORS + 1))
    except RecursionError:
        return ["$: nested too deeply to be checked against the schema"]
    except Unresolvable as exc:  # registered before a check existed: say so, do not fail
        return [f"$: the event type's schema cannot be applied ({exc}); change its schema"]
    lines = [f"{error.json_path}: {_short(error.message)}" for error in errors[:MAX_DATA_ERRORS]]
    if len(errors) > MAX_DATA_ERRORS:
        lines.append(f"(more errors after the first {MAX_DATA_ERRORS})")
    return lines


# --- services and selectors -----------------------------------------------------------------


def registered(organization):
    """The organization's registered event types, by name."""
    return EventType.objects.filter(organization=organization).order_by("name")


def find(organization, name: str) -> EventType | None:
    """The organization's registered type `name`, or None."""
    return None if "\x00" in name else registered(organization).filter(name=name).first()


def subscribable_names(organization) -> list[str]:
    """The names an endpoint of `organization` may subscribe to beyond the built-in catalog."""
    if organization is None:
        return []
    return list(registered(organization).values_list("name", flat=True))


def register(organization, *, name: str, description: str, schema: dict | None = None) -> EventType:
    """Register an event type for `organization`; EventTypeError (naming the field) if the name
    is refused or taken, or the schema invalid. Two concurrent registrations of one name: one
    wins, the other is refused (a unique constraint)."""
    check_name(name)
    check_schema(schema)
    if registered(organization).count() >= MAX_PER_ORGANIZATION:
        raise EventTypeError("name", f"an organization may register at most {MAX_PER_ORGANIZATION} event types")
    try:
        with transaction.atomic():
            return EventType.objects.create(
                organization=organization, name=name, description=description, schema=schema
            )
    except IntegrityError:
        raise EventTypeError("name", f"{name} is already registered") from None


def change(event_type: EventType, **fields) -> EventType:
    """Change a registered type's `description` and/or `schema` (its name is what endpoints
    subscribe to and events carry: it never changes). A new schema applies to events published
    from now on."""
    if "schema" in fields:
        check_schema(fields["schema"])
    for name in ("description", "schema"):
        if name in fields:
            setattr(event_type, name, fields[name])
    event_type.save()
    return event_type


def remove(event_type: EventType) -> None:
    """Forget a registered type: it can no longer be published. Events already published stay in
    the log and are delivered; endpoints keep their subscription (register it again to resume)."""
    event_type.delete()


def publishable(organization, name: str) -> EventType:
    """The organization's registered type `name`, which it may publish; else EventTypeError
    naming `event_type` (built-in types are published by the platform itself)."""
    if name in catalog.EVENT_TYPES:
        raise EventTypeError(
            "event_type",
            f"{name} is a built-in event type: the platform publishes it itself. Register your own type "
            "with POST /api/v1/event-types/",
        )
    found = find(organization, name)
    if found is None:
        raise EventTypeError(
            "event_type",
            f"{name!r} is not an event type of your organization: register it first with POST /api/v1/event-types/",
        )
    return found


def shown(event_type: EventType) -> dict:
    """A registered type as the API shows it (the same shape as a built-in one)."""
    return {
        "name": event_type.name, "description": event_type.description, "built_in": False, "example": None,
        "schema": event_type.schema, "created_at": event_type.created_at, "updated_at": event_type.updated_at,
    }  # fmt: skip


def shown_built_in(name: str) -> dict:
    description, example = catalog.EVENT_TYPES[name]
    return {
        "name": name, "description": description, "built_in": True, "example": example, "schema": None,
        "created_at": None, "updated_at": None,
    }  # fmt: skip


def listing(organization) -> list[dict]:
    """Every type an endpoint of `organization` can subscribe to: the built-in ones, then its own."""
    return [*map(shown_built_in, catalog.EVENT_TYPES), *map(shown, registered(organization))]
