"""Retry policies: what a failed attempt's backoff looks like.

The delay itself is computed in SQL by ``pgqueue.backoff(attempt, base, cap, jitter)``
on the database clock: ``base * 2^(attempt-1)`` with the exponent clamped before
exponentiation, capped at ``cap``, then spread by +-``jitter`` (a fraction) and capped
again. Attempt 2,147,483,646 gives ``cap``, never an overflow or a time in the past.
This follows the exponential-backoff-with-jitter scheme common to Oban and River.
"""

from __future__ import annotations

import dataclasses

__all__ = ["MAX_DELAY", "NO_RETRY", "RetryPolicy"]

#: longest delay anywhere (enqueue delay, RetryLater delay, backoff cap): 100 years, far
#: inside what PostgreSQL's interval and timestamptz arithmetic can hold
MAX_DELAY = 100 * 365.25 * 86400.0


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    :param base: seconds before the second attempt (float, default 1.0).
    :param cap: largest delay in seconds (float, default 3600.0).
    :param retry: ``False`` to discard a job on its first failure.
    """

    base: float = 1.0
    cap: float = 3600.0
    retry: bool = True

    def __post_init__(self) -> None:
        if not (0 <= self.base <= MAX_DELAY and 0 <= self.cap <= MAX_DELAY):
            raise ValueError(f"RetryPolicy base and cap must be finite seconds in "
                             f"0..{MAX_DELAY:.0f} (100 years), got base={self.base!r}, "
                             f"cap={self.cap!r}")


NO_RETRY = RetryPolicy(retry=False)
