"""Payload retention at scale: purge the payloads of 1,000,000 log rows, in bounded batches.

    python bench/purge.py --rows 1000000            # 400,000 events + 400,000 deliveries + 200,000 attempts
    python bench/purge.py --rows 1000000 --writer   # and a worker-like writer on the delivery table meanwhile

Fills a fresh PostgreSQL database (bench_purge) with SQL (INSERT ... SELECT generate_series):
`--rows` split 2:2:1 between events (40 days old, a ~500-byte envelope each), deliveries (one
per event; one in ten a seed target with its own body, one in a hundred still pending, held)
and attempts (every other delivery, with a response excerpt). Then runs the hourly retention
pass (`retention.expire`) and prints one JSON object: rows, total seconds, rows per second,
the longest single batch transaction (the longest any row lock is held), and the longest the
delivery rows of a batch stay locked (they are written at the end of each transaction). With
`--writer`, a thread meanwhile UPDATEs random deliveries one at a time as a worker recording
outcomes does, and the longest of those UPDATEs shows how long a worker waited on the purge.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT)]

DB_NAME = "bench_purge"


def setup_django() -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "webhooks_project.settings",
            "DJANGO_DEBUG": "false",  # DEBUG keeps every SQL query in memory
            "DJANGO_SECRET_KEY": "bench-only",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
            "WEBHOOKS_VAR_DIR": str(BENCH / "var" / "purge"),
            "LOG_LEVEL": "WARNING",
        }
    )
    if not os.environ.get("WEBHOOK_ENCRYPTION_KEYS"):
        from cryptography.fernet import Fernet

        os.environ["WEBHOOK_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
    for sql in (f"DROP DATABASE IF EXISTS {DB_NAME}", f"CREATE DATABASE {DB_NAME}"):  # a fresh schema each run
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], capture_output=True, check=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _insert_select(model, columns: dict[str, str], count: int, params: list | None = None) -> None:
    """INSERT `count` rows of `model` from generate_series (g = 1..count): `columns` maps a
    column to its SQL expression; every other NOT NULL column without a database default gets
    the model field's default (so columns added later do not break the benchmark)."""
    from django.db import connection

    names, exprs, values = list(columns), list(columns.values()), list(params or [])
    for field in model._meta.concrete_fields:
        if field.column in columns or field.null or field.primary_key or field.has_db_default():
            continue
        names.append(field.column)
        exprs.append("%s")
        values.append(field.get_db_prep_save(field.get_default(), connection))
    sql = (
        f"INSERT INTO {model._meta.db_table} ({', '.join(names)}) "
        f"SELECT {', '.join(exprs)} FROM generate_series(1, %s) AS g"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, count])


