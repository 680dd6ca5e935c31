"""How loud the wake phrase was at this microphone: the claim a speaker makes for a wake."""

from __future__ import annotations

import numpy as np

from talkbox.audio_format import REALTIME_RATE

# Frames short enough to find the phrase's loudest syllable, long enough to hold a pitch period.
FRAME_MS = 50
FLOOR_DB = -120.0


def speech_level_db(pcm: bytes, rate: int = REALTIME_RATE) -> float:
    """The RMS level (dBFS) of the loudest FRAME_MS frame of PCM16 `pcm`; FLOOR_DB for
    silence or nothing. The loudest frame, not the whole: the audio before the wake word
    fires holds the phrase's end and pauses, whose length says nothing about distance."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)
    frame = rate * FRAME_MS // 1000
    if samples.size < frame:
        if samples.size == 0:
            return FLOOR_DB
        frame = samples.size
    frames = samples[: samples.size - samples.size % frame].reshape(-1, frame)
    loudest = float(np.sqrt((frames**2).mean(axis=1)).max()) / 32768.0
    return FLOOR_DB if loudest <= 1e-6 else max(FLOOR_DB, 20.0 * float(np.log10(loudest)))
