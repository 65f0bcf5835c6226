"""pgqueue schema version 9 (sql/migrations/0009_flow_control.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0008_schedules")]
    operations = [ApplySqlMigration(9)]
