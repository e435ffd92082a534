"""What every subcommand shares: the console (tables for people, JSON for scripts), the errors
and their exit codes, and the readers of the arguments people type (times, ids, organizations).

Exit codes: 0 done; 1 refused or failed (a delivery that cannot be retried, a test event that
got no 2xx, a `tail --count` that timed out, the database unreachable); 2 bad arguments (an
unknown id, a time or a status that cannot be read). An error is one line on stderr, never a
traceback (`--traceback` shows one).
"""

import datetime
import json

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from agents_hooks.models import Organization
from webhooks.models import Endpoint, redacted_host
from webhooks_project.filters import UTCIsoDateTimeField

from .. import policy
from ..models import Delivery, DeliveryKind, Event

OK, FAILED, BAD_ARGUMENTS = 0, 1, 2
BIGINT_MAX = 2**63 - 1


class CLIError(Exception):
    """Ends a subcommand: `message` is printed on one line to stderr, `code` is the exit status."""

    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code


def bad_argument(message: str) -> CLIError:
    return CLIError(message, BAD_ARGUMENTS)


class Console:
    """Where a subcommand writes: `print` and `table` for people, `json` for scripts (one
    document, or one per line for a stream), `note` for what goes to stderr."""

    def __init__(self, stdout, stderr, as_json: bool = False):
        self.stdout, self.stderr, self.as_json = stdout, stderr, as_json

    def print(self, text: str = "") -> None:
        self.stdout.write(text)

    def note(self, text: str) -> None:
        self.stderr.write(text, style_func=lambda x: x)

    def json(self, value) -> None:
        self.stdout.write(json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False))
        self.stdout.flush()

    def table(self, headers: list[str], rows: list[list], empty: str = "nothing matched") -> None:
        """Columns as wide as their widest cell, two spaces apart; "-" for an empty cell."""
        cells = [[_cell(value) for value in row] for row in rows]
        if not cells:
            self.print(f"({empty})")
            return
        widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
        for row in [headers, *cells]:
            self.print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    def fields(self, pairs: list[tuple[str, object]]) -> None:
        """`name: value` lines, the values aligned."""
        width = max(len(name) for name, _ in pairs) + 1
        for name, value in pairs:
            self.print(f"{name + ':':<{width}} {_cell(value)}")


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime.datetime):
        return when(value)
    return str(value)


def clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())  # a response body's line breaks would break the table
    return text if len(text) <= width else text[: width - 1] + "…"


