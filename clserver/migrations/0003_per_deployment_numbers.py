"""Drift checks and updates get a number per deployment (1, 2, ...), the id users see.

Existing rows are numbered within their deployment in primary-key (creation) order.
"""

from django.db import migrations, models


def number_existing(apps, schema_editor):
    for model_name in ("DriftCheck", "DeploymentUpdate"):
        model = apps.get_model("clserver", model_name)
        counts: dict[int, int] = {}
        rows = model.objects.order_by("deployment_id", "id").only("id", "deployment_id").iterator(chunk_size=2000)
        for row in rows:
            counts[row.deployment_id] = counts.get(row.deployment_id, 0) + 1
            model.objects.filter(pk=row.pk).update(number=counts[row.deployment_id])


class Migration(migrations.Migration):

    dependencies = [
        ('clserver', '0002_deployments'),
    ]

    operations = [
        migrations.AddField(
            model_name='driftcheck',
            name='number',
            field=models.PositiveIntegerField(null=True),
        ),
        migrations.AddField(
            model_name='deploymentupdate',
            name='number',
            field=models.PositiveIntegerField(null=True),
        ),
        migrations.RunPython(number_existing, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='driftcheck',
            name='number',
            field=models.PositiveIntegerField(help_text='1, 2, ... within the deployment: the id users see.'),
        ),
        migrations.AlterField(
            model_name='deploymentupdate',
            name='number',
            field=models.PositiveIntegerField(help_text='1, 2, ... within the deployment: the id users see.'),
        ),
        migrations.AddConstraint(
            model_name='driftcheck',
            constraint=models.UniqueConstraint(fields=('deployment', 'number'), name='drift_check_unique_number'),
        ),
        migrations.AddConstraint(
            model_name='deploymentupdate',
            constraint=models.UniqueConstraint(fields=('deployment', 'number'), name='deployment_update_unique_number'),
        ),
    ]
