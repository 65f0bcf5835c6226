"""A tiny Django app for tests/test_django.py (tasks, admin URLs)."""
