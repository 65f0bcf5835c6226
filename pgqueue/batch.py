"""Batches: a workflow left open, filled over any number of transactions, then sealed.

::

    batch = app.batch(callback=report.s(), on_error=alert.s(), name="import")
    for page in pages:
        with psycopg.connect(dsn) as conn:                # one transaction per page
            conn.execute("insert into rows ...")
            batch.using(connection=conn).add(*(load.s(row) for row in page))
    batch.seal()
    batch.result(timeout=600)                             # report's result

The callback receives the list of the members' results in the order they were added,
and becomes runnable in the one transaction that makes "sealed and every member
terminal" true (the seal's own, or the last member's completion, whichever commits
later), exactly once. A member's permanent failure fails the batch as any workflow
step does: the callback is cancelled and ``on_error`` runs once. Without a callback,
the batch's result is the list of the members' results.

Storage: a batch is a ``pgqueue.workflows`` row with a *seal* step (task
``pgqueue.batch_seal``, never claimed, ``pending`` until :meth:`Batch.seal` completes
it) and the callback, which waits for the seal and for one edge per member in
``pgqueue.job_dependencies``. The same fan-in trigger as every workflow releases it; see
``sql/migrations/0009_batches.sql``. From another language: ``pgqueue.open_batch``,
``pgqueue.add_to_batch``, ``pgqueue.seal_batch``, and the ``pgqueue.batches`` view.

An add holds the batch's lock until its transaction commits (adds to one batch, and the
seal, are serialized; members that finish meanwhile wait to record their completion):
keep the adding transactions short.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from .errors import BatchSealed, EnqueueError
from .serialization import json_text
from .workflow import Signature, WorkflowHandle, _Plan, check_error_callback

if TYPE_CHECKING:  # pragma: no cover
    from .app import App

__all__ = ["Batch", "BatchCall"]

_OPEN_SQL = ("select pgqueue.open_batch(%(callback)s::jsonb, %(on_error)s::jsonb, %(name)s, "
             "%(max_steps)s)")
_ADD_SQL = "select pgqueue.add_to_batch(%(id)s, %(members)s::jsonb)"
_SEAL_SQL = "select pgqueue.seal_batch(%(id)s)"


def _dumps(value: Any) -> str:
    return json_text(value)


class Batch:
    """An open batch (``app.batch(...)``) or an existing one (``app.batch_by_id(id)``).

    The batch is created in the database on first use (:meth:`add`, :meth:`seal`,
    :meth:`open` or :attr:`id`), on the connection in use then: the app's pool
    (committed at once), or a caller's (``batch.using(connection=conn).add(...)``:
    the batch and those members exist iff that transaction commits).

    :param app: the :class:`~pgqueue.App`.
    :param callback: a signature run once the batch is sealed and every member is
        terminal; ``task.s(...)`` receives the list of the members' results first,
        ``task.si(...)`` nothing. ``None``: no callback.
    :param on_error: a signature run once if a member fails for good; it receives
        ``(failed_job_id, failure)`` first, as a workflow's error callback.
    :param name: label stored in ``pgqueue.workflows.name``.
    :param max_steps: the most steps the batch may reach (members, replacements, seal
        and callback); default 1,000,000.
    """

    def __init__(self, app: App, callback: Signature | None = None,
                 on_error: Signature | None = None, name: str | None = None, *,
                 max_steps: int | None = None, id: int | None = None):
        if callback is not None and not isinstance(callback, Signature):
            raise EnqueueError(f"a batch callback must be a signature (task.s(...)), got {callback!r}")
        if on_error is not None:
            check_error_callback(on_error)
        if name is not None and (not isinstance(name, str) or "\x00" in name):
            raise EnqueueError(f"batch name must be a string without NUL, got {name!r}")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 2):
            raise EnqueueError(f"max_steps must be an integer >= 2, got {max_steps!r}")
        self.app = app
        self.callback = callback
        self.on_error = on_error
        self.name = name
        self.max_steps = max_steps
        self._id = None if id is None else int(id)

    def __repr__(self) -> str:
        return f"<Batch {self._id if self._id is not None else '(not created)'}>"

    @property
    def id(self) -> int:
        """The batch's id (its ``pgqueue.workflows.id``); creates the batch, committed
        at once, if it does not exist yet."""
        if self._id is None:
            self.open()
        assert self._id is not None  # noqa: S101 - narrows a type; open() set it
        return self._id

    def using(self, *, connection: Any) -> BatchCall:
        """This batch bound to a caller's connection: ``add``, ``seal`` and ``open`` then
        run in its current transaction, and nothing is committed here.

        :param connection: a psycopg ``Connection`` or ``AsyncConnection`` (or a Django
            connection, SQLAlchemy ``Session``/``Connection`` on psycopg 3).
        """
        return BatchCall(self, connection)

    def open(self) -> int:
        """Create the batch now on the app's pool (committed at once); returns its id."""
        return BatchCall(self, None).open()

    def add(self, *signatures: Signature) -> list[int]:
        """Add members, committed at once on the app's pool; see :meth:`BatchCall.add`."""
        return BatchCall(self, None).add(*signatures)

    def seal(self) -> bool:
        """Seal the batch, committed at once; see :meth:`BatchCall.seal`."""
        return BatchCall(self, None).seal()

    async def aadd(self, *signatures: Signature) -> list[int]:
        """:meth:`add` for async code, on a new autocommit connection."""
        return await BatchCall(self, None).aadd(*signatures)

    async def aseal(self) -> bool:
        """:meth:`seal` for async code, on a new autocommit connection."""
        return await BatchCall(self, None).aseal()

    @property
    def handle(self) -> WorkflowHandle:
        """A :class:`~pgqueue.WorkflowHandle` on the batch: ``state``, ``steps()``,
        ``cancel()``, ``result()``, ``aresult()``."""
        return WorkflowHandle(self.app, self.id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the batch to finish and return the callback's result (without a
        callback, the list of the members' results in the order they were added).

        :raises WorkflowFailed: a member failed for good, or the batch was cancelled.
        :raises ResultTimeout: ``timeout`` (seconds) elapsed first.
        """
        return self.handle.result(timeout)

    async def aresult(self, timeout: float | None = None) -> Any:
        """:meth:`result` for async code (LISTEN on an ``AsyncConnection``, no polling)."""
        return await self.handle.aresult(timeout)

    # -- parameters ----------------------------------------------------------------------

    def _open_params(self) -> dict[str, Any]:
        plan = _Plan()
        callback = None
        if self.callback is not None:
            i = plan.add(self.callback, "none" if self.callback.immutable else "results",
                         [], [], False)
            callback = plan.steps[i]
        on_error = None
        if self.on_error is not None:
            i = plan.add(self.on_error, "error", [], [], False, on_error=True)
            on_error = plan.steps[i]
        return {"callback": None if callback is None else _dumps(callback),
                "on_error": None if on_error is None else _dumps(on_error),
                "name": self.name, "max_steps": self.max_steps}

    def _members(self, signatures: tuple[Any, ...]) -> str:
        if len(signatures) == 1 and isinstance(signatures[0], (list, tuple)):
            signatures = tuple(signatures[0])
        plan = _Plan()
        for s in signatures:
            if not isinstance(s, Signature):
                raise EnqueueError(f"a batch member must be a signature (task.s(...)), got {s!r}")
            if s.options.get("any_outcome"):
                raise EnqueueError("a batch member has no dependencies: any_outcome does not apply")
            plan.add(s, "none", [], [], False)
        if plan.app is not None and plan.app is not self.app:
            raise EnqueueError("the members of a batch must belong to the batch's App")
        return _dumps(plan.steps)


def _sealed(batch_id: int, e: psycopg.Error) -> BatchSealed:
    msg = (e.diag.message_primary or str(e)).removeprefix("pgqueue.add_to_batch: ")
    return BatchSealed(batch_id, msg)


class BatchCall:
    """A :class:`Batch` bound to a connection (the result of ``batch.using(...)``)."""

    __slots__ = ("batch", "connection")

    def __init__(self, batch: Batch, connection: Any):
        self.batch = batch
        self.connection = connection

    def _ensure(self, conn: psycopg.Connection) -> int:
        b = self.batch
        if b._id is None:
            (b._id,) = conn.execute(_OPEN_SQL, b._open_params()).fetchone()
        return b._id

    async def _aensure(self, conn: psycopg.AsyncConnection) -> int:
        b = self.batch
        if b._id is None:
            cur = await conn.execute(_OPEN_SQL, b._open_params())
            (b._id,) = await cur.fetchone()
        return b._id

    def open(self) -> int:
        """Create the batch in this connection's transaction if it does not exist yet
        (with no connection: on the app's pool, committed at once); returns its id."""
        from ._connections import sync_connection
        with sync_connection(self.batch.app, self.connection) as conn:
            return self._ensure(conn)

    def add(self, *signatures: Signature) -> list[int]:
        """Enqueue members into the batch, in this connection's transaction.

        Any number of times, from any process (``app.batch_by_id(id)``); each member is
        an ordinary job of the batch's workflow, runnable once the adding transaction
        commits. The callback receives the results in the order members were added.
        The transaction holds the batch's lock until it ends: keep it short.

        :param signatures: ``task.s(...)`` signatures (or one list of them); their
            arguments are checked against their tasks before any SQL runs.
        :returns: the members' job ids, in order.
        :raises BatchSealed: the batch is sealed or cancelled (the database refuses the
            add; a caller's transaction is left aborted).
        :raises EnqueueError: a member that is not a signature, or an invalid option.
        """
        from ._connections import sync_connection
        members = self.batch._members(signatures)
        with sync_connection(self.batch.app, self.connection) as conn:
            batch_id = self._ensure(conn)
            try:
                (ids,) = conn.execute(_ADD_SQL, {"id": batch_id, "members": members}).fetchone()
            except psycopg.errors.ObjectNotInPrerequisiteState as e:
                raise _sealed(batch_id, e) from e
        return list(ids)

    def seal(self) -> bool:
        """Seal the batch in this connection's transaction: nothing can be added after.

        The callback becomes runnable in this transaction if every member is already
        terminal (an empty batch's callback runs at once with ``[]``), else in the one
        that finishes the last member. Sealing twice is harmless.

        :returns: True, or False if the batch was already sealed or cancelled.
        """
        from ._connections import sync_connection
        with sync_connection(self.batch.app, self.connection) as conn:
            batch_id = self._ensure(conn)
            (done,) = conn.execute(_SEAL_SQL, {"id": batch_id}).fetchone()
        return bool(done)

    async def aadd(self, *signatures: Signature) -> list[int]:
        """:meth:`add` on a caller's ``AsyncConnection`` (its transaction) or a new one."""
        from ._connections import async_connection
        members = self.batch._members(signatures)
        async with async_connection(self.batch.app, self.connection) as conn:
            batch_id = await self._aensure(conn)
            try:
                cur = await conn.execute(_ADD_SQL, {"id": batch_id, "members": members})
                (ids,) = await cur.fetchone()
            except psycopg.errors.ObjectNotInPrerequisiteState as e:
                raise _sealed(batch_id, e) from e
        return list(ids)

    async def aseal(self) -> bool:
        """:meth:`seal` on a caller's ``AsyncConnection`` (its transaction) or a new one."""
        from ._connections import async_connection
        async with async_connection(self.batch.app, self.connection) as conn:
            batch_id = await self._aensure(conn)
            cur = await conn.execute(_SEAL_SQL, {"id": batch_id})
            (done,) = await cur.fetchone()
        return bool(done)
