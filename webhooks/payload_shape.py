"""What an endpoint receives of an event: the whole envelope, the envelope without some fields
of its `data` (`exclude_fields`), or a thin envelope (`payload: "thin"`).

Why: `agent.message.sent` carries what a user typed and step events carry usage and errors;
a receiver that only needs to know that something happened (a ticket tracker, a chat bot,
a SIEM) should not be handed the text. A thin envelope keeps every top-level field (ids, type,
times, place in its stream) but only the ids in `data` (`step_id`, `message_id`, ...), plus
`links.event`, the API path that answers the whole event to the organization's API key only.

Shaping is done when a request is built (`deliveries.compose.build`, for a POST and for the
pull feed alike), from the envelope as it was recorded: the event is stored once, whole, and
each endpoint's body is cut from it and signed as sent. An endpoint with the full payload and
nothing excluded pays nothing: its body is the recorded text, untouched.

A path is dotted from inside `data` ("content", "usage.total_tokens"); one that reaches a list
applies to each of its items ("tool_calls.arguments"). A path that names nothing in an event
is not an error: `data` differs between event types (and an organization registers its own,
webhooks/event_types.py), so a list like ["content", "usage"] serves an endpoint subscribed to
several. Excluding only ever removes: a shaped body is never larger than the envelope, bar a
thin one's `links`.
"""

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson

FULL = "full"
THIN = "thin"

MAX_PATHS = 50
MAX_PATH = 200  # characters in one path
MAX_SEGMENTS = 16

# A thin envelope's `data`, and an oversize event's stand-in (deliveries/events.py): at most
# this many ids, each a short string, an integer or null (a long value is not an id).
MAX_IDS = 20
ID_MAX = 200

# Where the whole event is read back (deliveries/api.py EventViewSet, organization-scoped):
# GET with the organization's API key. An API path: the service does not know the public
# address it is reached at (tests/test_payload_shape.py checks it against the URLconf).
EVENT_PATH = "/api/v1/events/{}/"


class ShapeError(ValueError):
    """An `exclude_fields` the API refuses; the message names the bad path."""


def check_exclude_fields(value: Any) -> list[str]:
    """`value` as an endpoint's `exclude_fields` (a list of dotted paths inside `data`, each
    once, in order), or ShapeError naming the first bad path and what is wrong with it."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ShapeError("expects a list of dotted paths inside data, e.g. ['content', 'usage.total_tokens']")
    if len(value) > MAX_PATHS:
        raise ShapeError(f"at most {MAX_PATHS} paths, got {len(value)}")
    for path in value:
        problem = _path_problem(path)
        if problem:
            shown = repr(path[:MAX_PATH] + "…" if len(path) > MAX_PATH else path) if isinstance(path, str) else path
            raise ShapeError(f"{shown}: {problem}")
    return list(dict.fromkeys(value))


def _path_problem(path: Any) -> str | None:
    if not isinstance(path, str):
        return f"expects a dotted path such as 'usage.total_tokens', got {type(path).__name__}"
    if not path:
        return "is empty: give a dotted path inside data, such as 'content'"
    if len(path) > MAX_PATH:
        return f"at most {MAX_PATH} characters, got {len(path)}"
    if any(c.isspace() or c == "," or not c.isprintable() for c in path):
        return "holds a space, comma or control character: keys are named as in the JSON, e.g. 'usage.total_tokens'"
    segments = path.split(".")
    if not all(segments):
        return "has an empty segment (dotted names inside data: 'usage.total_tokens')"
    if len(segments) > MAX_SEGMENTS:
        return f"at most {MAX_SEGMENTS} segments, got {len(segments)}"
    if segments[0] == "data" and len(segments) > 1:
        return f"paths start inside data: write {'.'.join(segments[1:])!r}"
    return None


def shapes(payload: str, exclude_fields: Sequence[str] | None) -> bool:
    """Whether an endpoint with these settings gets anything but the envelope as recorded."""
    return payload == THIN or bool(exclude_fields)


def ids_of(data: Any) -> dict:
    """The ids among `data`'s top-level fields (`id` and `…_id`), at most MAX_IDS, each short:
    by them the object an event reports can still be found and fetched."""
    ids = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if len(ids) == MAX_IDS:
                break
            if isinstance(key, str) and (key == "id" or key.endswith("_id")) and _short(value):
                ids[key] = value
    return ids


def _short(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= ID_MAX
    return value is None or (type(value) is int and abs(value) < 2**53)


def shape(envelope: dict, payload: str, exclude_fields: Sequence[str]) -> dict:
    """`envelope` as an endpoint with these settings receives it. `envelope` is not changed
    (it is shared by a batch's endpoints): what is left out is left out of copies."""
    data = envelope.get("data")
    for segments in _compiled(tuple(exclude_fields)):
        data = _without(data, segments)
    if payload != THIN:
        return {**envelope, "data": data}
    return {**envelope, "data": ids_of(data), "links": {"event": EVENT_PATH.format(envelope.get("event_id"))}}


def shaped_body(body: str | bytes, payload: str, exclude_fields: Sequence[str], parsed: dict | None = None) -> bytes:
    """The body to send (and sign) for an event recorded as `body` (its envelope's JSON);
    `parsed`, if given, is that envelope already parsed (a batch parses it once)."""
    envelope = parsed if parsed is not None else orjson.loads(body)
    return orjson.dumps(shape(envelope, payload, exclude_fields))


@lru_cache(maxsize=1024)
def _compiled(paths: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(path.split(".")) for path in paths)


def _without(value: Any, segments: tuple[str, ...]) -> Any:
    """`value` without what `segments` names: `value` itself when it names nothing, else a
    copy of only the dicts and lists on the way to what is removed."""
    kind = type(value)
    if kind is list:
        items = [_without(item, segments) for item in value]
        return value if all(new is old for new, old in zip(items, value, strict=True)) else items
    if kind is not dict:
        return value
    key, rest = segments[0], segments[1:]
    if key not in value:
        return value
    if not rest:
        return {k: v for k, v in value.items() if k != key}
    inner = _without(value[key], rest)
    return value if inner is value[key] else {**value, key: inner}
