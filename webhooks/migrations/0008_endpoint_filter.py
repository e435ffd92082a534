# A content filter over the event envelope per endpoint (webhooks/content_filter.py).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0007_event_types"),
    ]

    operations = [
        migrations.AddField(
            model_name="endpoint",
            name="filter",
            field=models.JSONField(
                blank=True,
                help_text='Only events whose envelope passes, e.g. {"path": "data.status", "in": ["failed"]}; '
                "empty for every event its types take.",
                null=True,
            ),
        ),
    ]
