"""pgqueue schema version 15 (sql/migrations/0015_enqueue_cost.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0014_job_filters")]
    operations = [ApplySqlMigration(15)]
