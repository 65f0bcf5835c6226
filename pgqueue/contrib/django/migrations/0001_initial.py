"""pgqueue schema version 1 (sql/migrations/0001_initial.sql), and the unmanaged Job model."""

from django.db import migrations, models

from pgqueue.contrib.django.operations import ApplySqlMigration


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        ApplySqlMigration(1),
        migrations.CreateModel(
            name="Job",
            fields=[
                ("id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("queue", models.TextField()),
                ("task", models.TextField()),
                ("args", models.JSONField()),
                ("kwargs", models.JSONField()),
                ("state", models.TextField(choices=[
                    ("pending", "pending"), ("scheduled", "scheduled"),
                    ("available", "available"), ("running", "running"),
                    ("retryable", "retryable"), ("completed", "completed"),
                    ("discarded", "discarded"), ("cancelled", "cancelled")])),
                ("priority", models.IntegerField()),
                ("run_at", models.DateTimeField()),
                ("attempt", models.IntegerField()),
                ("max_attempts", models.IntegerField()),
                ("timeout", models.DurationField(null=True)),
                ("unique_key", models.TextField(null=True)),
                ("result", models.JSONField(null=True)),
                ("errors", models.JSONField()),
                ("created_at", models.DateTimeField()),
                ("started_at", models.DateTimeField(null=True)),
                ("finished_at", models.DateTimeField(null=True)),
                ("worker_id", models.UUIDField(null=True)),
                ("cancel_requested_at", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "job",
                "verbose_name_plural": "jobs",
                "db_table": 'pgqueue"."jobs',
                "ordering": ["-id"],
                "managed": False,
            },
        ),
    ]
