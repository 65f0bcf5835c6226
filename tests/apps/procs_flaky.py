"""An app whose child processes can be made to fail while starting, for the process
executor's restart tests. Workers pass ``app_spec=spec(token)``: each child reads the
attribute ``app_<token>`` of this module when it starts (the fork server imported the
module once already, so module code runs only there), and the module's ``__getattr__``
then looks at the file :func:`flag` names: ``crash`` exits the child at once, ``hang``
never answers; no file lets it start.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import pgqueue

_app = pgqueue.App("postgresql://unused")


@_app.task(name="flaky.pid", executor="process")
def pid() -> int:
    return os.getpid()


@_app.task(name="flaky.nap", executor="process")
def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def spec(token: str) -> str:
    return f"{__name__}:app_{token}"


def flag(token: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"pgqueue-test-child-start-{token}")


def __getattr__(name: str) -> Any:
    if not name.startswith("app_"):
        raise AttributeError(name)
    try:
        with open(flag(name[4:])) as f:
            how = f.read().strip()
    except OSError:
        how = ""
    if how == "crash":
        os._exit(3)
    if how == "hang":
        time.sleep(3600)
    return _app
