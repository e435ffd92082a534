"""Endpoint health: disable an endpoint that keeps failing, or that says it is gone; notice
one that has started failing.

As Svix does: an endpoint whose every attempt has failed for WEBHOOK_DISABLE_AFTER_HOURS
(default 5 days) is disabled, with when and why recorded. Its pending deliveries are held,
not dropped, and enabling it again (admin, API) sends them, oldest first. One success
anywhere in that window resets the clock. Failed attempts in a row are counted as well
(`consecutive_failures`): crossing WEBHOOK_FAILING_AFTER_FAILURES is news long before the
endpoint is disabled (`endpoint.failing`, deliveries/operational.py).

Costs nothing per delivery on the happy path: a batch that succeeds at endpoints that were
not failing makes no query here. A batch with failures makes one statement, which counts
them and answers with the counts and clocks as they now are.
"""

import dataclasses
import datetime

from django.conf import settings
from django.db import connection
from django.db.models import F, Value
from django.db.models.functions import Coalesce

from .models import Endpoint


@dataclasses.dataclass
class Changes:
    """What a batch changed in its endpoints' health that operators are told of."""

    disabled: list[Endpoint] = dataclasses.field(default_factory=list)  # disabled now, as disabled
    failing: list[Endpoint] = dataclasses.field(default_factory=list)  # crossed the failing threshold now


def record_attempts(
    succeeded: set[str], failed: dict[str, int], now: datetime.datetime, loaded: list[Endpoint] = ()
) -> Changes:
    """Note which endpoints answered in a batch, and how many attempts failed at each that did
    not (`failed`: endpoint id -> failed attempts); return what that changed.

    `loaded`: the endpoints as the batch loaded them (moments ago). Their records tell which
    endpoints a success must reset, so a batch that keeps succeeding costs no query. The
    threshold and the disable are judged on the counts the database answers, not on
    `loaded`: exact when several workers record failures of one endpoint at once (each
    crossing is seen by exactly one batch). `loaded` endpoints are brought up to date."""
    records = {e.pk: e for e in loaded}
    failed = {e: n for e, n in failed.items() if e not in succeeded}  # reachable in this batch: not failing
    reset = {e for e in succeeded if e not in records or records[e].failing_since or records[e].consecutive_failures}
    changes = Changes()
    if not failed and not reset:
        return changes
    threshold = settings.WEBHOOK_FAILING_AFTER_FAILURES
    hours = settings.WEBHOOK_DISABLE_AFTER_HOURS
    window_start = now - datetime.timedelta(hours=hours)
    due, crossed = [], []
    for pk, count, since in _count({**dict.fromkeys(reset, 0), **failed}, now):
        if pk in records:
            records[pk].consecutive_failures, records[pk].failing_since = count, since
        if pk in failed:
            if count - failed[pk] < threshold <= count:
                crossed.append(pk)
            if since <= window_start:
                due.append(pk)
    if crossed:
        missing = Endpoint.objects.in_bulk([pk for pk in crossed if pk not in records])
        changes.failing = [records.get(pk) or missing[pk] for pk in crossed]
    if due:
        expired = Endpoint.objects.filter(pk__in=due, failing_since__lte=window_start)
        changes.disabled = expired.disable(f"every attempt failed for {hours:g} hours", now)
    return changes


def _count(batch: dict[str, int], now: datetime.datetime) -> list[tuple[str, int, datetime.datetime | None]]:
    """Add `batch`'s failed attempts to each endpoint's run (0: a success, which ends it),
    starting the clock of those that were not failing; return (id, failures in a row,
    failing since) as they now are.

    On PostgreSQL one statement, which locks the rows in key order first: batches of several
    workers touching the same endpoints in different orders would otherwise deadlock."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_COUNT, [list(batch), list(batch.values()), now])
            return cursor.fetchall()
    for n in set(batch.values()):
        ids = [pk for pk, m in batch.items() if m == n]
        if n:
            counted = {"consecutive_failures": F("consecutive_failures") + n}
            Endpoint.objects.filter(pk__in=ids).update(**counted, failing_since=Coalesce("failing_since", Value(now)))
        else:
            Endpoint.objects.filter(pk__in=ids).update(consecutive_failures=0, failing_since=None)
    rows = Endpoint.objects.filter(pk__in=list(batch))
    return list(rows.values_list("pk", "consecutive_failures", "failing_since"))


_COUNT = f"""
WITH batch AS (SELECT * FROM unnest(%s::varchar[], %s::integer[]) AS b(id, n)),
locked AS MATERIALIZED (
    SELECT e.id FROM {Endpoint._meta.db_table} e JOIN batch b ON b.id = e.id ORDER BY e.id FOR UPDATE OF e
)
UPDATE {Endpoint._meta.db_table} AS e SET
    consecutive_failures = CASE WHEN b.n = 0 THEN 0 ELSE e.consecutive_failures + b.n END,
    failing_since = CASE WHEN b.n = 0 THEN NULL ELSE COALESCE(e.failing_since, %s) END
FROM batch b JOIN locked l ON l.id = b.id
WHERE e.id = b.id
RETURNING e.id, e.consecutive_failures, e.failing_since
"""


def mark_gone(endpoint_ids: set[str], now: datetime.datetime) -> list[Endpoint]:
    """The receiver answered 410 Gone: it asked us to stop. Return the endpoints disabled now."""
    return Endpoint.objects.filter(pk__in=endpoint_ids).disable("the endpoint answered 410 Gone", now)
