"""pgqueue schema version 17 (sql/migrations/0017_sql_api_checks.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0016_retry_waits_for_dependencies")]
    operations = [ApplySqlMigration(17)]
