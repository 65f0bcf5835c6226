"""Start-up checks of the worker: the schema, and the observer.

:func:`wait_for_schema` runs ``pgqueue.migrate.check_schema`` on the *claim*
connection until the schema is installed at this code's version (a worker started
beside ``pgqueue migrate`` waits for it) or ``schema_wait`` seconds pass.
:func:`observer` creates the :class:`~pgqueue.observe.Observer` (and the metrics
server) when anything listens to outcomes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from .. import migrate
from ..errors import ConfigurationError, SchemaError
from ..observe import Observer
from .connections import _Conn

log = logging.getLogger("pgqueue.worker")


def wait_for_schema(conn: _Conn, schema_wait: float) -> None:
    """Return once the schema is current.

    :raises SchemaError: the schema is newer than this code, or stayed missing or
        outdated for ``schema_wait`` seconds.
    :raises psycopg.OperationalError: no connection for ``schema_wait`` seconds.
    """
    deadline = time.monotonic() + schema_wait
    said = False
    next_note = 0.0
    while True:
        try:
            conn.run(migrate.check_schema)
            return
        except SchemaError as e:
            if "newer than this code" in str(e) or time.monotonic() >= deadline:
                raise
            if not said:
                log.warning("%s; waiting up to %.0f s", e, schema_wait)
                said = True
        except psycopg.OperationalError as e:
            if time.monotonic() >= deadline:
                raise
            if time.monotonic() >= next_note:
                log.warning("cannot connect yet (%s); retrying for up to %.0f s",
                            str(e).strip(), deadline - time.monotonic())
                next_note = time.monotonic() + 5.0
        time.sleep(0.2)


def observer(worker: Any) -> tuple[Any, Observer | None]:
    """``(metrics, observer)`` for ``worker``: both ``None`` when nothing listens.

    :raises ConfigurationError: metrics asked for without ``prometheus-client``, or
        the metrics port cannot be bound.
    """
    if not Observer.wanted(worker):
        return None, None
    metrics = None
    if worker.metrics_port is not None or worker.metrics_registry is not None:
        try:
            from ..metrics import WorkerMetrics
        except ImportError as e:
            raise ConfigurationError(str(e)) from None
        metrics = WorkerMetrics(worker, registry=worker.metrics_registry,
                                port=worker.metrics_port, host=worker.metrics_host,
                                interval=worker.metrics_interval)
        try:
            metrics.start()
        except OSError as e:
            metrics.close()
            raise ConfigurationError(
                f"cannot serve metrics on {worker.metrics_host}:{worker.metrics_port}: {e}"
            ) from None
    return metrics, Observer(worker, metrics)
