"""The worker's SQL functions keep their plans (schema 18).

A plpgsql statement that takes parameters is planned again on every call while
PostgreSQL judges its custom plans cheaper than the generic one, and a SQL function's
statements are planned on every call: a third of a claim's server time went to planning,
and ``next_due`` spent 2.4 ms planning for 0.4 ms of work. The claim, its candidates,
completion, failure and ``next_due`` now plan once per session.

Both properties are read from the server, not from timings: the plans a session keeps
are its ``CachedPlan`` memory contexts (named by their statement), and the scans of
``pgqueue.jobs`` are the session's per-transaction counters.
"""

from __future__ import annotations

import uuid

import psycopg

WORKER = str(uuid.uuid4())
TASKS = ["t.a"]


def _calls(c: psycopg.Connection, queue: str) -> None:
    """One call of each worker function, through the SQL API, as a worker sends them."""
    c.execute("select id from pgqueue.claim(%s, %s, %s, 1, null, null, null, null, "
              "'{3}', '{null}', '{null}')", (WORKER, [queue], TASKS))
    row = c.execute(
        "select id, attempt from pgqueue.claim(%s, %s, %s, 1, %s, '{0}', "
        "array['2000-01-01']::timestamptz[], '{0}', '{3}', '{null}', '{null}')",
        (WORKER, [queue], TASKS, [queue])).fetchone()
    c.execute("select pgqueue.complete(%s, array[%s]::bigint[], array[%s]::integer[], "
              "array['null']::jsonb[])", (WORKER, row[0], row[1]))
    row = c.execute("select id, attempt from pgqueue.claim(%s, %s, %s, 1)",
                    (WORKER, [queue], TASKS)).fetchone()
    c.execute("select pgqueue.fail(%s, %s, %s, '{\"type\": \"E\", \"message\": \"m\"}', "
              "null, false, 1, 1)", (WORKER, row[0], row[1]))
    c.execute("select pgqueue.next_due(%s, %s)", ([queue], TASKS))


def _kept_plans(c: psycopg.Connection) -> list[str]:
    return [r[0] for r in c.execute(
        "select regexp_replace(ident, '\\s+', ' ', 'g') from pg_backend_memory_contexts "
        "where name = 'CachedPlan'")]


def test_the_worker_functions_are_planned_once_per_session(dsn):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("insert into pgqueue.jobs (task, queue) "
                  "select 't.a', 'plans' from generate_series(1, 4)")
        _calls(c, "plans")
        kept = _kept_plans(c)
    # one call each: a statement re-planned per call keeps no plan until its sixth
    wanted = {
        "the claim's update": "update pgqueue.jobs j set state = 'running'",
        "the candidates' read": "select j.id, j.priority, j.run_at from pgqueue.jobs j",
        "the completion": "with done as ( update pgqueue.jobs j set state = 'completed'",
        "the failure's update": "update pgqueue.jobs j set state = case",
        "next_due": "least( -- the next due time",
    }
    missing = [what for what, text in wanted.items()
               if not any(k.strip().startswith(text) for k in kept)]
    assert not missing, (missing, kept)


def test_plans_made_on_an_empty_table_read_by_index_once_it_fills(dsn):
    """A kept plan lives until the table's statistics change: one made while the table
    was empty (and analyzed so) must not scan the whole table once it holds many rows."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("analyze pgqueue.jobs")
        c.execute("insert into pgqueue.jobs (task, queue) values ('t.a', 'fill'), "
                  "('t.a', 'fill'), ('t.a', 'fill')")
        _calls(c, "fill")                                  # plans made on ~no rows
        c.execute("insert into pgqueue.jobs (task, queue, state, finished_at) "
                  "select 't.a', 'fill', 'completed', now() "
                  "from generate_series(1, 20000)")
        c.execute("insert into pgqueue.jobs (task, queue) "
                  "select 't.a', 'fill' from generate_series(1, 3)")
        with c.transaction():
            _calls(c, "fill")
            seq, idx = c.execute(
                "select seq_scan, idx_scan from pg_stat_xact_user_tables "
                "where relid = 'pgqueue.jobs'::regclass").fetchone()
    assert (seq, idx > 0) == (0, True), (seq, idx)
