"""The retry policy: which failures are retried, how the delay grows, and the Backoff tracker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from talkbox.core.failures import server_code_retryable
from talkbox.core.retry import MAX_DELAY_SECONDS, Backoff, is_retryable, next_delay
from talkbox.errors import (
    AudioDeviceError,
    ConfigError,
    ConnectFailed,
    ConnectionDropped,
    HandshakeRejected,
    ServerErrorEvent,
    SessionExpired,
    SessionSetupTimeout,
)

RETRYABLE = [
    ConnectFailed("refused"),
    ConnectionDropped("no close frame"),
    SessionSetupTimeout("no session.created"),
    SessionExpired("60 minutes"),
    HandshakeRejected(429, "slow down"),
    HandshakeRejected(500, "oops"),
    HandshakeRejected(503, "busy"),
    AudioDeviceError("usb mic unplugged"),
    OSError("network is unreachable"),
]
NOT_RETRYABLE = [
    HandshakeRejected(400, "bad request"),
    HandshakeRejected(401, "bad key"),
    HandshakeRejected(403, "forbidden"),
    HandshakeRejected(404, "no such deployment"),
    ServerErrorEvent("invalid_api_key", "bad key", retryable=False),
    ConfigError(["realtime.endpoint: bad"]),
]


def half() -> float:
    return 0.5


@pytest.mark.parametrize("error", RETRYABLE, ids=repr)
def test_retryable_errors_get_a_delay(error: Exception) -> None:
    assert is_retryable(error)
    assert next_delay(1, is_retryable(error), half) == pytest.approx(0.75)


@pytest.mark.parametrize("error", NOT_RETRYABLE, ids=repr)
def test_errors_that_cannot_fix_themselves_are_not_retried(error: Exception) -> None:
    assert not is_retryable(error)
    assert next_delay(1, is_retryable(error), half) is None
    assert next_delay(7, is_retryable(error), half) is None


@pytest.mark.parametrize("code", ["server_error", "", "rate_limit_exceeded"])
def test_server_codes_that_can_go_away_are_retried(code: str) -> None:
    assert server_code_retryable(code)


@pytest.mark.parametrize(
    "code", ["invalid_api_key", "unknown_parameter", "beta_api_shape_disabled", "model_not_found"]
)
def test_server_codes_of_a_wrong_request_are_not_retried(code: str) -> None:
    assert not server_code_retryable(code)


def test_delay_doubles_then_caps() -> None:
    upper = [next_delay(n, True, lambda: 1.0) for n in range(1, 10)]
    lower = [next_delay(n, True, lambda: 0.0) for n in range(1, 10)]
    assert upper == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert lower == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_base_and_cap_are_adjustable() -> None:
    assert next_delay(1, True, lambda: 1.0, base=0.25, cap=1.0) == 0.25
    assert next_delay(5, True, lambda: 1.0, base=0.25, cap=1.0) == 1.0


def test_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        next_delay(0, True, half)


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    jitter=st.floats(min_value=-5, max_value=5, allow_nan=False),
)
def test_delay_is_always_positive_bounded_and_never_near_zero(attempt: int, jitter: float) -> None:
    delay = next_delay(attempt, True, lambda: jitter)
    assert delay is not None
    # Equal jitter: at least half the ceiling, so repeated failures never spin.
    assert 0.5 <= delay <= MAX_DELAY_SECONDS


@given(attempt=st.integers(min_value=1, max_value=60), jitter=st.floats(0, 1))
def test_more_failures_never_shorten_the_ceiling(attempt: int, jitter: float) -> None:
    now = next_delay(attempt, True, lambda: jitter)
    later = next_delay(attempt + 1, True, lambda: jitter)
    assert now is not None and later is not None
    assert later >= now


def test_backoff_tracks_consecutive_failures_and_resets_on_success() -> None:
    backoff = Backoff(rand=lambda: 1.0)
    assert backoff.remaining(now=0.0) == 0.0
    assert backoff.failure(True, now=100.0) == 1.0
    assert backoff.failure(True, now=101.0) == 2.0
    assert backoff.failure(True, now=103.0) == 4.0
    assert backoff.consecutive_failures == 3
    assert backoff.remaining(now=104.0) == 3.0
    assert backoff.remaining(now=110.0) == 0.0
    backoff.success()
    assert backoff.consecutive_failures == 0
    assert backoff.remaining(now=103.0) == 0.0
    assert backoff.failure(True, now=200.0) == 1.0


def test_backoff_does_not_schedule_a_retry_for_a_permanent_failure() -> None:
    backoff = Backoff(rand=lambda: 1.0)
    backoff.failure(True, now=0.0)
    assert backoff.failure(False, now=1.0) is None
    assert backoff.retry_at is None
    # The user may still try (e.g. the next wake word): nothing holds them back.
    assert backoff.remaining(now=1.0) == 0.0
    assert backoff.consecutive_failures == 2


def test_backoff_uses_the_injected_randomness() -> None:
    draws = iter([0.0, 1.0])
    backoff = Backoff(rand=lambda: next(draws))
    assert backoff.failure(True, now=0.0) == 0.5
    assert backoff.failure(True, now=0.0) == 2.0


def test_backoff_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(base=10, cap=5)
