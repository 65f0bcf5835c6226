"""pgqueue schema version 14 (sql/migrations/0014_job_filters.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0013_flow_control")]
    operations = [ApplySqlMigration(14)]
