"""pgqueue schema version 5 (sql/migrations/0005_cancel_and_retry.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0004_claim_positions")]
    operations = [ApplySqlMigration(5)]
