"""Retry policies: what a failed attempt's backoff looks like.

The delay itself is computed in SQL by ``pgqueue.backoff(attempt, base, cap, jitter)``
on the database clock: ``base * 2^(attempt-1)`` with the exponent clamped before
exponentiation, capped at ``cap``, then spread by +-``jitter`` (a fraction) and capped
again. Attempt 2,147,483,646 gives ``cap``, never an overflow or a time in the past.
This follows the exponential-backoff-with-jitter scheme common to Oban and River.
"""

from __future__ import annotations

import dataclasses

__all__ = ["NO_RETRY", "RetryPolicy"]


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
        if not (self.base >= 0 and self.cap >= 0):
            raise ValueError("RetryPolicy base and cap must be >= 0 seconds")


NO_RETRY = RetryPolicy(retry=False)
