"""A periodic task for tests that run real ``pgqueue worker`` processes.

``PERIODIC_EVERY`` (seconds) sets the interval; each run writes its slot and the
process's pid into ``public.side`` (note = the slot, ISO format).
"""

from __future__ import annotations

import datetime as dt
import os

import pgqueue

app = pgqueue.App(pool_max_size=2)


@app.periodic(every=float(os.environ.get("PERIODIC_EVERY", "2")), name="beat")
@app.task(pass_context=True)
def beat(ctx: pgqueue.JobContext, schedule_slot: dt.datetime | None = None) -> str:
    # the context knows the slot too (a mismatch fails the job: no side row)
    assert ctx.schedule_slot == schedule_slot and ctx.schedule_name == "beat"
    with ctx.app.connection() as conn:
        conn.execute("insert into public.side (job_id, attempt, worker, pid, event, note) "
                     "values (%s, %s, %s, %s, 'beat', %s)",
                     (ctx.job_id, ctx.attempt, str(ctx.worker_id), os.getpid(),
                      schedule_slot.isoformat() if schedule_slot else None))
    return schedule_slot.isoformat() if schedule_slot else ""
