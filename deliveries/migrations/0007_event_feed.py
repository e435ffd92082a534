"""Event.xid, the pull feed's order (deliveries/feed.py), and its index.

On PostgreSQL the column is added without rewriting the table (events recorded before it keep
a NULL xid and are not in the feed) and indexed CONCURRENTLY: publishing is never blocked
behind the migration, however many events there are. SQLite keeps the column NULL (its feed
reads rowid)."""

from django.db import migrations, models

import deliveries.models


def add_column(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.execute("ALTER TABLE deliveries_event ADD COLUMN xid bigint NULL")
        schema_editor.execute("CREATE INDEX event_feed ON deliveries_event (organization_id, xid, id)")
        return
    schema_editor.execute("ALTER TABLE deliveries_event ADD COLUMN xid bigint NULL")
    schema_editor.execute(
        "ALTER TABLE deliveries_event ALTER COLUMN xid SET DEFAULT (pg_current_xact_id()::text::bigint)"
    )
    schema_editor.execute(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS event_feed ON deliveries_event (organization_id, xid, id)"
    )


def drop_column(apps, schema_editor):
    schema_editor.execute("DROP INDEX IF EXISTS event_feed")
    schema_editor.execute("ALTER TABLE deliveries_event DROP COLUMN xid")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("agents_hooks", "0002_api_key"),
        ("deliveries", "0006_event_oversize_bytes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name="event",
                    name="xid",
                    field=models.BigIntegerField(
                        blank=True, db_default=deliveries.models.CurrentTransactionId(), editable=False, null=True
                    ),
                ),
                migrations.AddIndex(
                    model_name="event",
                    index=models.Index(fields=["organization", "xid", "id"], name="event_feed"),
                ),
            ],
            database_operations=[migrations.RunPython(add_column, drop_column)],
        ),
    ]
