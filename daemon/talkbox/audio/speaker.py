"""Play one finished piece of audio and wait for it to end (for `talkbox ask` without --out)."""

from __future__ import annotations

import asyncio

from talkbox.audio.playback import Playback
from talkbox.audio_format import REALTIME_RATE
from talkbox.config import Config


async def play_and_wait(device: str, output_rate: int, pcm: bytes) -> None:
    playback = Playback(device, output_rate, REALTIME_RATE)
    playback.start()
    try:
        playback.write(pcm)
        playback.end_of_stream()
        await playback.wait_drained()
    finally:
        playback.close()


def play_once(cfg: Config, pcm: bytes) -> None:
    """Play 24 kHz PCM16 on the configured speaker; AudioDeviceError if there is none."""
    asyncio.run(play_and_wait(cfg.audio.output_device, cfg.audio.output_rate, pcm))
