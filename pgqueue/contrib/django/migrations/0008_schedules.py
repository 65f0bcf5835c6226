"""pgqueue schema version 8 (sql/migrations/0008_schedules.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0007_task_defaults")]
    operations = [ApplySqlMigration(8)]
