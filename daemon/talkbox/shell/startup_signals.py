"""Signals that arrive while `talkbox run` starts, before its event loop handles them.

Python leaves SIGHUP at its default, which kills the process, and systemd counts a death by
SIGHUP as a clean stop, so `Restart=on-failure` would not bring the daemon back. So the very
first thing `talkbox run` does is `StartupSignals.install()`:

- SIGHUP is remembered; the service applies it as a reload as soon as its loop runs (the
  file may have changed after it was first read).
- SIGTERM ends the start-up at once with exit status 0, as a stop while running does.

Once the loop runs, the service's own handlers replace these.
"""

from __future__ import annotations

import signal
from types import FrameType


class StartupSignals:
    """What arrived before the event loop took over signal handling."""

    def __init__(self) -> None:
        self.hangups = 0

    def install(self) -> None:
        signal.signal(signal.SIGHUP, self._on_hangup)
        signal.signal(signal.SIGTERM, self._on_terminate)

    def take_reload_request(self) -> bool:
        """Whether a SIGHUP came during start-up; it is then forgotten (applied once)."""
        requested, self.hangups = self.hangups > 0, 0
        return requested

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        # Only a counter: a handler can run between any two bytecodes, even inside logging.
        self.hangups += 1

    def _on_terminate(self, signum: int, frame: FrameType | None) -> None:
        # Nothing is open yet that needs more than the unwinding SystemExit gives it.
        raise SystemExit(0)
