"""Flow control declarations: per-queue limits declared in code with ``app.queue(...)``.

The limits themselves live in ``pgqueue.queues`` and are enforced by the claim in SQL
(migration 0009): this module only checks declarations, parses the CLI's ``N/PERIOD``
rates, and writes an app's declarations when one of its workers starts
(:func:`apply_declarations`). An operator's setting (``pgqueue queues set``,
``pgqueue.set_queue_limits(...)``) wins over a declaration until it is reset.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Any

import psycopg

from ._sql import q
from .errors import ConfigurationError

__all__ = ["QueueLimits", "apply_declarations", "apply_queue_declarations", "parse_rate",
           "rate_text", "task_concurrency"]

log = logging.getLogger("pgqueue.worker")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class QueueLimits:
    """The limits of one queue (``None``: no limit). Rates are (count, period in s)."""

    name: str
    concurrency: int | None = None
    rate_limit: tuple[int, float] | None = None
    partition_concurrency: int | None = None
    partition_rate_limit: tuple[int, float] | None = None

    def params(self, set_by: str | None) -> dict[str, Any]:
        """Parameters of the ``set_queue_limits`` query."""
        rate, part_rate = self.rate_limit, self.partition_rate_limit
        return {"queue": self.name, "concurrency": self.concurrency,
                "rate_limit": rate[0] if rate else None,
                "rate_period": rate[1] if rate else None,
                "partition_concurrency": self.partition_concurrency,
                "partition_rate_limit": part_rate[0] if part_rate else None,
                "partition_rate_period": part_rate[1] if part_rate else None,
                "set_by": set_by}


def check_concurrency(value: Any, what: str) -> int | None:
    """``value`` as a concurrency (an int >= 1) or ``None``; raises ConfigurationError."""
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= 2**31 - 1:
        raise ConfigurationError(f"{what} must be an int >= 1 or None, got {value!r}")
    return value


def check_rate(value: Any, what: str) -> tuple[int, float] | None:
    """``value`` as a rate ``(count, period_seconds)`` or ``None``; a ``timedelta``
    period is accepted. Raises ConfigurationError."""
    if value is None:
        return None
    try:
        count, period = value
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be a pair (count, period in seconds), e.g. "
                                 f"(20, 1.0), got {value!r}") from None
    if isinstance(period, dt.timedelta):
        period = period.total_seconds()
    if (type(count) is not int or not 1 <= count <= 2**31 - 1 or isinstance(period, bool)
            or not isinstance(period, (int, float)) or not 0 < period <= 366 * 86400):
        raise ConfigurationError(f"{what} must be (count >= 1, period > 0 seconds, at most a "
                                 f"year), got {value!r}")
    return count, float(period)


def parse_rate(text: str) -> tuple[int, float] | None:
    """``"20/1s"``, ``"1000/1h"``, ``"5/s"``, ``"none"`` -> (count, seconds) or ``None``."""
    if text.strip().lower() == "none":
        return None
    # ASCII digits only: int() reads "５" (a full-width 5) too, which no one means here
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h|d)\s*", text, re.ASCII)
    if not m:
        raise ValueError(f"a rate is N/PERIOD such as 20/1s, 1000/1h or 5/m (or none), "
                         f"got {text!r}")
    period = float(m.group(2) or 1) * _UNITS[m.group(3)]
    return check_rate((int(m.group(1)), period), "the rate")


def rate_text(count: int | None, period: float | None) -> str | None:
    """A rate as :func:`parse_rate` reads it (``20/1s``, ``1000/1h``), or ``None``."""
    if count is None or period is None:
        return None
    for unit, secs in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if period >= secs and period % secs == 0:
            return f"{count}/{period / secs:g}{unit}"
    return f"{count}/{period * 1000:g}ms"


def declare(app: Any, name: str, concurrency: Any, rate_limit: Any,
            partition_concurrency: Any, partition_rate_limit: Any) -> QueueLimits:
    """Check one ``app.queue`` declaration and record it in ``app.queues``."""
    from ._options import _validate_options
    _validate_options(queue=name)
    limits = QueueLimits(
        name=name, concurrency=check_concurrency(concurrency, "concurrency"),
        rate_limit=check_rate(rate_limit, "rate_limit"),
        partition_concurrency=check_concurrency(partition_concurrency, "partition_concurrency"),
        partition_rate_limit=check_rate(partition_rate_limit, "partition_rate_limit"))
    if name in app.queues and app.queues[name] != limits:
        raise ConfigurationError(f"queue {name!r} is already declared with other limits")
    app.queues[name] = limits
    return limits


def apply_declarations(conn: psycopg.Connection, declared: Any) -> list[str]:
    """Write each declared queue's limits to ``pgqueue.queues`` (a worker's start).

    A queue whose limits an operator set last keeps them (the database function skips
    it); returns the names of those skipped.
    """
    skipped = []
    for limits in declared:
        (written,) = conn.execute(q("set_queue_limits"), limits.params("app")).fetchone()
        if not written:
            skipped.append(limits.name)
    return skipped


def task_concurrency(app: Any, names: list[str]) -> list[int | None] | None:
    """Each task's declared concurrency, parallel to ``names`` (the claim's ``tasks``);
    ``None`` when no task declares one, so the claim keeps its plain path."""
    values = [app.tasks[n].concurrency for n in names]
    return values if any(v is not None for v in values) else None


def apply_queue_declarations(app: Any, connect: Any) -> None:
    """At a worker's start: write the app's ``app.queue`` declarations (nothing to do
    without any), logging those an operator's setting overrides."""
    if not app.queues:
        return
    with connect() as conn:
        skipped = apply_declarations(conn, app.queues.values())
    for name in skipped:
        log.info("queue %s keeps the limits an operator set (pgqueue queues set); "
                 "the app's declaration applies after `pgqueue queues set %s --reset`",
                 name, name)
