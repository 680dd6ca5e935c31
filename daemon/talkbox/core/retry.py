"""Retry policy for opening Realtime sessions: which failures to retry, and after how long.

Pure logic: time (`now`) and randomness (`rand`) are inputs, so the policy is unit-tested
without clocks. The conversation machine consults it between wake attempts, so a broken
network or an overloaded service gets exponentially spaced attempts instead of a hot loop, and
a failure that cannot fix itself (wrong key, wrong deployment, rejected session shape) is not
retried at all.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

from talkbox.errors import ConfigError, RealtimeError

BASE_DELAY_SECONDS: Final = 1.0
MAX_DELAY_SECONDS: Final = 60.0
# 2**6 = 64 already exceeds the cap at base 1 s; the limit only keeps the float math finite.
_MAX_EXPONENT: Final = 30


def is_retryable(error: BaseException) -> bool:
    """Whether trying the same thing again later can succeed.

    Realtime errors say so themselves (`retryable`: False for 400/401/403/404 handshakes and
    non-retryable server error codes). A configuration error never fixes itself. Anything else
    (an unexpected OSError, a bug's exception) is retried with backoff rather than given up on:
    the daemon must keep working for years, and backoff bounds the cost.
    """
    if isinstance(error, RealtimeError):
        return error.retryable
    return not isinstance(error, ConfigError)


def next_delay(
    attempt: int,
    retryable: bool,
    rand: Callable[[], float],
    *,
    base: float = BASE_DELAY_SECONDS,
    cap: float = MAX_DELAY_SECONDS,
) -> float | None:
    """Seconds to wait before retry number `attempt`, or None: do not retry automatically.

    `retryable` says whether the failure can go away by itself (see `is_retryable`, and
    `Failure.retryable` for failures inside the core).

    `attempt` counts consecutive failures, starting at 1. `rand()` returns a float in [0, 1)
    (e.g. `random.random`); values outside are clamped. Equal jitter: the delay lies in
    [ceiling/2, ceiling] with ceiling = min(cap, base * 2**(attempt-1)). Unlike full jitter it
    never comes out near zero, so repeated failures can never turn into a hot loop, while
    devices that failed together (a service outage) still spread their retries apart.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not retryable:
        return None
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    jitter = min(max(rand(), 0.0), 1.0)
    return ceiling / 2.0 + jitter * ceiling / 2.0


class Backoff:
    """Consecutive-failure tracker for one retried operation (opening a session).

    `failure(retryable, now)` records a failure at time `now` (any monotonic clock, in seconds) and
    returns the delay before the next automatic attempt, or None when the error is not worth
    retrying automatically (the daemon then waits for the user, e.g. the next wake word).
    `success()` resets the count. `remaining(now)` tells a caller whether an attempt made now
    would come too early, so a wake word during backoff can be answered with a chime instead of
    another doomed connection.
    """

    def __init__(
        self,
        rand: Callable[[], float] = random.random,
        *,
        base: float = BASE_DELAY_SECONDS,
        cap: float = MAX_DELAY_SECONDS,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"need 0 < base <= cap, got base={base} cap={cap}")
        self._rand = rand
        self._base = base
        self._cap = cap
        self.consecutive_failures = 0
        self.retry_at: float | None = None

    def failure(self, retryable: bool, now: float) -> float | None:
        self.consecutive_failures += 1
        delay = next_delay(
            self.consecutive_failures, retryable, self._rand, base=self._base, cap=self._cap
        )
        self.retry_at = None if delay is None else now + delay
        return delay

    def success(self) -> None:
        self.consecutive_failures = 0
        self.retry_at = None

    def remaining(self, now: float) -> float:
        """Seconds until an automatic retry is due; 0.0 when none is pending or it is due."""
        if self.retry_at is None:
            return 0.0
        return max(0.0, self.retry_at - now)
