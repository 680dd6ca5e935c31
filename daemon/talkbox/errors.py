"""The one small exception tree of talkbox.

Library errors (websockets, PyAudio, tomllib, pydantic) are translated into these at the
boundary where they happen, so callers and the CLI deal only with talkbox's own words.
Every message says what went wrong and, where the user can act, what to do.
"""

from __future__ import annotations

EX_CONFIG = 78  # sysexits.h: configuration error; systemd must not restart-loop on it


class TalkboxError(Exception):
    """Base class: a failure with a message fit to show a user."""


class ConfigError(TalkboxError):
    """The configuration is invalid. Carries every problem found, each naming its key."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:\n{lines}")


class AudioDeviceError(TalkboxError):
    """An audio device is missing, ambiguous, or failed while open."""


class RealtimeError(TalkboxError):
    """A failure talking to the Realtime service."""

    # Whether trying again later can help (a wrong key or deployment will not fix itself).
    retryable: bool = True


class ConnectFailed(RealtimeError):
    """The WebSocket could not be opened (refused, DNS, TLS, timeout)."""


class HandshakeRejected(RealtimeError):
    """The service answered the WebSocket handshake with an HTTP error status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        # 401/403: credentials; 404: wrong deployment/model/path. Retrying won't help.
        self.retryable = status not in (400, 401, 403, 404)
        super().__init__(message)


class SessionSetupTimeout(RealtimeError):
    """session.created or session.updated did not arrive in time."""


class ServerErrorEvent(RealtimeError):
    """The service sent an `error` event that ends what we were doing.

    Whether its code is worth retrying is the core's table (`core.failures`): whoever builds
    one says so.
    """

    def __init__(self, code: str, message: str, error_type: str = "", *, retryable: bool) -> None:
        self.code = code
        self.error_type = error_type
        self.retryable = retryable
        super().__init__(message)


class SessionExpired(RealtimeError):
    """The service ended the session at its maximum duration (error session_expired / 1001)."""


class ConnectionDropped(RealtimeError):
    """The connection ended unexpectedly (no close frame, or an abnormal close code)."""
