"""The helpers shipped for users' tests, on a real PostgreSQL."""

import os
import re
import subprocess
import sys
from decimal import Decimal

import psycopg
import pytest

from pgqueue import testing


def test_assert_enqueued_and_drain(app, dsn, conn):
    @app.task(name="t.charge")
    def charge(amount, currency="EUR"):
        if amount < 0:
            raise ValueError("negative")
        follow_up.enqueue(str(amount))
        return str(amount)

    @app.task(name="t.follow_up")
    def follow_up(note):
        return note

    with psycopg.connect(dsn) as c:
        charge.using(connection=c).enqueue(Decimal("9.90"), currency="USD")
        job = testing.assert_enqueued(app, charge, args=[Decimal("9.90")],
                                      kwargs={"currency": "USD"}, connection=c)
        with pytest.raises(AssertionError, match="no unfinished t.charge"):
            testing.assert_enqueued(app, charge, args=[1])   # not committed: invisible
        c.commit()
    stats = testing.drain(app)
    assert stats["completed"] == 2          # the job and the one it enqueued
    assert job.refresh().state == "completed"
    assert testing.enqueued_jobs(app) == []
    assert conn.execute("select result from pgqueue.jobs where task = 't.follow_up'"
                        ).fetchone() == ("9.90",)


def readme_block(first_line: str) -> str:
    """The README's one ```python block that starts with ``first_line``."""
    from .conftest import ROOT
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"README blocks starting with {first_line!r}: {len(found)}"
    return found[0]


def test_readme_testing_example_runs_as_written(dsn, tmp_path):
    """The README's example test of `pgqueue.testing`, run by pytest as a user would,
    with the README's own tasks.py, against a fresh database."""
    (tmp_path / "tasks.py").write_text(readme_block("# tasks.py\n"))
    (tmp_path / "test_welcome.py").write_text(readme_block("# test_welcome.py:"))
    env = dict(os.environ, PGQUEUE_DSN=dsn, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "test_welcome.py"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout
    with psycopg.connect(dsn) as c:
        assert c.execute("select task, state, args from pgqueue.jobs").fetchall() == [
            ("tasks.send_welcome", "completed", [42])]
