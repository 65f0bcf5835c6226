"""pgqueue schema version 2 (sql/migrations/0002_workflows.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0001_initial")]
    operations = [ApplySqlMigration(2)]
