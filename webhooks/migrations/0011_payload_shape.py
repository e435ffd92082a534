"""Per-endpoint payload shape (issue 16): `payload` ("full" or "thin") and `exclude_fields`."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0010_run_subscriptions"),
    ]

    operations = [
        migrations.AddField(
            model_name="endpoint",
            name="payload",
            field=models.CharField(
                choices=[
                    ("full", "full: the whole event envelope"),
                    ("thin", "thin: the envelope with only ids in data, and a link to the whole event"),
                ],
                default="full",
                help_text='"thin": only the ids in data, and links.event to fetch the whole event with an API key.',
                max_length=4,
            ),
        ),
        migrations.AddField(
            model_name="endpoint",
            name="exclude_fields",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text='Dotted paths inside data never sent, e.g. ["content", "usage.total_tokens"]; empty: none.',
            ),
        ),
    ]
