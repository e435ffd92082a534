"""The delivery table is a queue: every attempt updates its row twice (the claim, the outcome).
Room on each page lets the claim's update (lease columns, not indexed) stay on its page
without new index entries (a HOT update), and vacuuming after 2% of rows changed (not 20%)
keeps the due index free of dead entries. PostgreSQL only."""

from django.db import migrations

STORAGE = (
    "ALTER TABLE deliveries_delivery SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,"
    " autovacuum_analyze_scale_factor = 0.02)"
)
RESET = (
    "ALTER TABLE deliveries_delivery RESET (fillfactor, autovacuum_vacuum_scale_factor,"
    " autovacuum_analyze_scale_factor)"
)


def set_storage(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(STORAGE)


def reset_storage(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(RESET)


class Migration(migrations.Migration):
    dependencies = [("deliveries", "0002_due_loop")]
    operations = [migrations.RunPython(set_storage, reset_storage)]
