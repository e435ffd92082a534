"""Content filters: of the events an endpoint's types and agent take, which it receives, decided
by the event's envelope (the JSON POSTed: `event_type`, `agent_id`, `data`, ...).

A filter is JSON, one condition, stored on the endpoint (`Endpoint.filter`; null: no filter):

    {"path": "data.status", "eq": "failed"}                       equal (a string, number, boolean or null)
    {"path": "data.status", "in": ["failed", "cancelled"]}        equal to one of a list
    {"path": "data.usage.total_tokens", "gt": 10000}              gt, gte, lt, lte: numbers
    {"path": "data.error", "exists": true}                        present and not null (false: absent or null)
    {"path": "data.usage.total_tokens", "gte": 1000, "lt": 5000}  several operators on one path: all hold
    {"and": [<condition>, ...]}   {"or": [<condition>, ...]}   {"not": <condition>}

Why this shape and not MongoDB's (`{"data.status": {"$in": [...]}}`, Convoy's): every object is
either one condition on one `path` or one of `and`/`or`/`not`, so each reads alone without
Mongo's conventions (no implicit "and" of sibling keys, no `$` to quote in a shell, no path that
could be mistaken for an operator), and every mistake has an address (`and[1].gt`), which the
400 and `test-filter` name.

Meaning. A path is dotted from the envelope's top (`event_type`, `agent_id`, `data.status`); a
segment of digits also indexes a list (`data.items.0.name`). A path that leads nowhere is
absent: absent or null fails `exists: true`, and every comparison fails on an absent value (so
`{"not": {"path": "data.x", "eq": 1}}` holds where there is no `data.x`). Values compare by type
and value, never converted: `1` equals `1.0`, not `"1"` nor `true`; `gt`..`lte` hold only for a
number.

Bounds: a filter is checked by the API and the admin (`check`) before it is stored: at most
MAX_BYTES as JSON, MAX_DEPTH levels of nesting, MAX_CONDITIONS objects, MAX_IN values in an
`in`, MAX_PATH characters in a path.

Cost. Fan-out (deliveries/fanout.py) compiles each endpoint's filter once per batch
(`compile_filter`, closures, no interpretation per event) and parses an event's stored body at
most once, and only when an endpoint in scope has a filter (`Envelope`). An oversize event
(its body a stand-in without `data`) is not filtered: its data is gone, so each endpoint its
types take gets the failed delivery that says so, rather than a silent nothing.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_BYTES = 8192
MAX_DEPTH = 8
MAX_CONDITIONS = 64
MAX_IN = 100
MAX_PATH = 200

COMPARISONS = ("eq", "in", "gt", "gte", "lt", "lte", "exists")
LOGICAL = ("and", "or", "not")
SYMBOLS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
OPERATORS_HELP = "path with eq, in, gt, gte, lt, lte or exists; or and, or, not"

Test = Callable[[dict], bool]
_ABSENT = object()


class FilterError(ValueError):
    """A filter the grammar refuses; `where` names the part (`and[1].gt`), "" the whole."""

    def __init__(self, where: str, problem: str):
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}" if where else problem)


# --- checking ---------------------------------------------------------------------------------


def check(value: Any) -> dict | None:
    """`value` if it is a valid filter (None: no filter), else FilterError naming the bad part."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FilterError("", f"expects an object ({OPERATORS_HELP}), got {_kind(value)}")
    if not value:
        raise FilterError("", "an empty object filters nothing: use null for no filter")
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except RecursionError:
        raise FilterError("", f"too deep: at most {MAX_DEPTH} levels of nested conditions") from None
    except (TypeError, ValueError) as exc:  # NaN, or what JSON cannot hold (only from code)
        raise FilterError("", f"not JSON: {exc}") from exc
    if size > MAX_BYTES:
        raise FilterError("", f"too large: {size} bytes as JSON, at most {MAX_BYTES}")
    counter = [0]
    _check(value, "", 1, counter)
    return value


def _check(node: Any, where: str, depth: int, counter: list[int]) -> None:
    if depth > MAX_DEPTH:
        raise FilterError(where, f"too deep: at most {MAX_DEPTH} levels of nested conditions")
    counter[0] += 1
    if counter[0] > MAX_CONDITIONS:
        raise FilterError(where, f"too many conditions: at most {MAX_CONDITIONS}")
    if not isinstance(node, dict):
        raise FilterError(where, f"expects an object ({OPERATORS_HELP}), got {_kind(node)}")
    if not node:
        raise FilterError(where, f"an empty condition: give {OPERATORS_HELP}")
    for key in node:
        if key not in COMPARISONS and key not in LOGICAL and key != "path":
            raise FilterError(_at(where, key), f"unknown operator; use {OPERATORS_HELP}")
    logical = [key for key in node if key in LOGICAL]
    if logical:
        if len(node) > 1:
            others = ", ".join(repr(k) for k in node if k != logical[0])
            raise FilterError(_at(where, logical[0]), f"stands alone in its object (found {others} beside it)")
        key = logical[0]
        if key == "not":
            _check(node["not"], _at(where, "not"), depth + 1, counter)
            return
        items = node[key]
        if not isinstance(items, list) or not items:
            raise FilterError(_at(where, key), f"expects a non-empty list of conditions, got {_kind(items)}")
        for i, item in enumerate(items):
            _check(item, f"{_at(where, key)}[{i}]", depth + 1, counter)
        return
    if "path" not in node:
        raise FilterError(_at(where, next(iter(node))), 'needs a "path" to compare, e.g. "data.status"')
    _path(node["path"], _at(where, "path"))
    operators = [key for key in node if key != "path"]
    if not operators:
        raise FilterError(where, f"no operator for path {node['path']!r}: add eq, in, gt, gte, lt, lte or exists")
    for op in operators:
        _check_argument(op, node[op], _at(where, op))


