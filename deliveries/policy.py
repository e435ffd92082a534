"""The retry policy: which answers are retried, after how long, and when to give up.

The only place a delay is computed. It is pure (no database, no broker): the store asks it
what an attempt's answer means and when the next attempt is due, and writes that time on the
delivery (`next_attempt_at`), where the due loop finds it. So the time the API and the admin
show is the time the attempt is made.

The schedule lists the waits before each retry, the first retry included. The default,
WEBHOOK_RETRY_SCHEDULE, is Svix's: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, about 27 hours
in all, so a receiver that is down for a night still gets its events. An endpoint may set its
own (`Endpoint.retry_schedule`). Each wait is jittered by up to WEBHOOK_RETRY_JITTER of
itself either way (default 20%): deliveries that failed together, in an outage, come back
spread out instead of in one burst at the receiver that just recovered. A receiver's
Retry-After (429, 503) is honoured when it asks for longer than the schedule, up to
WEBHOOK_RETRY_AFTER_MAX.
"""

import enum
import random
import re
from collections.abc import Sequence

from django.conf import settings

# Limits of a schedule (the API, the admin and the settings check them alike).
MAX_RETRIES = 20
MAX_STEP_SECONDS = 24 * 3600
MAX_TOTAL_SECONDS = 7 * 24 * 3600

RETRYABLE_STATUSES = frozenset({408, 425, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:\d+\s*[smhd]\s*)+|\d+")  # "300", "5m", "1h30m"
_PART = re.compile(r"(\d+)\s*([smhd]?)")


class Verdict(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the receiver refused it, or the URL is not allowed: retrying cannot help
    RETRY = "retry"  # no answer, 408, 425, 429 or 5xx: try again if the schedule allows


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message says why, for a 400 or a form error."""


def judge(status_code: int | None, refused: bool = False) -> Verdict:
    """What an attempt's answer means: 2xx succeeds; no answer, 408, 425, 429 and 5xx are
    retried; any other status, or a URL refused at send time, fails at once."""
    if status_code is not None and 200 <= status_code < 300:
        return Verdict.SUCCEEDED
    if refused or (status_code is not None and status_code < 500 and status_code not in RETRYABLE_STATUSES):
        return Verdict.FAILED
    return Verdict.RETRY


def next_delay(
    made: int,
    schedule: Sequence[int],
    *,
    retry_after: float | None = None,
    status_code: int | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds from now until the next attempt, after `made` failed attempts of this series
    (the one just made included); None when the schedule is used up and the delivery is dead."""
    if made < 1 or made > len(schedule):
        return None
    delay = float(schedule[made - 1])
    jitter = settings.WEBHOOK_RETRY_JITTER
    if jitter:
        delay *= (rng or random).uniform(1 - jitter, 1 + jitter)
    if retry_after and status_code in RETRY_AFTER_STATUSES:
        delay = max(delay, min(retry_after, settings.WEBHOOK_RETRY_AFTER_MAX))
    return delay


def schedule_of(endpoint) -> list[int]:
    """The schedule a delivery follows: its endpoint's own, else the default."""
    own = getattr(endpoint, "retry_schedule", None)
    return list(own) if own is not None else list(settings.WEBHOOK_RETRY_SCHEDULE)


def parse_schedule(value) -> list[int]:
    """A schedule from a list (of seconds, or of "5m"-style strings) or a comma-separated
    string ("5s, 5m, 30m, 2h"); checked against the limits. Raises ScheduleError."""
    if isinstance(value, str):
        items = [part for part in value.split(",") if part.strip()] if value.strip() else []
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ScheduleError('a list of waits in seconds, e.g. [5, 300, 1800], or "5s, 5m, 30m"')
    return validate_schedule([_seconds(item, n) for n, item in enumerate(items, 1)])


def _seconds(item, position: int) -> int:
    if isinstance(item, bool):
        raise ScheduleError(f"wait {position}: {item!r} is not a duration")
    if isinstance(item, int):
        return item
    if isinstance(item, float) and item.is_integer():
        return int(item)
    try:
        return parse_duration(item if isinstance(item, str) else "")
    except ValueError:
        raise ScheduleError(
            f'wait {position}: {item!r} is not a whole number of seconds or a duration like "5m"'
        ) from None


def parse_duration(text: str) -> int:
    """Seconds in a duration as people write it: "300", "5m", "1h30m", "2d" (`format_seconds`
    writes them so). Raises ValueError for anything else."""
    text = text.strip().lower()
    if not _DURATION.fullmatch(text):
        raise ValueError(f'{text!r} is not a duration like "30s", "5m", "2h" or "1d"')
    return sum(int(count) * _UNITS[unit or "s"] for count, unit in _PART.findall(text))


def validate_schedule(steps: list[int]) -> list[int]:
    if len(steps) > MAX_RETRIES:
        raise ScheduleError(f"at most {MAX_RETRIES} retries, got {len(steps)}")
    for n, step in enumerate(steps, 1):
        if step <= 0:
            raise ScheduleError(f"wait {n} is {step}: every wait must be at least 1 second")
        if step > MAX_STEP_SECONDS:
            raise ScheduleError(f"wait {n} is {format_seconds(step)}: at most {format_seconds(MAX_STEP_SECONDS)}")
    for n in range(1, len(steps)):
        if steps[n] < steps[n - 1]:
            raise ScheduleError(f"waits must not get shorter: wait {n + 1} ({steps[n]}) < wait {n} ({steps[n - 1]})")
    if sum(steps) > MAX_TOTAL_SECONDS:
        raise ScheduleError(
            f"the waits add up to {format_seconds(sum(steps))}: at most {format_seconds(MAX_TOTAL_SECONDS)} in all"
        )
    return steps


def format_seconds(seconds: float) -> str:
    """A wait as people write it, exactly: 5s, 5m, 2h, 1h30m, 1d. (`parse_schedule` reads it back.)"""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_schedule(steps: Sequence[int]) -> str:
    return ", ".join(format_seconds(s) for s in steps)
