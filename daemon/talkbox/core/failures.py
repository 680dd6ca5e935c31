"""Failures as plain values, and the one table of what the service's error codes mean.

A failure reaches the core as a `Failure`: what kind it is, the sentence to show, the
service's error code when it sent one, and whether trying again later can help. Adapters build
these at their boundary (see `realtime/connection.failure_of`); the core never sees an
exception object, and never parses a message to learn what went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from talkbox.core.events import ServerError

FailureKind = Literal[
    "connect",  # the WebSocket could not be opened
    "rejected",  # the handshake was answered with an HTTP error status
    "setup_timeout",  # the session was not set up (or answered) in time
    "server_error",  # the service sent an error event, or closed over an invalid request
    "session_expired",  # the service ended the session at its maximum duration
    "dropped",  # the connection ended unexpectedly
    "unexpected",  # something no adapter knew how to name
    "no_answer",  # the service did not answer a turn in time
    "answer_failed",  # the service ended a response as failed
    "answer_refused",  # the answer broke a bound no real answer comes near
]


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str  # one line fit to show a user; text from the peer already made safe
    server_code: str = ""  # the service's error code, when it sent one
    retryable: bool = True  # whether the same attempt can succeed later


# --- the service's error codes: every table of them lives here --------------------------------

SESSION_EXPIRED_CODE: Final = "session_expired"

# Codes that only mean "we raced the server"; the conversation goes on (protocol notes §8).
HARMLESS_SERVER_CODES: Final = frozenset(
    {
        "response_cancel_not_active",
        "conversation_already_has_active_response",
        "input_audio_buffer_commit_empty",
    }
)

# Codes that mean our request or setup is wrong: the same attempt fails again.
NON_RETRYABLE_SERVER_CODES: Final = frozenset(
    {
        "invalid_api_key",
        "unknown_parameter",
        "invalid_value",
        "invalid_type",
        "missing_required_parameter",
        "beta_api_shape_disabled",
        "model_not_found",
    }
)

# Codes that, in answer to the session settings, almost always mean a protocol dialect mix-up
# (GA fields to a dated api-version, or the other way round).
DIALECT_MISMATCH_CODES: Final = frozenset(
    {
        "unknown_parameter",
        "invalid_value",
        "invalid_type",
        "missing_required_parameter",
        "beta_api_shape_disabled",
    }
)


def server_code_retryable(code: str) -> bool:
    """Whether an error with this server code can go away by trying again later."""
    return code not in NON_RETRYABLE_SERVER_CODES


def is_harmless(error: ServerError) -> bool:
    """An error event that ends nothing: a race with the server, or a clamped truncation."""
    # "Audio content of X ms is already shorter than Y ms": the server clamps and carries on.
    truncate_complaint = (error.param or "").endswith("audio_end_ms") or error.message.startswith(
        "Audio content of"
    )
    return error.code in HARMLESS_SERVER_CODES or truncate_complaint
