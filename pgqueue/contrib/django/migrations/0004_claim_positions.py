"""pgqueue schema version 4 (sql/migrations/0004_claim_positions.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0003_observability")]
    operations = [ApplySqlMigration(4)]
