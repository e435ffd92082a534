"""The indexes of ordered delivery (deliveries/ordering.py), added with 0011's fields, built
without blocking writes on PostgreSQL (deliveries/migration_operations.py): the delivery and
event tables are the busiest, and may hold millions of rows when this runs. Nothing else is
in this migration, so one that stopped halfway runs again."""

from django.db import migrations, models

from deliveries.migration_operations import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("deliveries", "0013_payload_retention"),
    ]

    operations = [
        AddIndexOnline(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("run_id__isnull", False), ("status", "pending")),
                fields=["run_id", "endpoint", "sequence"],
                name="delivery_run_order",
            ),
        ),
        AddIndexOnline(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("run_id__isnull", False), ("status__in", ["failed", "dead"])),
                fields=["run_id", "endpoint", "sequence"],
                name="delivery_run_skipped",
            ),
        ),
        AddIndexOnline(
            model_name="delivery",
            index=models.Index(condition=models.Q(("waiting", True)), fields=["run_id"], name="delivery_waiting"),
        ),
        AddIndexOnline(
            model_name="event",
            index=models.Index(
                condition=models.Q(("fanned_out_at", None), ("run_id__isnull", False)),
                fields=["run_id", "sequence"],
                name="event_run_not_fanned_out",
            ),
        ),
    ]
