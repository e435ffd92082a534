from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deliveries", "0012_replay"),
        ("agents_hooks", "0003_payload_retention"),
    ]

    operations = [
        migrations.AddField(
            model_name="event",
            name="payload_removed",
            field=models.CharField(
                blank=True,
                choices=[("", "kept"), ("expired", "expired: past its retention period"), ("erased", "erased on request")],
                default="",
                max_length=7,
            ),
        ),
        migrations.AddField(
            model_name="event",
            name="payload_removed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="PayloadRemoval",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "kind",
                    models.CharField(
                        choices=[("expired", "expired: past its retention period"), ("erased", "erased on request")],
                        max_length=7,
                    ),
                ),
                ("organization_id", models.CharField(blank=True, max_length=64, null=True)),
                ("agent_id", models.CharField(blank=True, max_length=64, null=True)),
                ("cutoff", models.DateTimeField(blank=True, null=True)),
                ("requested_by", models.CharField(max_length=200)),
                ("reason", models.CharField(blank=True, default="", max_length=500)),
                ("requested_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("events", models.PositiveIntegerField(default=0)),
                ("deliveries_failed", models.PositiveIntegerField(default=0)),
                ("attempts_cleared", models.PositiveIntegerField(default=0)),
                ("settle_by", models.DateTimeField(blank=True, null=True)),
                ("settled_at", models.DateTimeField(blank=True, null=True)),
                ("lease_until", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "indexes": [models.Index(fields=["kind", "organization_id", "-cutoff"], name="removal_cutoff")],
            },
        ),
    ]
