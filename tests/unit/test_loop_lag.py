"""The debug probe of the event loop's lag sees a blocked loop, and starts again after each
reading."""

from __future__ import annotations

import asyncio
import time

from talkbox.shell.loop_lag import LoopLagProbe


async def test_a_blocked_loop_shows_as_lag_and_each_reading_starts_afresh() -> None:
    probe = LoopLagProbe(interval=0.005)
    task = asyncio.create_task(probe.run())
    await asyncio.sleep(0.05)
    probe.take_worst()
    time.sleep(0.12)  # something holds the loop
    await asyncio.sleep(0.05)
    blocked = probe.take_worst()
    await asyncio.sleep(0.05)
    after = probe.take_worst()
    task.cancel()

    assert blocked >= 0.1
    assert after < blocked
