"""A debug aid: how late the event loop runs a short timer, the worst per conversation state.

With `[log] level = "debug"` the service runs `LoopLagProbe` and, at each state change, logs
the worst lateness of the state that ended ("event loop lag: worst 3.1 ms while idle"). A late
timer is a late WebSocket send, speaker refill, control reply or watchdog ping, so nothing
may hold the loop for long (python -m bench reports these lines). Off otherwise: a hundred
wake-ups a second would cost idle CPU.
"""

from __future__ import annotations

import asyncio

PROBE_INTERVAL_SECONDS = 0.01


class LoopLagProbe:
    """`run()` sleeps `interval` at a time and keeps the worst oversleep until `take_worst()`."""

    def __init__(self, interval: float = PROBE_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked_at = loop.time()
            await asyncio.sleep(self.interval)
            self._worst = max(self._worst, loop.time() - asked_at - self.interval)

    def take_worst(self) -> float:
        """The worst lateness in seconds since the last call, and start again."""
        worst, self._worst = self._worst, 0.0
        return worst
