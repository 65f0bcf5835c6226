"""Hostile tasks for attack tests (children import ``tests.apps.hostile:app``)."""

from __future__ import annotations

import ctypes
import os
import time

import pgqueue

SPEC = "tests.apps.hostile:app"


def register(app: pgqueue.App, executor: str | None = "process") -> pgqueue.App:
    @app.task(name="hostile.segv", executor=executor, max_attempts=1)
    def segv() -> None:
        ctypes.string_at(0)

    @app.task(name="hostile.fork_then_segv", executor=executor, max_attempts=1)
    def fork_then_segv(linger: float, pid_file: str) -> None:
        """A grandchild (inheriting every descriptor) outlives this child, which crashes;
        its pid goes to ``pid_file``."""
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(linger)
            os._exit(0)
        with open(pid_file, "w") as f:
            f.write(str(grandchild))
        ctypes.string_at(0)

    @app.task(name="hostile.fork_then_return", executor=executor, max_attempts=1)
    def fork_then_return(linger: float) -> int:
        if os.fork() == 0:
            time.sleep(linger)
            os._exit(0)
        return os.getpid()

    @app.task(name="hostile.exit0", executor=executor, max_attempts=1)
    def exit0() -> None:
        os._exit(0)

    @app.task(name="hostile.pid", executor=executor)
    def pid() -> int:
        return os.getpid()

    return app


app = register(pgqueue.App(pool_max_size=2))