def when(moment: datetime.datetime | None) -> str:
    """A time to the second, in the site's time zone (TIME_ZONE, UTC by default), as the admin shows it."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


# --- reading arguments ------------------------------------------------------------------------

TIME_HELP = "ISO 8601 (2026-12-01T09:30:00Z, 2026-12-01) or an age: 30m, 2h, 1d, 1h30m"


def parse_time(value: str, option: str) -> datetime.datetime:
    """A moment from ISO 8601 (read as the API reads `created_after`) or an age before now ("2h")."""
    try:
        if not value.strip().isdigit():  # a bare number is neither: "300" seconds or the year 300?
            return timezone.now() - datetime.timedelta(seconds=policy.parse_duration(value))
    except ValueError:
        pass
    except OverflowError:
        raise bad_argument(f"{option}: {value!r} is further back than a calendar goes") from None
    try:
        parsed = UTCIsoDateTimeField().to_python(value)
    except ValidationError:
        parsed = None
    if parsed is None:
        raise bad_argument(f"{option}: {value!r} is not a time: give {TIME_HELP}")
    return parsed


def parse_duration(value: str, option: str) -> datetime.timedelta:
    try:
        return datetime.timedelta(seconds=policy.parse_duration(value))
    except (ValueError, OverflowError):
        raise bad_argument(f"{option}: {value!r} is not a duration: give 30s, 5m, 2h, 1d or 1h30m") from None


def organization(value: str | None) -> Organization | None:
    """The organization named by `--organization`: its id, or a name no other organization has."""
    if value is None:
        return None
    if "\x00" not in value:  # PostgreSQL text cannot hold NUL: no organization has it
        found = Organization.objects.filter(pk=value).first()
        if found is not None:
            return found
        named = list(Organization.objects.filter(name=value)[:2])
        if len(named) == 2:
            raise bad_argument(f"--organization: more than one organization is named {value!r}: give its id")
        if named:
            return named[0]
    raise bad_argument(f"--organization: no organization {value!r}")


def endpoint(value: str, org: Organization | None = None, option: str = "") -> Endpoint:
    rows = Endpoint.objects.select_related("organization", "agent")
    return _one(rows, value, org, "organization", f"{option}: " if option else "", "endpoint")


def delivery(value: str, org: Organization | None = None) -> Delivery:
    if not value.isdigit() or int(value) > BIGINT_MAX:
        raise bad_argument(f"no delivery {value!r}: delivery ids are numbers")
    rows = Delivery.objects.select_related("event__organization", "endpoint")
    return _one(rows, int(value), org, "event__organization", "", "delivery")


def event(value: str, org: Organization | None = None) -> Event:
    return _one(Event.objects.select_related("organization", "agent"), value, org, "organization", "", "event")


def _one(rows, pk, org, organization_path: str, prefix: str, noun: str):
    """The row `pk` of `rows` (of `org`, if given), or a bad argument naming it."""
    if org is not None:
        rows = rows.filter(**{organization_path: org})
    found = None if "\x00" in str(pk) else rows.filter(pk=pk).first()  # PostgreSQL text cannot hold NUL
    if found is None:
        shown = pk if isinstance(pk, int) else repr(pk)
        within = f" in organization {org.name} ({org.pk})" if org else ""
        raise bad_argument(f"{prefix}no {noun} {shown}{within}")
    return found


def filtered(filterset_class, data: dict, queryset, options: dict[str, str]):
    """`queryset` through the API's FilterSet with `data` (filter name -> value as typed, None
    for absent); its errors become a bad argument naming the option (`options`: filter name ->
    option)."""
    filterset = filterset_class({k: v for k, v in data.items() if v is not None}, queryset=queryset)
    if not filterset.is_valid():
        name, messages = next(iter(filterset.errors.items()))
        message = " ".join(messages)
        choices = getattr(filterset.filters[name], "extra", {}).get("choices")
        if choices and not any(value in message for value, _ in choices):
            message += f" (one of: {', '.join(value for value, _ in choices)})"
        raise bad_argument(f"{options.get(name, name)}: {message}")
    return filterset.qs


# --- how rows are shown -----------------------------------------------------------------------


def target(d: Delivery) -> str:
    """Where a delivery goes, as a table shows it: the endpoint's id, or the seed target's kind,
    and the host (as log lines name it: a receiver's token in a path or a query stays off the
    screen)."""
    if d.kind == DeliveryKind.ENDPOINT and d.endpoint_id:
        return f"{d.endpoint_id} ({redacted_host(d.endpoint.url)})"
    return f"{d.kind} ({redacted_host(d.url)})"


def next_attempt(d: Delivery) -> str:
    if d.status != "pending":
        return "-"
    if d.waiting:
        return "waiting for its turn (ordered run)"
    return when(d.next_attempt_at) if d.next_attempt_at else "held (endpoint disabled)"


def last_outcome(d: Delivery) -> str:
    if d.last_status_code is not None:
        return f"HTTP {d.last_status_code}"
    return clip(d.last_error, 40) if d.last_error else "-"


def add_common(parser, *, organization: bool = True) -> None:
    """`--json` on every subcommand; `--organization` where rows are looked up or listed."""
    parser.add_argument("--json", action="store_true", dest="as_json", help="print JSON for scripts")
    if organization:
        parser.add_argument(
            "--organization",
            "--org",
            metavar="ORG",
            help="only this organization's (its id, or its name if no other has it); default: all",
        )
