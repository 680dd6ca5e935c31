"""The fake Realtime service with arrival times: when each event crossed the loopback socket.

This module owns the benchmark's view of the wire. `StampedRealtimeServer` is the tests'
`FakeRealtimeServer` unchanged in behaviour; it only swaps each recorded session's event lists
for lists that note `time.monotonic()` as an item is appended. The fake appends a client event
as soon as the frame is parsed (before validating it) and a server event just before it goes
out, so the stamps are the arrival and send times, on the same clock as the FIFO feeder and
drainer of this process. Session open and close times are stamped too.
"""

from __future__ import annotations

import time
from typing import Any, SupportsIndex

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from support.fake_realtime import FakeRealtimeServer, RecordedSession


class StampedList(list[Any]):
    """A list that records the monotonic time of every append."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.monotonic())
        super().append(item)

    def stamped(self) -> list[tuple[float, Any]]:
        return list(zip(self.times, self, strict=True))


class _StampingSessions(list[RecordedSession]):
    """The server's session list: stamps a session as it opens and stamps its events."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: dict[int, float] = {}
        self.closed: dict[int, float] = {}

    def append(self, record: RecordedSession) -> None:
        self.opened[record.index] = time.monotonic()
        record.client_events = StampedList()
        record.server_events = StampedList()
        super().append(record)

    def insert(self, index: SupportsIndex, record: RecordedSession) -> None:
        raise TypeError("sessions are only ever appended")


class StampedRealtimeServer(FakeRealtimeServer):
    """`FakeRealtimeServer` that also records when things happened (see the module docstring).

    Read the stamps only once the server has stopped, or through `ServerThread.call`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stamped_sessions = _StampingSessions()
        self.sessions = self.stamped_sessions

    def notify(self) -> None:
        # The fake marks a session closed, then notifies: the first notify after that is it.
        now = time.monotonic()
        for record in self.stamped_sessions:
            if record.closed and record.index not in self.stamped_sessions.closed:
                self.stamped_sessions.closed[record.index] = now
        super().notify()

    def client_events(self, index: int, kind: str) -> list[tuple[float, dict[str, Any]]]:
        """(arrival time, event) of session `index`'s client events of type `kind`."""
        events = self.sessions[index].client_events
        assert isinstance(events, StampedList)
        return [(at, e) for at, e in events.stamped()
                if isinstance(e, dict) and e.get("type") == kind]

    def server_events(self, index: int, kind: str) -> list[tuple[float, dict[str, Any]]]:
        """(send time, event) of session `index`'s server events of type `kind`."""
        events = self.sessions[index].server_events
        assert isinstance(events, StampedList)
        return [(at, e) for at, e in events.stamped() if e.get("type") == kind]
