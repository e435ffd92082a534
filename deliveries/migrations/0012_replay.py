"""Replay (deliveries/replay.py): past events sent again to an endpoint, with their progress."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deliveries", "0011_delivery_ordering"),
        ("webhooks", "0010_run_subscriptions"),
    ]

    operations = [
        migrations.CreateModel(
            name="Replay",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("since", models.DateTimeField()),
                ("until", models.DateTimeField()),
                ("event_types", models.JSONField(blank=True, default=list)),
                (
                    "state",
                    models.CharField(
                        choices=[
                            ("running", "Running"),
                            ("done", "Done"),
                            ("failed", "Failed"),
                            ("cancelled", "Cancelled"),
                        ],
                        default="running",
                        max_length=10,
                    ),
                ),
                ("events_total", models.PositiveBigIntegerField(default=0)),
                ("events_examined", models.PositiveBigIntegerField(default=0)),
                ("deliveries_created", models.PositiveBigIntegerField(default=0)),
                ("cursor_created_at", models.DateTimeField(blank=True, null=True)),
                ("cursor_event_id", models.CharField(blank=True, default="", max_length=40)),
                ("requested_by", models.CharField(blank=True, default="", max_length=200)),
                ("error", models.TextField(blank=True, default="")),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "endpoint",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="replays", to="webhooks.endpoint"
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(condition=models.Q(("state", "running")), fields=["updated_at"], name="replay_running")
                ],
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("state", "running")),
                        fields=("endpoint",),
                        name="one_running_replay_per_endpoint",
                    )
                ],
            },
        ),
    ]
