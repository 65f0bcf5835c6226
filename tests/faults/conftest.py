"""Fixtures of the fault-injection suite (``pytest -m faults``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .app import make_app
from .helpers import PgBouncer, Proxy, pgbouncer_binary


@pytest.fixture
def fapp(dsn: str) -> Iterator:
    """The producer side: an App on the test database with the ``faults.*`` tasks."""
    a = make_app(dsn)
    yield a
    a.close()


@pytest.fixture
def proxy(dsn: str) -> Iterator[Proxy]:
    """A TCP proxy to the test database; workers use ``proxy.client_dsn()``."""
    p = Proxy(dsn).start()
    yield p
    p.close()


@pytest.fixture
def embedded(pg_server):
    """The suite's own cluster (restartable); skips against PGQUEUE_TEST_DSN."""
    if pg_server.embedded is None:
        pytest.skip("PGQUEUE_TEST_DSN points at a server this suite cannot restart")
    return pg_server.embedded


@pytest.fixture
def pgbouncer(pg_server) -> Iterator[PgBouncer]:
    """PgBouncer (transaction pooling, pool size 5) in front of the test server."""
    if pgbouncer_binary() is None:
        pytest.skip("the pgbouncer binary is not installed (apt-get install pgbouncer)")
    b = PgBouncer(pg_server.admin_dsn, pool_size=5)
    try:
        b.start()
    except Exception:
        b.close()
        raise
    yield b
    b.close()


