"""The dashboard as an operator meets it: a real ``pgqueue dashboard`` process on a free
loopback port, real pages in Debian's Chromium (Playwright), plain HTTP for what a
browser would not send (forged POSTs, hostile query strings, tokens).

Every test asserts rows in the database, not only what the page says. Screenshots of the
pages go to each test's ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from .conftest import ROOT, wait_until

httpx = pytest.importorskip("httpx", reason="the dashboard tests need the test extra")
pytest.importorskip("starlette", reason="the dashboard needs the 'dashboard' extra")

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(dsn: str, *args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("PGQUEUE_DASHBOARD_TOKEN", None)
    return subprocess.Popen([sys.executable, "-m", "pgqueue.cli", "--dsn", dsn, "dashboard",
                             *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


class Dashboard:
    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc = proc
        self.url = url

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)


@contextlib.contextmanager
def serve(dsn: str, *args: str) -> Iterator[Dashboard]:
    port = free_port()
    proc = cli(dsn, "--port", str(port), *args)
    d = Dashboard(proc, f"http://127.0.0.1:{port}")

    def up() -> bool:
        assert proc.poll() is None, f"dashboard exited: {proc.stdout.read()}"
        try:
            return httpx.get(d.url + "/", timeout=2).status_code < 500
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 20, 0.05, "the dashboard to answer")
        yield d
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait(10)


@pytest.fixture
def dashboard(dsn) -> Iterator[Dashboard]:
    with serve(dsn) as d:
        yield d


@pytest.fixture(scope="module")
def browser():
    # module scope: Playwright's sync API keeps an event loop running in this thread
    # while it is started, which later synchronous code (Django's ORM) refuses to run under
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): "
                    "no browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    dialogs: list[str] = []
    errors: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.dialogs = dialogs
    pg.shot = lambda name: pg.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    yield pg
    context.close()
    assert not dialogs, f"a script ran on a page: {dialogs}"
    assert not errors, f"page errors: {errors}"


def insert_jobs(conn: psycopg.Connection, n: int, *, queue: str = "default",
                task: str = "app.work", state: str = "available", delay: str = "0",
                error: bool = False) -> list[int]:
    finished = state in ("completed", "discarded", "cancelled")
    errors = ('[{"at": "2024-01-01T00:00:00Z", "attempt": 1, "type": "ValueError", '
              '"message": "boom", "traceback": "Traceback (most recent call last):\\n'
              'ValueError: boom"}]') if error else "[]"
    rows = conn.execute(
        "insert into pgqueue.jobs (queue, task, state, run_at, finished_at, attempt, errors, "
        "args) select %s, %s, %s, now() + %s::interval, "
        "case when %s then now() - interval '5 minutes' end, %s, %s::jsonb, "
        "jsonb_build_array(i) from generate_series(1, %s) i returning id",
        (queue, task, state, delay, finished, 1 if finished else 0, errors, n)).fetchall()
    return [r[0] for r in rows]


def state_of(conn: psycopg.Connection, job_id: int) -> str:
    return conn.execute("select state from pgqueue.jobs where id = %s", (job_id,)).fetchone()[0]


# -- pages in a browser -----------------------------------------------------------

def test_overview_counts_match_sql(dashboard, conn, page):
    insert_jobs(conn, 7, queue="mail")
    insert_jobs(conn, 3, queue="mail", state="scheduled", delay="1 hour")
    insert_jobs(conn, 4, queue="mail", state="completed")
    insert_jobs(conn, 2, queue="mail", state="discarded", error=True)
    insert_jobs(conn, 5, queue="reports", state="retryable", delay="-1 minute")
    conn.execute("insert into pgqueue.queues (name, paused) values ('idle', true)")
    page.goto(dashboard.url + "/")
    page.shot("overview")
    expected = {r[0]: r[1:] for r in conn.execute("""
        select coalesce(j.queue, q.name),
               count(*) filter (where j.state = 'pending'),
               count(*) filter (where j.state in ('available', 'scheduled', 'retryable')
                                  and j.run_at <= now()),
               count(*) filter (where j.state in ('available', 'scheduled', 'retryable')
                                  and j.run_at > now()),
               count(*) filter (where j.state = 'running'),
               count(*) filter (where j.state = 'completed'),
               count(*) filter (where j.state = 'discarded'),
               count(*) filter (where j.state = 'cancelled')
          from pgqueue.jobs j full join pgqueue.queues q on q.name = j.queue
         group by 1""")}
    assert set(expected) == {"mail", "reports", "idle"}
    names = ("pending", "ready", "waiting", "running", "completed", "discarded", "cancelled")
    for queue, counts in expected.items():
        row = page.locator(f'tr[data-queue="{queue}"]')
        shown = tuple(int(row.locator(f'td[data-count="{n}"]').inner_text()) for n in names)
        assert shown == counts, queue
    assert "paused" in page.locator('tr[data-queue="idle"]').inner_text()
    # a chart of the last hour: one bar per minute and state with finished jobs
    assert page.locator("svg.chart rect.bar").count() >= 1


def test_filter_and_keyset_pagination(dashboard, conn, page):
    wanted = insert_jobs(conn, 120, queue="q1", state="discarded", error=True)
    insert_jobs(conn, 30, queue="q2", state="discarded", error=True)
    insert_jobs(conn, 30, queue="q1", state="completed")
    page.goto(dashboard.url + "/jobs")
    page.select_option('select[name="state"]', "discarded")
    page.fill('input[name="queue"]', "q1")
    page.click('form.filters button[type="submit"]')
    seen: list[int] = []
    pages = 0
    while True:
        pages += 1
        page.wait_for_selector("table.jobs")
        ids = [int(x) for x in page.locator("tr[data-job-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.jobId)")]
        seen.extend(ids)
        if pages == 2:
            page.shot("jobs-page-2")
        nxt = page.locator("a.next")
        if not nxt.count():
            break
        assert "before=" in nxt.get_attribute("href") and "offset" not in nxt.get_attribute("href")
        nxt.click()
    assert pages == 3
    assert seen == sorted(wanted, reverse=True)


def test_filter_by_partition_key_and_schedule(dashboard, conn, page):
    acme = [conn.execute("select pgqueue.enqueue('app.bill', jsonb_build_array(%s), "
                         "partition_key => 'acme', meta => '{\"tenant\": \"acme\"}')",
                         (i,)).fetchone()[0] for i in range(3)]
    conn.execute("select pgqueue.enqueue('app.bill', '[9]', partition_key => 'acme-2')")
    conn.execute("select pgqueue.enqueue('app.bill', '[8]', partition_key => 'globex')")
    nightly = conn.execute(
        "insert into pgqueue.jobs (task, schedule_name, schedule_slot) select 'app.report', "
        "'nightly', timestamptz '2024-05-01 03:00Z' + i * interval '1 day' "
        "from generate_series(0, 1) i returning id").fetchall()
    page.goto(dashboard.url + "/jobs")
    page.fill('input[name="partition_key"]', "acme")
    page.click('form.filters button[type="submit"]')
    page.wait_for_url(re.compile(r"partition_key=acme"))
    ids = [int(x) for x in page.locator("tr[data-job-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.jobId)")]
    assert ids == sorted(acme, reverse=True)
    page.click(f'tr[data-job-id="{acme[0]}"] a')
    assert page.inner_text("#partition-key") == "acme"
    assert '"tenant": "acme"' in page.inner_text("#meta")
    page.goto(dashboard.url + "/jobs?schedule=nightly")
    ids = [int(x) for x in page.locator("tr[data-job-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.jobId)")]
    assert ids == sorted((r[0] for r in nightly), reverse=True)
    page.click(f'tr[data-job-id="{nightly[0][0]}"] a')
    assert "nightly, slot 2024-05-01 03:00:00Z" in page.inner_text("dl.facts")


def test_job_page_shows_traceback_and_retry_runs_it_again(dsn, app, start_worker, page, conn):
    @app.task(pass_context=True, max_attempts=1, name="dash.flaky")
    def flaky(ctx, n):
        if ctx.attempt == 1:
            raise ValueError(f"first attempt of {n} fails")
        return n * 2

    job = flaky.enqueue(21)
    start_worker(app, concurrency=1, poll_interval=0.2)
    wait_until(lambda: state_of(conn, job.id) == "discarded", 20, message="the job discarded")
    with serve(dsn) as d:
        page.goto(d.url + "/jobs?state=discarded")
        page.click(f'tr[data-job-id="{job.id}"] a')
        page.wait_for_selector("pre.traceback")
        assert "Traceback (most recent call last)" in page.inner_text("pre.traceback")
        assert "first attempt of 21 fails" in page.inner_text("pre.traceback")
        page.shot("job-discarded")
        page.click('button:has-text("Retry")')
        row = wait_until(lambda: conn.execute(
            "select state, attempt, result from pgqueue.jobs where id = %s and state = "
            "'completed'", (job.id,)).fetchone(), 20, message="the retried job to complete")
        assert row[1] == 2 and row[2] == 42
        page.goto(f"{d.url}/jobs/{job.id}")
        assert "completed" in page.inner_text("h1")
        page.shot("job-completed")


def test_job_timeline_is_in_time_order(dashboard, conn, page):
    """A job retried by hand after four failed attempts: its run_at (the retry) is
    after every attempt, and attempt 4 started before it failed. The timeline listed
    the run time second and every failure before the last start."""
    errors = json.dumps([
        {"at": f"2026-01-01T10:0{n}:30+00:00", "attempt": n, "type": "ValueError",
         "message": f"boom {n}", "traceback": None} for n in (1, 2, 3, 4)]
        + [{"at": "not a time", "attempt": 0, "type": "X", "message": "no time"}])
    (job_id,) = conn.execute(
        "insert into pgqueue.jobs (queue, task, state, attempt, max_attempts, created_at, "
        "run_at, started_at, errors) values ('default', 'app.work', 'retryable', 4, 9, "
        "'2026-01-01T10:00:00Z', '2026-01-01T11:00:00Z', '2026-01-01T10:04:00Z', %s) "
        "returning id", (errors,)).fetchone()
    r = dashboard.get(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    page.goto(f"{dashboard.url}/jobs/{job_id}")
    items = page.locator("#timeline li").evaluate_all(
        "lis => lis.map(li => [li.dataset.event, li.innerText])")
    assert [e for e, _ in items] == ["enqueued", "failed", "failed", "failed", "started",
                                     "failed", "failed", "due"], items
    assert "attempt 4 started" in items[4][1] and "boom 4" in items[5][1]
    assert "no time" in items[6][1]
    # the time that is not one is shown as written in the errors list (it was a 500)
    assert "not a time" in page.inner_text("section.error-entry >> nth=0")
    whens = [t.split(" ", 2)[:2] for _, t in items if t[:4].isdigit()]
    assert whens == sorted(whens)


def test_pause_and_resume_a_queue(dashboard, conn, page):
    insert_jobs(conn, 2, queue="mail")

    def paused() -> bool | None:
        row = conn.execute("select paused from pgqueue.queues where name = 'mail'").fetchone()
        return row and row[0]

    page.goto(dashboard.url + "/")
    page.click('tr[data-queue="mail"] button:has-text("Pause")')
    page.wait_for_selector('tr[data-queue="mail"] button:has-text("Resume")')
    assert paused() is True
    page.click('tr[data-queue="mail"] button:has-text("Resume")')
    page.wait_for_selector('tr[data-queue="mail"] button:has-text("Pause")')
    assert paused() is False


def test_set_and_clear_queue_limits(dashboard, conn, page):
    insert_jobs(conn, 5, queue="mail")
    conn.execute("insert into pgqueue.jobs (queue, task, state, worker_id, started_at, attempt, "
                 "max_attempts) "
                 "values ('mail', 'app.work', 'running', gen_random_uuid(), now(), 1, 3)")
    page.goto(dashboard.url + "/")
    page.click('tr[data-queue="mail"] td.limits a')
    page.fill('input[name="concurrency"]', "3")
    page.fill('input[name="rate"]', "10/1m")
    page.fill('input[name="partition_concurrency"]', "1")
    page.click('button:has-text("Set limits")')
    page.wait_for_selector('#limits-now:has-text("concurrency 3")')
    assert conn.execute(
        "select concurrency, rate_limit, rate_period, partition_concurrency, "
        "partition_rate_limit, limits_set_by from pgqueue.queues where name = 'mail'"
    ).fetchone() == (3, 10, dt.timedelta(minutes=1), 1, None, "operator")
    page.goto(dashboard.url + "/")
    page.shot("overview-limits")
    row = page.locator('tr[data-queue="mail"]')
    assert row.locator("td.limits").inner_text() == (
        "concurrency 3, rate 10/1m, per key 1 (operator)")
    held, running = conn.execute("select held_back, running from pgqueue.queue_stats "
                                 "where queue = 'mail'").fetchone()
    assert (held, running) == (3, 1)   # 5 ready, 2 of 3 slots free
    assert int(row.locator('td[data-count="held_back"]').inner_text()) == held
    assert int(row.locator('td[data-count="running"]').inner_text()) == running
    row.locator("td.limits a").click()
    page.click('button:has-text("Clear limits")')
    page.wait_for_selector('#limits-now:has-text("no limit")')
    assert conn.execute(
        "select concurrency, rate_limit, partition_concurrency, partition_rate_limit, "
        "limits_set_by from pgqueue.queues where name = 'mail'").fetchone() == (
        None, None, None, None, "operator")


def test_bad_limits_are_refused_and_change_nothing(dashboard, conn):
    conn.execute("select pgqueue.set_queue_limits('mail', concurrency => 4)")
    with httpx.Client(base_url=dashboard.url, timeout=10) as client:
        text = client.get("/queues/limits?name=mail").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', text).group(1)
        for form in ({"concurrency": "0"}, {"rate": "fast"}, {"partition_rate": "5"},
                     {"concurrency": "1; drop table pgqueue.jobs"},
                     {"rate": "1/\uff15s"}):        # a full-width 5 was read as 5
            r = client.post("/queues/limits", data={"csrf_token": token, "name": "mail",
                                                    **form})
            assert r.status_code == 400, form
        # a name longer than any queue's (the CLI could not address it), then files
        # where text fields go (each was a 500)
        r = client.post("/queues/pause", data={"csrf_token": token, "name": "q" * 300})
        assert r.status_code == 400 and "128" in r.text
        for path, field in (("/queues/pause", "name"), ("/queues/limits", "concurrency"),
                            ("/jobs/bulk", "queue"), ("/schedules/trigger", "name")):
            r = client.post(path, data={"csrf_token": token, "name": "mail"},
                            files={field: ("x.txt", b"mail")})
            assert r.status_code == 400 and "not files" in r.text, (path, r.status_code)
            r = client.post(path, data={"name": "mail"}, files={"csrf_token": ("t", token)})
            assert r.status_code == 400, (path, r.status_code)
        r = client.post("/queues/limits", data={"name": "mail", "concurrency": "1"})
        assert r.status_code == 403
    assert conn.execute("select name, concurrency, paused from pgqueue.queues").fetchall() \
        == [("mail", 4, False)]


def test_bulk_cancel_of_a_filter(dashboard, conn, page):
    target = insert_jobs(conn, 50, queue="bulk", state="scheduled", delay="1 hour")
    other = insert_jobs(conn, 5, queue="other", state="scheduled", delay="1 hour")
    page.goto(dashboard.url + "/jobs?state=scheduled&queue=bulk")
    page.click('a:has-text("Cancel all")')
    assert page.inner_text("#bulk-count") == "50"
    page.shot("bulk-confirm")
    page.click('button:has-text("Cancel 50 jobs")')
    page.wait_for_url(re.compile(r"/jobs\?"))
    states = dict(conn.execute("select state, count(*) from pgqueue.jobs where id = any(%s) "
                               "group by state", (target,)).fetchall())
    assert states == {"cancelled": 50}
    assert {state_of(conn, i) for i in other} == {"scheduled"}


def test_workflow_graph_links_each_step_to_its_job(dashboard, app, conn, page):
    from pgqueue import chord

    @app.task(name="dash.part")
    def part(i):
        return i

    @app.task(name="dash.total")
    def total(xs):
        return sum(xs)

    handle = chord([part.s(i) for i in range(4)], total.s()).enqueue(name="sum <b>it</b>")
    page.goto(f"{dashboard.url}/workflows/{handle.id}")
    page.shot("workflow")
    steps = conn.execute("select job_id, state from pgqueue.workflow_steps where "
                         "workflow_id = %s", (handle.id,)).fetchall()
    assert page.locator("svg.workflow a.node").count() == len(steps) == 5
    assert page.locator("svg.workflow path.edge").count() == 4
    for job_id, state in steps:
        assert page.locator(f'svg.workflow a.node[data-job-id="{job_id}"]').get_attribute(
            "data-state") == state
    assert "sum <b>it</b>" in page.inner_text("h1")
    page.locator("svg.workflow a.node").first.click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))


def test_batch_page_from_a_member(dashboard, app, conn, page):
    @app.task(name="dash.member")
    def member(i):
        return i

    @app.task(name="dash.report")
    def report(xs):
        return xs

    batch = app.batch(callback=report.s(), name="import <i>x</i>")
    ids = batch.add(*(member.s(i) for i in range(3)))
    page.goto(f"{dashboard.url}/jobs/{ids[0]}")
    page.click("#batch-link")
    page.wait_for_url(f"**/batches/{batch.id}")
    assert "open" in page.inner_text("h1") and "import <i>x</i>" in page.inner_text("h1")
    assert [int(x) for x in page.locator("table.members tr[data-job-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.jobId)")] == ids
    conn.execute("select pgqueue.cancel(%s)", (ids[1],))
    batch.seal()
    page.reload()
    page.shot("batch")
    row = conn.execute("select state, members, completed, discarded, cancelled, unfinished, "
                       "callback_job_id, callback_state from pgqueue.batches "
                       "where batch_id = %s", (batch.id,)).fetchone()
    assert row[:6] == ("sealed", 3, 0, 0, 1, 2)
    assert "sealed" in page.inner_text("h1")
    shown = tuple(int(page.inner_text(f'#batch-facts dd[data-count="{n}"]')) for n in
                  ("members", "completed", "discarded", "cancelled", "unfinished"))
    assert shown == row[1:6]
    assert page.inner_text("#callback") == f"{row[6]} dash.report {row[7]}"
    page.goto(f"{dashboard.url}/batches?state=sealed")
    assert page.locator(f'tr[data-batch-id="{batch.id}"]').count() == 1
    page.goto(f"{dashboard.url}/batches?state=open")
    assert page.locator("tr[data-batch-id]").count() == 0


def test_workers_page_links_each_running_job(dashboard, conn, page):
    (worker,) = conn.execute(
        "insert into pgqueue.workers (id, name, hostname, pid, queues, tasks, concurrency) "
        "values (gen_random_uuid(), 'w-1', 'host-a', 42, '{mail}', '{app.a,app.b}', 4) "
        "returning id").fetchone()
    running = [r[0] for r in conn.execute(
        "insert into pgqueue.jobs (queue, task, state, worker_id, started_at, attempt, "
        "max_attempts) select 'mail', 'app.a', 'running', %s, now(), 1, 3 "
        "from generate_series(1, 2) returning id", (worker,)).fetchall()]
    page.goto(dashboard.url + "/workers")
    row = page.locator("tr", has_text="w-1")
    assert "host-a" in row.inner_text() and "mail" in row.inner_text()
    links = row.locator("td.running a")
    assert [int(x) for x in links.all_inner_texts()] == running
    links.first.click()
    page.wait_for_url(f"**/jobs/{running[0]}")
    assert "host-a, pid 42" in page.inner_text("dl.facts")


def test_hostile_values_render_as_text(dashboard, conn, page):
    hostile = "<script>alert(1)</script>"
    (job_id,) = conn.execute(
        "insert into pgqueue.jobs (queue, task, args, kwargs) values (%s, %s, %s, %s) "
        "returning id", (hostile, hostile, f'["{hostile}"]',
                         '{"k": "</pre><img src=x onerror=alert(2)>"}')).fetchone()
    for path in ("/", "/jobs", f"/jobs/{job_id}"):
        page.goto(dashboard.url + path)
        assert hostile in page.inner_text("main"), path
    assert page.locator("main script, main img").count() == 0
    assert hostile in page.inner_text("#args")
    raw = dashboard.get(f"/jobs/{job_id}").text
    assert hostile not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw


# -- HTTP ---------------------------------------------------------------------------

def test_hostile_query_strings_are_refused_cleanly(dashboard):
    cases = ["/jobs?before=1%20or%201=1", "/jobs?before=-1", "/jobs?before=99999999999999999999",
             "/jobs?state=%3Cscript%3E", "/jobs?limit=100000000", "/jobs?created_from=yesterday",
             "/jobs?workflow=1e3", "/jobs?sort=random()", "/jobs?sort=run_at&state=scheduled"
             "&after=x,1", "/jobs/0", "/jobs/abc", "/jobs/99999999999999999999",
             "/workflows?before=%00", "/workflows/-3", "/jobs/bulk?action=drop",
             "/jobs?queue=%00", "/jobs?task=" + "x" * 600, "/batches?state=x",
             "/batches/1x", "/batches/7?after=-1", "/queues/limits?name="]
    for path in cases:
        r = dashboard.get(path)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert "<script>" not in r.text
    assert dashboard.get("/jobs/12345").status_code == 404


def test_responses_carry_a_content_security_policy_and_no_inline_script(dashboard):
    r = dashboard.get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", r.text) == []


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(dashboard, conn):
    (job_id,) = insert_jobs(conn, 1, state="discarded", error=True)
    # no cookie, no token: what another site's form would send
    r = httpx.post(f"{dashboard.url}/jobs/{job_id}/retry", data={"next": "/"}, timeout=10)
    assert r.status_code == 403
    # the browser's cookie, a token from elsewhere
    with httpx.Client(base_url=dashboard.url, timeout=10) as client:
        page = client.get(f"/jobs/{job_id}")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        r = client.post(f"/jobs/{job_id}/retry", data={"csrf_token": "0" * len(token)})
        assert r.status_code == 403
        r = client.post("/queues/pause", data={"name": "default"})
        assert r.status_code == 403
        assert state_of(conn, job_id) == "discarded"
        assert conn.execute("select count(*) from pgqueue.queues").fetchone()[0] == 0
        # the page's own token works
        r = client.post(f"/jobs/{job_id}/retry", data={"csrf_token": token},
                        follow_redirects=False)
        assert r.status_code == 303
    assert state_of(conn, job_id) == "available"


def test_a_page_of_another_site_rebound_to_loopback_is_refused(dsn, conn):
    # DNS rebinding: the attacker's name now resolves to 127.0.0.1, so its page is
    # same-origin with the dashboard; the browser still sends the attacker's Host.
    evil = {"Host": "rebind.attacker.example:8900"}
    (job_id,) = insert_jobs(conn, 1, state="discarded", error=True)
    with serve(dsn, "--allowed-host", "Queue.Proxy.Example") as d, \
            httpx.Client(base_url=d.url, timeout=10) as client:
        r = client.get("/", headers=evil)
        assert r.status_code == 400
        assert "--allowed-host rebind.attacker.example" in r.text
        assert "csrf_token" not in r.text and "set-cookie" not in r.headers
        # even with a token and cookie obtained by a page of this machine's name
        page = client.get(f"/jobs/{job_id}")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        r = client.post("/queues/pause", headers=evil,
                        data={"name": "default", "csrf_token": token})
        assert r.status_code == 400
        assert conn.execute("select count(*) from pgqueue.queues").fetchone()[0] == 0
        port = d.url.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST",
                     f"queue.proxy.example:{port}", "queue.proxy.example"):
            assert client.get("/", headers={"Host": host}).status_code == 200, host
        r = client.post("/queues/pause", headers={"Host": "queue.proxy.example"},
                        data={"name": "default", "csrf_token": token},
                        follow_redirects=False)
        assert r.status_code == 303
    assert conn.execute("select paused from pgqueue.queues where name = 'default'"
                        ).fetchone() == (True,)


def test_read_only_hides_and_refuses_every_action(dsn, conn):
    (job_id,) = insert_jobs(conn, 1, state="discarded", error=True)
    conn.execute("select pgqueue.add_schedule('nightly', 'app.report', cron => '0 3 * * *')")
    with serve(dsn, "--read-only") as d, httpx.Client(base_url=d.url, timeout=10) as client:
        for path in ("/", f"/jobs/{job_id}", "/jobs", "/schedules"):
            text = client.get(path).text
            assert "<form" not in text.replace('<form class="filters"', ""), path
            assert "read-only" in text
        for path, data in [(f"/jobs/{job_id}/retry", {}), (f"/jobs/{job_id}/cancel", {}),
                           ("/jobs/bulk", {"action": "cancel"}),
                           ("/queues/pause", {"name": "default"}),
                           ("/queues/limits", {"name": "default", "concurrency": "1"}),
                           ("/schedules/pause", {"name": "nightly"}),
                           ("/schedules/trigger", {"name": "nightly"})]:
            assert client.post(path, data=data).status_code == 403, path
    assert state_of(conn, job_id) == "discarded"
    assert conn.execute("select paused, last_job_id from pgqueue.schedules").fetchone() == (
        False, None)
    assert conn.execute("select count(*) from pgqueue.queues").fetchone()[0] == 0


def test_binding_beyond_loopback_needs_a_token(dsn):
    proc = cli(dsn, "--host", "0.0.0.0", "--port", str(free_port()))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "refusing to listen on 0.0.0.0 without authentication" in out
    assert "--token" in out


def test_a_wrong_token_is_refused(dsn):
    with serve(dsn, "--token", "s3cret-token") as d:
        assert d.get("/").status_code == 401
        assert d.get("/", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert d.get("/jobs", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
        with httpx.Client(base_url=d.url, timeout=10, follow_redirects=True) as client:
            r = client.post("/login", data={"token": "wrong", "next": "/"})
            assert r.status_code == 401
            r = client.post("/login", data={"token": "s3cret-token", "next": "/workers"})
            assert r.status_code == 200 and r.url.path == "/workers"
            assert "s3cret-token" not in str(client.cookies.jar)


def test_base_path(dsn):
    with serve(dsn, "--base-path", "/queue") as d:
        r = d.get("/queue/jobs")
        assert r.status_code == 200
        assert 'href="/queue/static/dashboard.css"' in r.text
        assert d.get("/queue/static/dashboard.css").status_code == 200