def fill(rows: int) -> dict:
    """The log to purge, `rows` in all; return the counts."""
    import datetime

    from django.db import connection, transaction
    from django.utils import timezone

    from agents_hooks.models import Organization
    from deliveries.models import Attempt, Delivery, Event
    from webhooks.models import Endpoint

    events = max(rows * 2 // 5, 1)
    attempts = max(rows - 2 * events, 0)
    start = timezone.now() - datetime.timedelta(days=40)
    with transaction.atomic():
        org = Organization.objects.create(name="bench")
        endpoint = Endpoint.objects.create(organization=org, url="https://example.com/hook")
        envelope = json.dumps({"event_type": "agent.step.completed", "data": {"text": "x" * 400}})
        _insert_select(
            Event,
            {
                "id": "'evt_bench' || lpad(g::text, 12, '0')",
                "type": "'agent.step.completed'",
                "organization_id": "%s",
                "body": "%s",
                "created_at": "%s::timestamptz + g * interval '1 millisecond'",
                "fanned_out_at": "%s::timestamptz + g * interval '1 millisecond'",
            },
            events,
            [org.pk, envelope, start, start],
        )
        _insert_select(
            Delivery,
            {
                "event_id": "'evt_bench' || lpad(g::text, 12, '0')",
                "endpoint_id": "CASE WHEN g %% 10 = 0 THEN NULL ELSE %s END",
                "kind": "CASE WHEN g %% 10 = 0 THEN 'step_complete' ELSE 'endpoint' END",
                "url": "CASE WHEN g %% 10 = 0 THEN 'https://example.com/step' ELSE '' END",
                "body": "CASE WHEN g %% 10 = 0 THEN %s END",
                "status": "CASE WHEN g %% 100 = 1 THEN 'pending' ELSE 'succeeded' END",
                "attempt_count": "CASE WHEN g %% 2 = 0 THEN 1 ELSE 0 END",
                "created_at": "%s::timestamptz + g * interval '1 millisecond'",
                "finished_at": "CASE WHEN g %% 100 = 1 THEN NULL ELSE %s::timestamptz END",
            },
            events,
            [endpoint.pk, envelope, start, start],
        )
        first = Delivery.objects.order_by("pk").values_list("pk", flat=True).first()
        _insert_select(
            Attempt,
            {
                "delivery_id": "%s + (g - 1) * 2 + 1",  # every other delivery
                "number": "1",
                "started_at": "%s::timestamptz",
                "url": "'https://example.com/hook'",
                "status_code": "200",
                "duration_ms": "12",
                "response_body": "'{\"received\": ' || g || ', \"echo\": \"' || repeat('y', 200) || '\"}'",
                "request_headers": "'{}'::jsonb",
            },
            min(attempts, events // 2),
            [first, start],
        )
    if not connection.in_atomic_block:  # the test's smoke run is inside its transaction
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    return {
        "events": Event.objects.count(),
        "deliveries": Delivery.objects.count(),
        "attempts": Attempt.objects.count(),
    }


class Writer(threading.Thread):
    """A worker's outcome writes, one UPDATE of one random delivery at a time, timed."""

    def __init__(self, first: int, last: int):
        super().__init__(daemon=True)
        self.first, self.last, self.stop, self.seconds = first, last, threading.Event(), []

    def run(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            while not self.stop.is_set():
                started = time.perf_counter()
                cursor.execute(
                    "UPDATE deliveries_delivery SET last_status_code = 200 WHERE id = %s",
                    [random.randint(self.first, self.last)],
                )
                self.seconds.append(time.perf_counter() - started)
        connection.close()


def run(rows: int, batch: int | None = None, writer: bool = False) -> dict:
    """Fill, purge, and measure (in the current database: the test runs it in its own)."""
    from django.db.models import Max, Min

    from deliveries import retention
    from deliveries.models import Delivery

    counts = fill(rows)
    default_batch = retention.BATCH
    if batch:
        retention.BATCH = batch
    batches: list[float] = []
    delivery_locks: list[float] = []
    load = None
    if writer:
        bounds = Delivery.objects.aggregate(first=Min("pk"), last=Max("pk"))
        load = Writer(bounds["first"], bounds["last"])
        load.start()
    started = time.perf_counter()
    try:
        expired = retention.expire(
            progress=lambda b: (batches.append(b.seconds), delivery_locks.append(b.delivery_lock_seconds))
        )
    finally:
        used, retention.BATCH = retention.BATCH, default_batch
    total = time.perf_counter() - started
    figures = {
        **counts,
        "rows": sum(counts.values()),
        "expired": expired,
        "batch_events": used,
        "batches": len(batches),
        "seconds": round(total, 2),
        "rows_per_s": round(sum(counts.values()) / total),
        "longest_batch_s": round(max(batches, default=0.0), 4),
        "median_batch_s": round(statistics.median(batches), 4) if batches else None,
        "longest_delivery_lock_s": round(max(delivery_locks, default=0.0), 4),
        "median_delivery_lock_s": round(statistics.median(delivery_locks), 4) if batches else None,
    }
    if load is not None:
        load.stop.set()
        load.join()
        figures["writer_updates"] = len(load.seconds)
        figures["writer_longest_update_s"] = round(max(load.seconds, default=0.0), 4)
        figures["writer_p99_update_s"] = round(statistics.quantiles(load.seconds, n=100)[98], 4)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="events + deliveries + attempts (2:2:1)")
    parser.add_argument("--batch", type=int, help="events per transaction (default: retention.BATCH)")
    parser.add_argument("--writer", action="store_true", help="UPDATE random deliveries meanwhile, timed")
    args = parser.parse_args()
    if args.rows < 5 or args.rows > 20_000_000:
        parser.error("--rows: from 5 to 20,000,000")
    setup_django()
    started = time.perf_counter()
    figures = run(args.rows, args.batch, args.writer)
    figures["fill_and_purge_seconds"] = round(time.perf_counter() - started, 1)
    figures["loadavg_after"] = os.getloadavg()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
