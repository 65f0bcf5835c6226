"""pgqueue schema version 13 (sql/migrations/0013_flow_control.sql)."""

from django.db import migrations

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    dependencies = [("pgqueue", "0012_meta")]
    operations = [ApplySqlMigration(13)]
