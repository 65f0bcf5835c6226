"""pgqueue schema version 12 (sql/migrations/0012_meta.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0011_batches")]
    operations = [ApplySqlMigration(12)]
