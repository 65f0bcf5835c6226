"""pgqueue schema version 10 (sql/migrations/0010_dashboard.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0009_roles")]
    operations = [ApplySqlMigration(10)]
