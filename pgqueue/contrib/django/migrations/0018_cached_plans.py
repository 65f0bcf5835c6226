"""pgqueue schema version 18 (sql/migrations/0018_cached_plans.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0017_sql_api_checks")]
    operations = [ApplySqlMigration(18)]
