"""Run subscriptions: an endpoint scoped to one run, until its last event or its TTL
(webhooks/run_subscriptions.py)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ('webhooks', '0009_endpoint_ordering'),
    ]

    operations = [
        migrations.AddField(
            model_name='endpoint',
            name='ended_at',
            field=models.DateTimeField(blank=True, help_text="When the run's last event was delivered to this run subscription.", null=True),
        ),
        migrations.AddField(
            model_name='endpoint',
            name='expires_at',
            field=models.DateTimeField(blank=True, help_text='A run subscription takes no new event after this (its TTL).', null=True),
        ),
        migrations.AddField(
            model_name='endpoint',
            name='run',
            field=models.ForeignKey(blank=True, help_text="A run subscription's run: only its events are sent; empty for an ordinary endpoint.", null=True, on_delete=django.db.models.deletion.CASCADE, related_name='subscriptions', to='agents_hooks.run'),
        ),
    ]
