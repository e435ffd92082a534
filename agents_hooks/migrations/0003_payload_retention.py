"""Organization.payload_retention_days: an organization's own, shorter payload retention."""

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ('agents_hooks', '0002_api_key'),
    ]

    operations = [
        migrations.AddField(
            model_name="organization",
            name="payload_retention_days",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="Days event and delivery payloads are kept before they expire; empty: the service's "
                "default (WEBHOOK_PAYLOAD_RETENTION_DAYS). May only be shorter than the default.",
                null=True,
                validators=[django.core.validators.MinValueValidator(1)],
            ),
        ),
    ]
