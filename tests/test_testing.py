"""The helpers shipped for users' tests, on a real PostgreSQL."""

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
