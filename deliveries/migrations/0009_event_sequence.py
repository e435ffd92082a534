"""Event.run_id, .sequence, .previous_event_id (an event's place in its run's or agent's stream)
and StreamCounter, where each stream stands (deliveries/streams.py).

On PostgreSQL the three columns are added without rewriting or scanning the table: nullable,
no default, no CHECK (`sequence` is a plain bigint), so each ALTER only changes the catalog and
publishing is blocked for no longer than that. Events recorded before keep NULLs: they have no
place in a stream, and every stream starts at 1 with its first event after the migration."""

from django.db import migrations, models

import deliveries.models


class Migration(migrations.Migration):
    dependencies = [
        ("deliveries", "0008_publish_idempotency"),
    ]

    operations = [
        # The table by hand: Django would add a second, LIKE-only index on the key (PostgreSQL),
        # which nothing reads and the first event of every run would pay for.
        migrations.RunSQL(
            sql=(
                'CREATE TABLE "deliveries_streamcounter" ("key" varchar(80) NOT NULL PRIMARY KEY, '
                '"last_sequence" bigint NOT NULL CHECK ("last_sequence" >= 0), '
                '"last_event_id" varchar(40) NULL, "previous_event_id" varchar(40) NULL)'
            ),
            reverse_sql='DROP TABLE "deliveries_streamcounter"',
            state_operations=[
                migrations.CreateModel(
                    name="StreamCounter",
                    fields=[
                        ("key", models.CharField(max_length=80, primary_key=True, serialize=False)),
                        ("last_sequence", models.PositiveBigIntegerField()),
                        ("last_event_id", models.CharField(max_length=40, null=True)),
                        ("previous_event_id", models.CharField(max_length=40, null=True)),
                    ],
                ),
            ],
        ),
        migrations.AddField(
            model_name="event",
            name="run_id",
            field=models.CharField(blank=True, help_text=deliveries.models.RUN_ID_HELP, max_length=64, null=True),
        ),
        migrations.AddField(
            model_name="event",
            name="sequence",
            field=models.BigIntegerField(blank=True, help_text=deliveries.models.SEQUENCE_HELP, null=True),
        ),
        migrations.AddField(
            model_name="event",
            name="previous_event_id",
            field=models.CharField(
                blank=True, help_text=deliveries.models.PREVIOUS_EVENT_HELP, max_length=40, null=True
            ),
        ),
    ]
