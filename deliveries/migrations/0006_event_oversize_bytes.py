# A nullable column without a default: on PostgreSQL a change of the catalog only, no rewrite
# of the event table.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('deliveries', '0005_heartbeat'),
    ]

    operations = [
        migrations.AddField(
            model_name='event',
            name='oversize_bytes',
            field=models.PositiveBigIntegerField(blank=True, null=True),
        ),
    ]
