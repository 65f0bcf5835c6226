# One module per pgqueue SQL migration: 000N_<name>.py holds
# `operations = [ApplySqlMigration(N)]` and depends on the previous one.
# tests/test_django.py checks that every sql/migrations/000N_*.sql has its module.
