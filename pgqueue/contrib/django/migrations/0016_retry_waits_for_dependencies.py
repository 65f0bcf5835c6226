"""pgqueue schema version 16 (sql/migrations/0016_retry_waits_for_dependencies.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0015_enqueue_cost")]
    operations = [ApplySqlMigration(16)]
