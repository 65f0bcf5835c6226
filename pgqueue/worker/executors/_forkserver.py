"""The fork server ignores SIGTERM: the process executor puts this module first in the
fork server's preload list, and importing it there sets SIGTERM to ``SIG_IGN``.

A SIGTERM sent to the worker's whole process group (systemd's default
``KillMode=control-group``, ``kill -TERM -- -PGID``, ``timeout``) reached the fork
server too: it died, every child with it (their ``PR_SET_PDEATHSIG``), and the running
jobs failed with ``ChildProcessDied`` instead of finishing within the worker's shutdown
grace. The worker decides when its children stop; the fork server ends when the worker
closes its end of the server's pipe, or dies. The children, forked from the server,
inherit the ignored SIGTERM (they ignore it anyway).

Imported anywhere else (a tool that imports every module) it changes nothing.
"""

from __future__ import annotations

import signal
import sys


def _in_fork_server() -> bool:
    """True while ``multiprocessing.forkserver.main`` is importing its preload list."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is None:
        return False
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


if _in_fork_server():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
