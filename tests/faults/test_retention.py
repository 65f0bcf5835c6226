"""Retention and long transactions (case B23; claiming past dead rows is tested in
tests/test_claim_positions.py, the soak run is benchmarks/soak.py).

Workers prune finished jobs older than ``--retention`` every ``--maintenance-interval``,
one worker at a time under a transaction-scoped advisory lock, and warn when the oldest
open transaction of the database holds back vacuum for longer than a threshold.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from pgqueue.worker import PRUNE_LOCK

from ..conftest import wait_until
from .app import make_app
from .helpers import Fleet, long_transaction, rows, scalar, worker_id_of

pytestmark = [pytest.mark.faults]


def _seed(dsn: str) -> None:
    """100 jobs finished an hour ago, 10 finished now, 10 available, 5 running-free."""
    rows(dsn, """
        insert into pgqueue.jobs (task, state, finished_at, attempt)
        select 'faults.work', s, now() - interval '1 hour', 1
          from unnest(array['completed', 'discarded', 'cancelled']) s,
               generate_series(1, 34) g limit 100""")
    rows(dsn, "insert into pgqueue.jobs (task, state, finished_at, attempt) "
              "select 'faults.work', 'completed', now(), 1 from generate_series(1, 10)")
    rows(dsn, "insert into pgqueue.jobs (task, state, queue) "
              "select 'faults.work', 'available', 'nobody' from generate_series(1, 10)")


def _count(dsn: str) -> dict[str, int]:
    return dict(rows(dsn, """
        select case when finished_at is null then 'unfinished'
                    when finished_at < now() - interval '30 minutes' then 'old'
                    else 'recent' end, count(*)
          from pgqueue.jobs group by 1"""))


@pytest.mark.slow
def test_workers_prune_finished_jobs_one_at_a_time(dsn, spawn_worker):
    _seed(dsn)
    fleet = Fleet(spawn_worker, dsn, "-c", "1", "-q", "work", "--retention", "10m",
                  "--maintenance-interval", "0.3", "--heartbeat-interval", "0.5",
                  "--stale-after", "3")
    with psycopg.connect(dsn) as holder:
        # another pruner holds the lock: the workers skip their rounds meanwhile
        holder.execute("select pg_advisory_xact_lock(%s)", (PRUNE_LOCK,))
        for p in fleet.start(2):
            worker_id_of(dsn, p.pid)
        time.sleep(1.5)
        skipped = _count(dsn)
        holder.rollback()
    wait_until(lambda: "old" not in _count(dsn), 10, 0.1, "old finished jobs pruned")
    after = _count(dsn)
    # The workers keep pruning every 0.3 s, each round under a transaction-scoped lock,
    # so one may be held at any instant; none may outlive its round (a leaked lock
    # would stay held by an idle session for good).
    def advisory_locks() -> int:
        return scalar(dsn, "select count(*) from pg_locks where locktype = 'advisory' "
                           "and database = (select oid from pg_database "
                           "where datname = current_database())")
    wait_until(lambda: advisory_locks() == 0, 5, 0.02, "every advisory lock released")
    print(f"\nretention 10 min: while another pruner held the lock {skipped}; after {after}; "
          f"no advisory lock outlived its round")
    assert skipped == {"old": 100, "recent": 10, "unfinished": 10}
    assert after == {"recent": 10, "unfinished": 10}
    fleet.assert_alive()


def test_long_transaction_pinning_vacuum_is_reported(dsn, start_worker):
    app = make_app(dsn)
    w = start_worker(app, concurrency=1, queues=["none"], maintenance_interval=0.2,
                     xmin_warn_after=1.0, prune_after=None)
    with long_transaction(dsn) as tx:
        pid = tx.execute("select pg_backend_pid()").fetchone()[0]
        found = wait_until(lambda: (w.worker.stats["vacuum_warnings"] > 0
                                    and w.worker.oldest_transaction), 10, 0.05,
                           "a long-transaction warning")
        assert found["pid"] == pid and found["age"] > 1.0
    wait_until(lambda: (w.worker.oldest_transaction is None
                        or w.worker.oldest_transaction["pid"] != pid), 5, 0.05,
               "the finding cleared")
    print(f"\nlong transaction: reported pid {found['pid']} open {found['age']:.1f} s "
          f"({found['state']}), {w.worker.stats['vacuum_warnings']} warning(s)")
    app.close()


def test_autovacuum_turned_off_for_the_jobs_table_is_reported(dsn, start_worker):
    with psycopg.connect(dsn, autocommit=True) as c:
        server_on = c.execute("select current_setting('autovacuum')::boolean").fetchone()[0]
        c.execute("alter table pgqueue.jobs set (autovacuum_enabled = false)")
        app = make_app(dsn)
        try:
            w = start_worker(app, concurrency=1, queues=["none"], maintenance_interval=0.2,
                             prune_after=None)
            wait_until(lambda: w.worker.autovacuum_off is True, 10, 0.05,
                       "autovacuum reported off")
            assert w.worker.stats["autovacuum_warnings"] == 1   # once, not every round
            c.execute("alter table pgqueue.jobs reset (autovacuum_enabled)")
            # back on for the table: off only if the whole server has it off
            wait_until(lambda: w.worker.autovacuum_off is (not server_on), 10, 0.05,
                       "the finding updated")
        finally:
            c.execute("alter table pgqueue.jobs reset (autovacuum_enabled)")
            app.close()
