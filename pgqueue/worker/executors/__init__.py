"""Executors: where the function of a claimed attempt runs.

Each executor has ``start()``, ``submit(r)`` (run the attempt ``r`` of
:class:`~pgqueue.worker.running._Running`), ``stop()``, and reports every outcome
through :class:`~pgqueue.worker.outcomes.Outcomes`; when the function returns it frees
the attempt's slot in :class:`~pgqueue.worker.running.RunningJobs` and sets the
:class:`~pgqueue.worker.running.WakeUp`.

- :mod:`.threads`: ``concurrency`` threads for ``def`` tasks (the default);
- :mod:`.asyncio`: one event loop thread for ``async def`` tasks.
"""
