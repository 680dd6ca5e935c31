"""The synthetic wake phrases the wake-word tests share: which voices and speeds say
"hey jarvis", the quiet room they are heard in, and the 80 ms chunk grid they start on.
"""

from __future__ import annotations

from support.speech import Pcm, concat, mix, pink_noise, silence

# espeak-ng voices and speeds (words a minute) every wake test says "hey jarvis" in.
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-x-rp")
SPEEDS = (140, 160, 180)
WAKE_CHUNK_MS = 80  # openWakeWord scores 80 ms chunks


def with_room_noise(pcm: Pcm, rate: int) -> Pcm:
    """`pcm` over pink noise of the same length at half the volume of a quiet room."""
    return mix(pcm, pink_noise(len(pcm) / rate, rate, volume=0.01))


def on_chunk_grid(pcm: Pcm, rate: int) -> Pcm:
    """`pcm` followed by silence up to a whole number of 80 ms wake-word chunks."""
    chunk = rate * WAKE_CHUNK_MS // 1000
    return concat(pcm, silence(-len(pcm) % chunk / rate, rate))
