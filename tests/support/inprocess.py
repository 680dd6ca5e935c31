"""Helpers for tests that run the daemon's `Daemon` on the test's own event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from talkbox.config import AudioConfig, Config, ConversationConfig, RealtimeConfig

DEPLOYMENT = "gpt-realtime"
SPEAKER_RATE = 24000


async def until(
    condition: Callable[[], bool], what: str, timeout: float = 10.0, poll: float = 0.005
) -> None:
    """Wait on the loop until `condition()` holds; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(poll)


def quick_daemon_config(endpoint: str, *, deployment: str = DEPLOYMENT) -> Config:
    """Azure GA at `endpoint` on the sandbox's mic/speaker, with short timeouts."""
    cfg = Config(
        realtime=RealtimeConfig(
            provider="azure",
            endpoint=endpoint,
            deployment=deployment,
            api_version="",
            connect_timeout_seconds=1.0,  # the config's minimum: bounds connect and set-up
        ),
        audio=AudioConfig(input_device="mic", output_device="speaker", output_rate=SPEAKER_RATE),
        conversation=ConversationConfig(follow_up_seconds=1.0),
    )
    # Below the file's 1 s minimum, so the follow-up silence passes quickly; nothing else
    # changes (model_copy skips validation, which is the point).
    quick = cfg.conversation.model_copy(update={"follow_up_seconds": 0.2})
    return cfg.model_copy(update={"conversation": quick})
