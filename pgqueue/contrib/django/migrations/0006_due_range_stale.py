"""pgqueue schema version 6 (sql/migrations/0006_due_range_stale.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0005_cancel_and_retry")]
    operations = [ApplySqlMigration(6)]
