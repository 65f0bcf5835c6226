"""Settings of the example shop. The database is found as everywhere in pgqueue:
``$PGQUEUE_DSN`` (a libpq connection string or URL, e.g. ``host=127.0.0.1 dbname=shop
user=me``), else libpq's environment (``PGHOST``, ``PGDATABASE``, ...), else the
embedded PostgreSQL (started if needed)."""

import getpass
import os

from psycopg.conninfo import conninfo_to_dict

import pgqueue

# pgqueue.App().conninfo resolves the DSN as `pgqueue worker`, `pgqueue migrate` and
# every App do; nothing connects here (only the embedded server is started if needed).
_params = conninfo_to_dict(pgqueue.App().conninfo)
# Django needs a database name; what the DSN leaves out, libpq takes from its
# environment (a service file's dbname, PGDATABASE, else the user's name).
_name = _params.pop("dbname", "") or os.environ.get("PGDATABASE", "")
if not _name and "service" not in _params and os.environ.get("PGSERVICE"):
    _params["service"] = os.environ["PGSERVICE"]
if not _name and "service" not in _params:
    _name = _params.get("user") or os.environ.get("PGUSER") or getpass.getuser()

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
        "NAME": _name,
        # every other parameter (host, port, user, password, sslmode, ...) as given;
        # psycopg passes them to libpq, which reads its environment for the rest
        "OPTIONS": _params,
    }
}

TASKS = {
    "default": {
        "BACKEND": "pgqueue.contrib.django.backend.PgQueueBackend",
        "QUEUES": ["default"],
        "OPTIONS": {"MAX_ATTEMPTS": 3},
    }
}
