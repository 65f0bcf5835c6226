"""Periodic jobs: slot arithmetic across daylight saving, catch-up after missed slots,
exactly-once firing by competing schedulers, and declarations written at worker start."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import psycopg
import pytest

import pgqueue
from pgqueue.worker.scheduler import Scheduler, upsert_declarations
from pgqueue.schedule import Schedule, ScheduleError, due_slots

from .conftest import wait_until

UTC = dt.timezone.utc


def utc(*a: int) -> dt.datetime:
    return dt.datetime(*a, tzinfo=UTC)


def hm(slots: list[dt.datetime]) -> list[str]:
    return [s.strftime("%m-%d %H:%M") for s in slots]


# -- slot arithmetic: the 2026 US (Mar 8 / Nov 1) and EU (Mar 29 / Oct 25) transitions ----

@pytest.mark.parametrize("tz, day, expected", [
    # 01:30 happens twice when clocks go back: fire at the first (EDT / CEST) only
    ("America/New_York", (2026, 11, 1), ["11-01 05:30", "11-02 06:30"]),
    ("Europe/Berlin", (2026, 10, 25), ["10-24 23:30", "10-26 00:30"]),
])
def test_repeated_wall_time_fires_once_at_its_first_occurrence(tz, day, expected):
    s = Schedule(cron="30 1 * * *", tz=tz)
    start = dt.datetime(*day, tzinfo=UTC) - dt.timedelta(hours=6)
    assert hm(s.between(start, start + dt.timedelta(hours=40))) == expected


@pytest.mark.parametrize("tz, day, expected", [
    # 02:30 does not exist when clocks go forward: fire once, right after the gap (03:00)
    ("America/New_York", (2026, 3, 8), ["03-08 07:00", "03-09 06:30"]),
    ("Europe/Berlin", (2026, 3, 29), ["03-29 01:00", "03-30 00:30"]),
])
def test_skipped_wall_time_fires_once_right_after_the_gap(tz, day, expected):
    s = Schedule(cron="30 2 * * *", tz=tz)
    start = dt.datetime(*day, tzinfo=UTC) - dt.timedelta(hours=6)
    assert hm(s.between(start, start + dt.timedelta(hours=40))) == expected


@pytest.mark.parametrize("tz, days", [
    ("America/New_York", [(2026, 3, 8), (2026, 11, 1)]),
    ("Europe/Berlin", [(2026, 3, 29), (2026, 10, 25)]),
])
@pytest.mark.parametrize("expr, minutes", [("*/15 * * * *", 15), ("0 * * * *", 60)])
def test_steps_and_wildcards_follow_elapsed_time_through_both_transitions(tz, days, expr,
                                                                         minutes):
    s = Schedule(cron=expr, tz=tz)
    for day in days:
        start = dt.datetime(*day, tzinfo=UTC) - dt.timedelta(hours=2)
        slots = s.between(start, start + dt.timedelta(hours=30))
        gaps = {(b - a) for a, b in zip(slots, slots[1:], strict=False)}
        assert gaps == {dt.timedelta(minutes=minutes)}, (day, hm(slots))
        assert len(slots) == 30 * 60 // minutes
        assert len(set(slots)) == len(slots)


def test_weekly_schedule_keeps_its_wall_time_across_a_transition():
    s = Schedule(cron="0 9 * * MON", tz="America/New_York")
    slots = s.between(utc(2026, 2, 25), utc(2026, 3, 20))
    assert hm(slots) == ["03-02 14:00", "03-09 13:00", "03-16 13:00"]   # EST, then EDT
    s = Schedule(cron="0 9 * * MON", tz="Europe/Berlin")
    assert hm(s.between(utc(2026, 10, 15), utc(2026, 11, 3))) == [
        "10-19 07:00", "10-26 08:00", "11-02 08:00"]


def test_slots_are_utc_instants_whatever_the_time_zone_of_the_argument():
    s = Schedule(cron="0 9 * * *", tz="Asia/Tokyo")
    paris = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    nxt = s.next_after(paris)
    assert nxt.tzinfo is UTC and nxt == utc(2026, 6, 2, 0, 0)


def test_intervals_are_aligned_to_the_epoch_and_ignore_the_time_zone():
    a = Schedule(every=3600, tz="Asia/Kolkata")           # +05:30 must not shift slots
    assert a.next_after(utc(2026, 1, 1, 10, 15)) == utc(2026, 1, 1, 11, 0)
    b = Schedule(every=dt.timedelta(seconds=2))
    assert b.next_after(utc(2026, 1, 1, 0, 0, 1)) == utc(2026, 1, 1, 0, 0, 2)
    assert b.next_after(utc(2026, 1, 1, 0, 0, 2)) == utc(2026, 1, 1, 0, 0, 4)


def test_aliases_and_names():
    assert Schedule(cron="@daily").next_after(utc(2026, 1, 1, 5)) == utc(2026, 1, 2)
    assert Schedule(cron="@hourly").next_after(utc(2026, 1, 1, 5, 1)) == utc(2026, 1, 1, 6)
    assert Schedule(cron="0 0 1 JAN *").next_after(utc(2026, 5, 1)) == utc(2027, 1, 1)


@pytest.mark.parametrize("kwargs, says", [
    ({}, "exactly one of cron"),
    ({"cron": "* * * * *", "every": 5}, "exactly one of cron"),
    ({"cron": "61 * * * *"}, "bad cron expression"),
    ({"cron": "* * * *"}, "bad cron expression"),
    ({"cron": "*/10 * * * * *"}, "6 fields, expected five.*every=SECONDS"),
    ({"every": 0.5}, "at least 1 second"),
    ({"every": True}, "seconds"),
    ({"cron": "0 * * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
    ({"cron": "0 * * * *", "tz": "../../etc/passwd"}, "unknown time zone"),
])
def test_bad_schedules_say_what_is_wrong(kwargs, says):
    with pytest.raises(ScheduleError, match=says):
        Schedule(**kwargs)


def test_app_periodic_declares_and_refuses_duplicates_and_bad_targets():
    app = pgqueue.App("dbname=unused")

    @app.periodic(cron="0 9 * * MON-FRI", tz="Europe/Paris")
    @app.task
    def report(kind: str = "daily") -> None: ...

    app.periodic(report.s("weekly"), every=60, name="weekly-report", catch_up="all")
    assert set(app.schedules) == {report.name, "weekly-report"}
    assert app.schedules["weekly-report"].args == ("weekly",)
    with pytest.raises(ScheduleError, match="already declared"):
        app.periodic(report, every=5)
    with pytest.raises(ScheduleError, match="catch_up"):
        app.periodic(report, every=5, name="x", catch_up="sometimes")
    with pytest.raises(ScheduleError, match="above @app.task"):
        app.periodic(every=5, name="y")(lambda: None)


# -- firing: the SQL compare-and-set and the scheduler component -------------------------

def _declare(conn: psycopg.Connection, app: pgqueue.App, worker: str = "w1") -> list[str]:
    return upsert_declarations(conn, app.schedules.values(), app.tasks, worker)


def _jobs(conn: psycopg.Connection, name: str) -> list[tuple]:
    return conn.execute("select schedule_slot, args, kwargs from pgqueue.jobs "
                        "where schedule_name = %s order by schedule_slot", (name,)).fetchall()


def _db_now(conn: psycopg.Connection) -> dt.datetime:
    return conn.execute("select now()").fetchone()[0]


@pytest.fixture
def sched_app(dsn):
    app = pgqueue.App(dsn)

    @app.task
    def tick(label: str, schedule_slot: dt.datetime | None = None) -> str:
        return f"{label}@{schedule_slot}"

    app.periodic(tick.s("m"), every=60, name="minutely")
    yield app
    app.close()


@pytest.mark.parametrize("policy, expect", [("latest", 1), ("all", 3), ("none", 0)])
def test_paused_for_three_slots_then_resumed(sched_app, dsn, conn, policy, expect):
    sched_app.schedules["minutely"].catch_up = policy
    _declare(conn, sched_app)
    # three whole slots missed while paused: next_slot three periods back
    now = _db_now(conn)
    first_missed = Schedule(every=60).next_after(now) - dt.timedelta(minutes=3)
    conn.execute("update pgqueue.schedules set paused = true, next_slot = %s", (first_missed,))
    s = Scheduler(lambda: psycopg.connect(dsn, autocommit=True))
    with psycopg.connect(dsn, autocommit=True) as c:
        s.tick(c)
        assert _jobs(conn, "minutely") == []            # paused: nothing fires
        c.execute("select pgqueue.pause_schedule('minutely', false)")
        s.tick(c)
        s.tick(c)
    rows = _jobs(conn, "minutely")
    assert len(rows) == expect
    missed = [first_missed + dt.timedelta(minutes=i) for i in range(3)]
    assert [r[0] for r in rows] == missed[3 - expect:]
    # the slot is passed to the task, which declared a schedule_slot parameter
    for slot, args, kwargs in rows:
        assert args == ["m"]
        assert kwargs["schedule_slot"]["value"].startswith(slot.astimezone(UTC).strftime(
            "%Y-%m-%dT%H:%M:%S"))
    nxt = conn.execute("select next_slot from pgqueue.schedules").fetchone()[0]
    assert nxt == Schedule(every=60).next_after(_db_now(conn)) or nxt > _db_now(conn)


def test_catch_up_all_is_bounded_by_its_limit(sched_app, dsn, conn):
    sched_app.schedules["minutely"].catch_up = "all"
    sched_app.schedules["minutely"].catch_up_limit = 5
    _declare(conn, sched_app)
    back = Schedule(every=60).next_after(_db_now(conn)) - dt.timedelta(minutes=50)
    conn.execute("update pgqueue.schedules set next_slot = %s", (back,))
    with psycopg.connect(dsn, autocommit=True) as c:
        Scheduler(lambda: c).tick(c)
    rows = _jobs(conn, "minutely")
    assert len(rows) == 5
    assert rows[-1][0] == back + dt.timedelta(minutes=49)   # the most recent five


def test_competing_schedulers_enqueue_each_slot_once(sched_app, dsn, conn):
    _declare(conn, sched_app)
    slot = Schedule(every=60).next_after(_db_now(conn)) - dt.timedelta(minutes=1)
    conn.execute("update pgqueue.schedules set next_slot = %s", (slot,))
    barrier = threading.Barrier(6)
    results = []

    def race() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            s = Scheduler(lambda: c)
            barrier.wait()
            s.tick(c)
            results.append(s.fired)

    threads = [threading.Thread(target=race) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(results) == 1
    assert [r[0] for r in _jobs(conn, "minutely")] == [slot]


def test_sql_can_add_trigger_pause_and_resume_a_schedule(dsn, conn):
    conn.execute("select pgqueue.add_schedule('from-sql', 'other.service.task', "
                 "'[1]'::jsonb, cron => '*/5 * * * *', tz => 'Europe/Berlin')")
    row = conn.execute("select next_slot, declared from pgqueue.schedules").fetchone()
    assert row == (None, True)
    with psycopg.connect(dsn, autocommit=True) as c:
        Scheduler(lambda: c).tick(c)     # a worker computes the first slot
    nxt = conn.execute("select next_slot from pgqueue.schedules").fetchone()[0]
    assert nxt == Schedule(cron="*/5 * * * *", tz="Europe/Berlin").next_after(_db_now(conn)) \
        or nxt > _db_now(conn)
    job_id = conn.execute("select pgqueue.trigger_schedule('from-sql')").fetchone()[0]
    assert conn.execute("select task, args, schedule_name, schedule_slot from pgqueue.jobs "
                        "where id = %s", (job_id,)).fetchone() == (
        "other.service.task", [1], "from-sql", None)
    conn.execute("select pgqueue.pause_schedule('from-sql')")
    assert conn.execute("select paused from pgqueue.schedules").fetchone()[0] is True
    with pytest.raises(psycopg.errors.NoDataFound, match="no schedule named"):
        conn.execute("select pgqueue.trigger_schedule('nope')")
    conn.rollback()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown time zone"):
        conn.execute("select pgqueue.add_schedule('x', 't', every => '1 minute', "
                     "tz => 'Nowhere/City')")


def test_declaration_changes_on_restart_and_newest_start_wins(dsn, conn, caplog):
    def make(expr: str) -> pgqueue.App:
        app = pgqueue.App(dsn)

        @app.task(name="reports.build")
        def build() -> None: ...

        app.periodic(build, cron=expr, name="build")
        return app

    _declare(conn, make("0 * * * *"), "w1")
    assert conn.execute("select cron from pgqueue.schedules").fetchone()[0] == "0 * * * *"
    with caplog.at_level(logging.WARNING, logger="pgqueue.scheduler"):
        _declare(conn, make("*/10 * * * *"), "w2")
    cron, nxt, by = conn.execute("select cron, next_slot, declared_by "
                                 "from pgqueue.schedules").fetchone()
    assert (cron, by) == ("*/10 * * * *", "app:w2")
    assert nxt == Schedule(cron="*/10 * * * *").next_after(_db_now(conn)) or \
        nxt > _db_now(conn)
    assert any("replaces the stored one" in r.getMessage() and "0 * * * *" in r.getMessage()
               for r in caplog.records)


def test_a_schedule_no_longer_declared_is_kept_and_stops_firing(dsn, conn, sched_app):
    _declare(conn, sched_app)
    sched_app.schedules.clear()                        # the next release drops it
    assert _declare(conn, sched_app) == ["minutely"]
    assert conn.execute("select declared, paused from pgqueue.schedules").fetchone() == (
        False, False)
    conn.execute("update pgqueue.schedules set next_slot = now() - interval '1 minute'")
    with psycopg.connect(dsn, autocommit=True) as c:
        Scheduler(lambda: c).tick(c)
    assert _jobs(conn, "minutely") == []
    # an operator resumes it explicitly: it fires again, and later starts leave it alone
    conn.execute("select pgqueue.pause_schedule('minutely', false)")
    assert _declare(conn, sched_app) == []
    with psycopg.connect(dsn, autocommit=True) as c:
        Scheduler(lambda: c).tick(c)
    assert len(_jobs(conn, "minutely")) == 1


def test_scheduler_thread_fires_each_slot_on_time(dsn, conn):
    app = pgqueue.App(dsn)

    @app.task
    def beat(schedule_slot: dt.datetime | None = None) -> str:
        return schedule_slot.isoformat()

    app.periodic(beat, every=1, name="beat")
    _declare(conn, app)
    s = Scheduler(lambda: psycopg.connect(dsn, autocommit=True), poll_interval=30)
    s.start()
    try:
        rows = wait_until(lambda: len(_jobs(conn, "beat")) >= 3 and _jobs(conn, "beat"),
                          timeout=15, message="three slots")
    finally:
        s.stop()
    slots = [r[0] for r in rows]
    assert all(b - a == dt.timedelta(seconds=1) for a, b in zip(slots, slots[1:], strict=False))
    late = conn.execute("select max(created_at - schedule_slot) from pgqueue.jobs "
                        "where schedule_name = 'beat'").fetchone()[0]
    assert dt.timedelta(0) <= late < dt.timedelta(seconds=1)
    app.close()


# -- real worker processes ----------------------------------------------------------------

def _beats(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("select j.schedule_slot, j.created_at, count(s.id) "
                        "from pgqueue.jobs j left join public.side s on s.job_id = j.id "
                        "where j.schedule_name = 'beat' group by j.id "
                        "order by j.schedule_slot").fetchall()


@pytest.mark.slow
def test_three_worker_processes_fire_each_two_second_slot_once(conn, spawn_worker):
    workers = [spawn_worker("tests.apps.periodic:app", "-c", "2", "--poll-interval", "30",
                            env={"PERIODIC_EVERY": "2"}) for _ in range(3)]
    wait_until(lambda: conn.execute("select count(*) from pgqueue.workers").fetchone()[0] == 3,
               timeout=30, message="three workers")
    start = _db_now(conn)
    wait_until(lambda: _db_now(conn) >= start + dt.timedelta(seconds=13), timeout=30,
               interval=0.2, message="13 s of database time")
    for w in workers:
        w.signal(15)
    for w in workers:
        assert w.wait(30) == 0, w.log()
    rows = [r for r in _beats(conn) if start < r[0] <= start + dt.timedelta(seconds=13)]
    assert 5 <= len(rows) <= 7, rows
    slots = [r[0] for r in rows]
    assert all(b - a == dt.timedelta(seconds=2) for a, b in zip(slots, slots[1:], strict=False))
    assert all(r[2] == 1 for r in rows), rows                # each slot ran exactly once
    assert conn.execute("select count(*) from pgqueue.jobs where schedule_name = 'beat' "
                        "group by schedule_slot having count(*) > 1").fetchall() == []


FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@pytest.mark.slow
def test_worker_clocks_90_s_off_fire_each_slot_once_at_database_time(conn, spawn_worker):
    import os
    if not os.path.exists(FAKETIME_LIB):
        pytest.skip("libfaketime is not installed (Debian package faketime; .ci/run installs it)")
    for offset in ("-90s", "+90s"):
        spawn_worker("tests.apps.periodic:app", "-c", "2", "--poll-interval", "30",
                     env={"PERIODIC_EVERY": "1", "LD_PRELOAD": FAKETIME_LIB,
                          "FAKETIME": offset, "FAKETIME_DONT_RESET": "1"})
    wait_until(lambda: conn.execute("select count(*) from pgqueue.workers").fetchone()[0] == 2,
               timeout=30, message="two workers")
    heartbeats = conn.execute("select extract(epoch from heartbeat_at - now()) "
                              "from pgqueue.workers").fetchall()
    assert all(abs(h) < 60 for (h,) in heartbeats)           # heartbeats are database time
    start = _db_now(conn)
    wait_until(lambda: len([r for r in _beats(conn) if r[0] > start]) >= 6, timeout=30,
               message="six slots")
    rows = [r for r in _beats(conn) if r[0] > start]
    slots = [r[0] for r in rows]
    assert all(b - a == dt.timedelta(seconds=1) for a, b in zip(slots, slots[1:], strict=False)), slots
    # enqueued at the slot on the database clock, not 90 s early or late
    assert all(dt.timedelta(0) <= created - slot < dt.timedelta(seconds=1.5)
               for slot, created, _ in rows), rows
    wait_until(lambda: all(r[2] == 1 for r in _beats(conn) if r[0] > start and
                           r[0] <= slots[-1]), timeout=20, message="each slot run once")


def test_a_schedule_added_from_sql_that_cannot_be_evaluated_skips_only_itself(dsn, conn,
                                                                                caplog):
    """An interval no slot fits in a datetime (it sorts first, with no next slot yet)
    must not stop the scheduler from firing the schedules after it."""
    conn.execute("select pgqueue.add_schedule('a-huge', 'other.task', "
                 "every => interval '100000 years')")
    conn.execute("select pgqueue.add_schedule('b-fine', 'other.task', "
                 "every => interval '1 minute')")
    conn.execute("update pgqueue.schedules set next_slot = now() - interval '1 second' "
                 "where name = 'b-fine'")
    with psycopg.connect(dsn, autocommit=True) as c, \
            caplog.at_level(logging.ERROR, logger="pgqueue.scheduler"):
        Scheduler(lambda: c).tick(c)
    assert len(_jobs(conn, "b-fine")) == 1
    assert conn.execute("select next_slot from pgqueue.schedules where name = 'a-huge'"
                        ).fetchone()[0] is None
    assert "'a-huge' cannot be evaluated" in caplog.text


@pytest.mark.parametrize("policy, limit", [("latest", 100), ("all", 3), ("none", 100)])
def test_catching_up_a_long_pause_of_a_short_interval_is_quick(policy, limit):
    """every=1 s paused for 60 days: over 5 million missed slots; the scheduler must
    not walk them one by one (it fires nothing else meanwhile)."""
    from pgqueue.schedule import due_slots
    s = _Counting(every=1)
    now = dt.datetime(2026, 6, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    slots, following = due_slots(s, now - dt.timedelta(days=60), now, catch_up=policy,
                                 limit=limit)
    assert s.calls < 500         # not one step per missed slot (5 million)
    last = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
    expect = {"latest": [last], "all": [last - dt.timedelta(seconds=i) for i in (2, 1, 0)],
              "none": []}[policy]
    assert slots == expect
    assert following == last + dt.timedelta(seconds=1)
    # and the same answers as slot by slot, for a pause of a few periods
    short = due_slots(s, now - dt.timedelta(seconds=7.25), now, catch_up=policy, limit=limit)
    assert short == _walk(s, now - dt.timedelta(seconds=7.25), now, policy, limit)


class _Counting(Schedule):
    """A schedule that counts the slots it is asked for."""
    __slots__ = ("calls",)

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def next_after(self, instant):
        self.calls += 1
        return super().next_after(instant)


@pytest.mark.parametrize("policy, limit", [("latest", 100), ("all", 3), ("all", 1), ("none", 100)])
@pytest.mark.parametrize("expr, tz", [("* * * * *", "UTC"), ("*/15 * * * *", "Europe/Berlin"),
                                      ("30 2 * * *", "America/New_York"),
                                      ("30 1 * * *", "America/New_York")])
def test_catching_up_a_long_pause_of_a_cron_schedule_is_quick_and_exact(policy, limit, expr,
                                                                        tz):
    """A cron schedule paused for a year (525,600 slots every minute) walked every slot;
    now it starts from the oldest slot it can keep, with the same answers as a full walk,
    across both daylight-saving changes."""
    from pgqueue.schedule import due_slots
    s = _Counting(cron=expr, tz=tz)
    now = dt.datetime(2026, 11, 1, 7, 31, 0, tzinfo=UTC)     # just after the US fall-back
    slots, following = due_slots(s, now - dt.timedelta(days=365), now, catch_up=policy,
                                 limit=limit)
    assert s.calls < 200
    for back in (dt.timedelta(hours=3), dt.timedelta(days=1), dt.timedelta(days=9)):
        got = due_slots(s, now - back, now, catch_up=policy, limit=limit)
        assert got == _walk(s, now - back, now, policy, limit), (expr, back)


def _walk(s: Schedule, next_slot: dt.datetime, now: dt.datetime, policy: str,
          limit: int) -> tuple[list[dt.datetime], dt.datetime]:
    due, slot = [], next_slot
    while slot <= now:
        due.append(slot)
        slot = s.next_after(slot)
    if len(due) <= 1:
        return due, slot
    return {"all": due[-limit:], "latest": due[-1:], "none": []}[policy], slot


def test_app_periodic_checks_the_arguments_against_the_task():
    """A schedule whose arguments do not bind would fail at every slot: refused at
    declaration, as an enqueue would be (the slot counts as given when the task takes
    it)."""
    app = pgqueue.App("dbname=unused")

    @app.task
    def report(kind: str, schedule_slot: dt.datetime | None = None) -> None: ...

    app.periodic(report.s("daily"), every=60)
    with pytest.raises(TypeError, match=r"schedule 'x'.*missing a required argument: 'kind'"):
        app.periodic(report.s(), every=60, name="x")
    assert "x" not in app.schedules


def test_cli_schedules_show_writes_the_arguments_as_json(conn, dsn):
    from click.testing import CliRunner

    from pgqueue.cli import main
    conn.execute("select pgqueue.add_schedule('tick', 'app.tick', '[]', cron => '* * * * *')")
    conn.execute("select pgqueue.add_schedule('tock', 'app.tock', '[1, \"a\"]', "
                 "kwargs => '{\"k\": null}', cron => '* * * * *')")
    lines = {}
    for name in ("tick", "tock"):
        res = CliRunner().invoke(main, ["--dsn", dsn, "schedules", "show", name])
        assert res.exit_code == 0, res.output
        lines[name] = [ln.split(None, 1)[1] for ln in res.output.splitlines()
                       if ln.split(":", 1)[0] in ("args", "kwargs")]
    assert lines == {"tick": ["[]", "{}"], "tock": ['[1, "a"]', '{"k": null}']}


@pytest.mark.parametrize("cron, limit", [("@yearly", 5000), ("0 0 29 2 *", 1000),
                                         ("@yearly", 10_000)])
def test_a_rare_cron_with_a_large_catch_up_limit_still_fires_its_due_slot(cron, limit):
    # due_slots looked for the oldest slot it could keep by walking back limit + 1
    # slots from now: for a yearly or leap-day expression that walk ran past year 1
    # (OverflowError), so the schedule was never fired, whatever its catch_up policy.
    s = Schedule(cron=cron, tz="UTC")
    slot = s.next_after(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) - dt.timedelta(days=1))
    for policy in ("latest", "all", "none"):
        due, following = due_slots(s, slot, slot + dt.timedelta(seconds=1),
                                   catch_up=policy, limit=limit)
        assert due == [slot] and following == s.next_after(slot)
    # three missed yearly slots, all kept under "all"
    later = slot.replace(year=slot.year + 3) if cron == "@yearly" else None
    if later is not None:
        due, _ = due_slots(s, slot, later, catch_up="all", limit=limit)
        assert due == [slot.replace(year=slot.year + k) for k in range(4)]
