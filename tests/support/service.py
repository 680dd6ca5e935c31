"""The fake Realtime service as tests that run talkbox as a process use it: served from its own
thread for the length of a `with` block, and read back as a copy of what it recorded.

The copies are taken on the service's own loop (`ServerThread.call`), so a test sees one
consistent moment, and later traffic cannot change what it is asserting on.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from support.fake_realtime import (
    FakeRealtimeServer,
    ProtocolViolation,
    RecordedSession,
    RejectedHandshake,
    ServerThread,
)


@contextmanager
def serving(api_key: str, **options: Any) -> Iterator[ServerThread]:
    """A `FakeRealtimeServer(api_key=api_key, **options)` serving until the block ends."""
    service = FakeRealtimeServer(api_key=api_key, **options).start_in_thread()
    try:
        yield service
    finally:
        service.stop()


@dataclass
class Recorded:
    """Everything the service recorded: sessions, refused handshakes, protocol violations."""

    sessions: list[RecordedSession]
    rejected: list[RejectedHandshake]
    violations: list[ProtocolViolation]


def recorded(service: ServerThread) -> Recorded:
    """A copy of everything the service recorded so far."""
    server = service.server
    return service.call(
        lambda: copy.deepcopy(
            Recorded(server.sessions, server.rejected_handshakes, server.protocol_violations)
        )
    )


def sessions(service: ServerThread) -> list[RecordedSession]:
    """A copy of the sessions the service recorded so far."""
    return service.call(lambda: copy.deepcopy(service.server.sessions))
