"""Failures reach the core as plain values, built once at the connection's boundary."""

from __future__ import annotations

import pytest

from talkbox.core.events import ResponseCreated, ResponseDone, ServerError
from talkbox.core.failures import Failure, is_harmless
from talkbox.core.response import FollowedResponse
from talkbox.errors import (
    ConfigError,
    ConnectFailed,
    ConnectionDropped,
    HandshakeRejected,
    RealtimeError,
    ServerErrorEvent,
    SessionExpired,
    SessionSetupTimeout,
)
from talkbox.realtime.connection import failure_of


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (ConnectFailed("refused"), Failure("connect", "refused")),
        (HandshakeRejected(401, "bad key"), Failure("rejected", "bad key", retryable=False)),
        (HandshakeRejected(503, "busy"), Failure("rejected", "busy")),
        (SessionSetupTimeout("slow"), Failure("setup_timeout", "slow")),
        (
            ServerErrorEvent("invalid_value", "no", retryable=False),
            Failure("server_error", "no", server_code="invalid_value", retryable=False),
        ),
        (SessionExpired("60 min"), Failure("session_expired", "60 min")),
        (ConnectionDropped("gone"), Failure("dropped", "gone")),
        (RealtimeError("odd"), Failure("unexpected", "odd")),
    ],
    ids=repr,
)
def test_each_session_error_becomes_its_kind_of_failure(
    error: RealtimeError, failure: Failure
) -> None:
    assert failure_of(error) == failure


def test_an_error_no_layer_named_is_unexpected_retryable_and_made_safe_to_show() -> None:
    failure = failure_of(ValueError("peer said \x1b[31mred\nline"))
    assert failure.kind == "unexpected" and failure.retryable
    assert failure.message.startswith("unexpected failure: ValueError: peer said")
    assert "\x1b" not in failure.message and "\n" not in failure.message
    # Even a configuration error met while connecting only ends its conversation.
    assert failure_of(ConfigError(["realtime.endpoint: bad"])).retryable


@pytest.mark.parametrize(
    "error",
    [
        ServerError("response_cancel_not_active", "no active response"),
        ServerError("conversation_already_has_active_response", "busy"),
        ServerError("input_audio_buffer_commit_empty", "too short"),
        ServerError("invalid_value", "x", param="item.audio_end_ms"),
        ServerError("", "Audio content of 500ms is already shorter than 900ms"),
    ],
    ids=repr,
)
def test_races_and_clamped_truncations_are_harmless(error: ServerError) -> None:
    assert is_harmless(error)


def test_real_errors_are_not_harmless() -> None:
    assert not is_harmless(ServerError("server_error", "The server had an error"))


def test_only_the_first_response_created_is_followed_until_it_is_done() -> None:
    response = FollowedResponse()
    assert not response.is_followed("r1")
    assert response.created(ResponseCreated("r1"))
    assert not response.created(ResponseCreated("r2")), "never two responses at once"
    assert response.is_followed("r1") and not response.is_followed("r2")
    assert not response.done(ResponseDone("r2", "completed"))
    assert response.done(ResponseDone("r1", "completed"))
    assert response.response_id is None
    assert response.created(ResponseCreated("r3"))
    assert response.drop() == "r3" and response.drop() is None
