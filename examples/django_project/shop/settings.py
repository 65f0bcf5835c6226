"""Settings of the example shop. The database comes from ``$DATABASE_DSN`` (a libpq
connection string or URL, e.g. ``host=127.0.0.1 dbname=shop user=me``)."""

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ.get("DATABASE_DSN", "dbname=shop"))

SECRET_KEY = "example-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
ROOT_URLCONF = "shop.urls"

try:
    import django.tasks  # noqa: F401  (Django >= 6.0)
    _tasks_app = []
except ImportError:     # Django 4.2-5.2: the django-tasks backport
    _tasks_app = ["django_tasks"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "pgqueue.contrib.django",       # migrations, pgqueue_worker, admin
    "orders",
    *_tasks_app,
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",   # psycopg 3
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    }
}

TASKS = {
    "default": {
        "BACKEND": "pgqueue.contrib.django.backend.PgQueueBackend",
        "QUEUES": ["default"],
        "OPTIONS": {"MAX_ATTEMPTS": 3},
    }
}