def _check_argument(op: str, arg: Any, where: str) -> None:
    if op == "eq" and not _scalar(arg):
        raise FilterError(where, f"expects a string, number, boolean or null, got {_kind(arg)}")
    if op == "in":
        if not isinstance(arg, list) or not arg:
            raise FilterError(
                where, f"expects a non-empty list of strings, numbers, booleans or null, got {_kind(arg)}"
            )
        if len(arg) > MAX_IN:
            raise FilterError(where, f"at most {MAX_IN} values, got {len(arg)}")
        for i, item in enumerate(arg):
            if not _scalar(item):
                raise FilterError(f"{where}[{i}]", f"expects a string, number, boolean or null, got {_kind(item)}")
    if op in SYMBOLS and op != "eq" and not _number(arg):
        raise FilterError(where, f"expects a number, got {_kind(arg)}")
    if op == "exists" and not isinstance(arg, bool):
        raise FilterError(where, f"expects true or false, got {_kind(arg)}")


def _path(path: Any, where: str) -> tuple[str, ...]:
    if not isinstance(path, str) or not path:
        raise FilterError(where, f"expects a dotted path such as 'data.status', got {_kind(path)}")
    if len(path) > MAX_PATH:
        raise FilterError(where, f"at most {MAX_PATH} characters, got {len(path)}")
    segments = tuple(path.split("."))
    if not all(segments):
        raise FilterError(where, f"{_show(path)} has an empty segment (dotted names: 'data.usage.total_tokens')")
    return segments


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool) or _number(value)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    """A value as a 400 names it: scalars shown, containers named."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return _show(value)


def _show(value: Any) -> str:
    """A value as JSON people read it: strings quoted, true/false/null, lists shown (shortened)."""
    if value is _ABSENT:
        return "absent"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, list):
        shown = [_show(item) for item in value[:10]]
        return "[" + ", ".join(shown + (["..."] if len(value) > 10 else [])) + "]"
    if isinstance(value, dict):
        return "an object"
    return repr(value)


# --- evaluating -------------------------------------------------------------------------------


def compile_filter(value: dict) -> Test:
    """A function of an envelope (a dict) that says whether it passes `value`, a filter that
    `check` accepted. Build it once and call it per event: no interpretation of the filter then."""
    if "and" in value:
        tests = tuple(compile_filter(item) for item in value["and"])
        return tests[0] if len(tests) == 1 else _all(tests)
    if "or" in value:
        tests = tuple(compile_filter(item) for item in value["or"])
        return tests[0] if len(tests) == 1 else _any(tests)
    if "not" in value:
        inner = compile_filter(value["not"])
        return lambda envelope: not inner(envelope)
    get = _getter(_path(value["path"], "path"))
    ops = tuple(_operator(op, arg) for op, arg in value.items() if op != "path")
    if len(ops) == 1:
        (op,) = ops
        return lambda envelope: op(get(envelope))

    def each(envelope: dict) -> bool:
        found = get(envelope)
        return all(op(found) for op in ops)

    return each


def _all(tests: tuple[Test, ...]) -> Test:
    def every(envelope: dict) -> bool:
        for test in tests:
            if not test(envelope):
                return False
        return True

    return every


def _any(tests: tuple[Test, ...]) -> Test:
    def some(envelope: dict) -> bool:
        for test in tests:
            if test(envelope):
                return True
        return False

    return some


def _index(segment: str) -> bool:
    """A list index: ASCII digits only ("²".isdigit() is true, and int("²") fails)."""
    return segment.isascii() and segment.isdigit()


def _getter(segments: tuple[str, ...]) -> Callable[[dict], Any]:
    """The value at a path in an envelope, or _ABSENT."""
    steps = tuple((s, int(s) if _index(s) else None) for s in segments)
    if len(steps) == 1:
        key = segments[0]
        return lambda envelope: envelope.get(key, _ABSENT)

    def get(envelope: dict) -> Any:
        value: Any = envelope
        for key, index in steps:
            kind = type(value)
            if kind is dict:
                value = value.get(key, _ABSENT)
                if value is _ABSENT:
                    return _ABSENT
            elif kind is list and index is not None and index < len(value):
                value = value[index]
            else:
                return _ABSENT
        return value

    return get


def _operator(op: str, arg: Any) -> Callable[[Any], bool]:
    """One operator's test of the value found at the path (which may be _ABSENT)."""
    if op == "exists":
        if arg:
            return lambda found: found is not _ABSENT and found is not None
        return lambda found: found is _ABSENT or found is None
    if op == "eq":
        return _one_of([arg])
    if op == "in":
        return _one_of(arg)
    bound = arg
    if op == "gt":
        return lambda found: (type(found) is int or type(found) is float) and found > bound
    if op == "gte":
        return lambda found: (type(found) is int or type(found) is float) and found >= bound
    if op == "lt":
        return lambda found: (type(found) is int or type(found) is float) and found < bound
    return lambda found: (type(found) is int or type(found) is float) and found <= bound


