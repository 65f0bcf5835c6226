"""pgqueue schema version 3 (sql/migrations/0003_observability.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0002_workflows")]
    operations = [ApplySqlMigration(3)]
