"""pgqueue schema version 11 (sql/migrations/0011_batches.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0010_dashboard")]
    operations = [ApplySqlMigration(11)]
