"""The turn ends `silence_duration_ms` after the voice stops, not that plus the VAD's own lag."""

from __future__ import annotations

import numpy as np
import pytest

from support.speech import concat, mix, pink_noise, silence, speak
from talkbox.app import build_front_end
from talkbox.config import parse_config
from talkbox.vad import SpeechEnded

RATE = 16000


@pytest.mark.parametrize("aggressiveness", [0, 2, 3])
@pytest.mark.parametrize("silence_ms", [300, 500, 800])
def test_turn_ends_after_the_configured_silence(aggressiveness: int, silence_ms: int) -> None:
    cfg = parse_config(
        f"[turn]\nsilence_duration_ms = {silence_ms}\nvad_aggressiveness = {aggressiveness}\n",
        "test",
    )
    front_end = build_front_end(cfg)
    front_end.wake_enabled = False
    ends = []
    for text in ("what is the capital of france", "turn on the kitchen lights"):
        spoken = speak(text, rate=RATE, pad=(0.5, 0.0))
        voice_end = np.nonzero(np.abs(spoken.astype(np.int32)) > 300)[0][-1] / RATE
        started = front_end.audio_time
        pcm = concat(spoken, silence(2.0))
        pcm = mix(pcm, pink_noise(len(pcm) / RATE, volume=0.003)[: len(pcm)])
        for start in range(0, len(pcm), 1280):  # the daemon's 80 ms capture buffers
            for event in front_end.process(pcm[start : start + 1280].tobytes()):
                waited = front_end.audio_time - started - voice_end
                # (webrtcvad calls the first frames of a new noise floor speech: a blip
                # before the phrase may open and close a short segment; it is not this turn.)
                if isinstance(event, SpeechEnded) and waited > 0:
                    ends.append(waited)
    assert len(ends) == 2
    for waited in ends:
        # The end is decided on the buffer that completes the silence: up to one 80 ms
        # buffer (and a 20 ms frame of resampler delay) later than the exact moment.
        assert silence_ms - 40 <= waited * 1000 <= silence_ms + 120, (silence_ms, ends)
