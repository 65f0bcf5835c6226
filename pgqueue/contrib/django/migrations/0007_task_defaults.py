"""pgqueue schema version 7 (sql/migrations/0007_task_defaults.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0006_due_range_stale")]
    operations = [ApplySqlMigration(7)]
