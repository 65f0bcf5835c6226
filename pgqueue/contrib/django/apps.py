"""The Django app config of pgqueue (label ``pgqueue``)."""

from __future__ import annotations

from django.apps import AppConfig


class PgQueueConfig(AppConfig):
    name = "pgqueue.contrib.django"
    label = "pgqueue"
    verbose_name = "pgqueue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db import connections

        from pgqueue import _connections

        from . import settings
        conf = settings()
        if conf["DEFAULT_CONNECTION"]:
            alias = conf["DATABASE"]
            _connections.set_default_connection(lambda: connections[alias])