def _one_of(values: list) -> Callable[[Any], bool]:
    """Equal, by type and value, to one of `values` (1 == 1.0; never "1" == 1 or true == 1)."""
    strings = frozenset(v for v in values if type(v) is str)
    numbers = frozenset(v for v in values if type(v) in (int, float))
    booleans = frozenset(v for v in values if type(v) is bool)
    null = None in values

    def test(found: Any) -> bool:
        kind = type(found)
        if kind is str:
            return found in strings
        if kind is int or kind is float:
            return found in numbers
        if kind is bool:
            return found in booleans
        return null and found is None

    return test


class Envelope:
    """An event's envelope, parsed from its stored body at most once, and only when a filter
    asks for it (`value`): fan-out makes one per event and hands it to every endpoint."""

    __slots__ = ("_body", "_value")

    def __init__(self, body: str | bytes | dict):
        self._body = body
        self._value: dict | None = body if isinstance(body, dict) else None

    @property
    def value(self) -> dict:
        if self._value is None:
            try:
                parsed = json.loads(self._body)
            except ValueError:
                parsed = None
            self._value = parsed if isinstance(parsed, dict) else {}
        return self._value


# --- explaining (test-filter) -----------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    matches: bool
    failed: str | None = None  # the part that failed (`and[0].in`, `not`, `or`), None when it matches
    reason: str | None = None  # why, in words


def explain(value: dict, envelope: dict) -> Verdict:
    """Whether `envelope` passes `value` (a checked filter) and, when not, which part failed and
    why. The same operators as `compile_filter`, walked slowly for a person (test-filter)."""
    return _explain(value, envelope, "")


def _explain(node: dict, envelope: dict, where: str) -> Verdict:
    if "and" in node:
        for i, item in enumerate(node["and"]):
            verdict = _explain(item, envelope, f"{_at(where, 'and')}[{i}]")
            if not verdict.matches:
                return verdict
        return Verdict(True)
    if "or" in node:
        reasons = []
        for i, item in enumerate(node["or"]):
            verdict = _explain(item, envelope, f"{_at(where, 'or')}[{i}]")
            if verdict.matches:
                return Verdict(True)
            reasons.append(f"{verdict.failed}: {verdict.reason}")
        return Verdict(False, _at(where, "or"), "no alternative matched (" + "; ".join(reasons) + ")")
    if "not" in node:
        if _explain(node["not"], envelope, _at(where, "not")).matches:
            return Verdict(False, _at(where, "not"), f"its condition matched: {describe(node['not'])}")
        return Verdict(True)
    path = node["path"]
    found = _getter(_path(path, "path"))(envelope)
    for op, arg in node.items():
        if op != "path" and not _operator(op, arg)(found):
            return Verdict(False, _at(where, op), f"{path} is {_show(found)}: {_wanted(op, arg)}")
    return Verdict(True)


def _wanted(op: str, arg: Any) -> str:
    if op == "exists":
        return "wanted present and not null" if arg else "wanted absent or null"
    if op == "eq":
        return f"wanted {_show(arg)}"
    if op == "in":
        return f"wanted one of {_show(arg)}"
    return f"wanted a number {SYMBOLS[op]} {_show(arg)}"


def describe(node: dict) -> str:
    """A checked filter in one line, as people write it: `data.status in ['failed'] and not (...)`."""
    for key in ("and", "or"):
        if key in node:
            return f" {key} ".join(f"({describe(item)})" for item in node[key])
    if "not" in node:
        return f"not ({describe(node['not'])})"
    parts = []
    for op, arg in node.items():
        if op == "exists":
            parts.append(f"{node['path']} {'exists' if arg else 'is absent or null'}")
        elif op == "in":
            parts.append(f"{node['path']} in {_show(arg)}")
        elif op != "path":
            parts.append(f"{node['path']} {SYMBOLS[op]} {_show(arg)}")
    return " and ".join(parts)
