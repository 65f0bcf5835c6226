"""examples/node/enqueue.js: a Node.js producer (the `pg` package) calling
pgqueue.enqueue with named notation; the row reads back in Python with its tagged
values (B16: Decimal scale and aware datetime kept). Skipped when node or the pg
package cannot be had."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from decimal import Decimal

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import pgqueue

from .conftest import ROOT

NODE_DIR = ROOT / "examples" / "node"


@pytest.fixture(scope="module")
def node_ready():
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "pg").is_dir():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed")
        try:
            r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"],
                               cwd=NODE_DIR, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            pytest.skip("npm install timed out")
        if r.returncode != 0:
            pytest.skip(f"cannot install the pg package: {r.stderr.strip()[:300]}")
    return True


def pg_env(dsn: str) -> dict[str, str]:
    p = conninfo_to_dict(dsn)
    env = dict(os.environ)
    for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("dbname", "PGDATABASE"),
                     ("user", "PGUSER"), ("password", "PGPASSWORD")):
        if p.get(key):
            env[var] = str(p[key])
    return env


def test_node_enqueue_example(node_ready, dsn):
    r = subprocess.run(["node", "enqueue.js", "42"], cwd=NODE_DIR, env=pg_env(dsn),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    job_id = int(r.stdout.strip())
    with psycopg.connect(dsn, autocommit=True) as conn:
        task, args, kwargs, state, queue = conn.execute(
            "select task, args, kwargs, state, queue from pgqueue.jobs where id = %s",
            (job_id,)).fetchone()
    assert (task, state, queue) == ("examples.send_receipt", "available", "default")
    values = pgqueue.serialization.decode(args)
    assert values[0] == 42
    assert values[1] == Decimal("12.30") and str(values[1]) == "12.30"
    assert values[2] == dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.timezone.utc)
    assert values[2].tzinfo is not None
    assert pgqueue.serialization.decode(kwargs) == {"note": "from node"}
