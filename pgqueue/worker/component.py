"""What every threaded component of the worker shares: one daemon thread running its
``_run`` loop, started by :meth:`~ThreadComponent.start` and joined by
:meth:`~ThreadComponent.stop`.

Owns no connection and runs no SQL. The heartbeat (with the rescuer), the completer, the
listener, maintenance, the scheduler and the watchdog are each one of these: the
worker starts them after wiring them, and stops them in its shutdown.
"""

from __future__ import annotations

import threading


class ThreadComponent:
    """A worker component that owns one daemon thread running :meth:`_run`.

    A subclass sets :attr:`thread_name` and implements :meth:`_run`, a loop that returns
    once the worker is done; :meth:`stop` first calls :meth:`_interrupt` (what makes the
    loop return soon: nothing by default, where the worker's ``done`` event does it),
    then waits for the thread.
    """

    #: the thread's name, shown in stack dumps and by ``py-spy``
    thread_name = "pgqueue-component"
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the component's thread."""
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Make the loop return and wait up to ``timeout`` seconds for the thread."""
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    def _interrupt(self) -> None:
        """Make :meth:`_run` return soon (default: nothing; the ``done`` event does it)."""

    def _run(self) -> None:  # pragma: no cover - every component has its own loop
        raise NotImplementedError
