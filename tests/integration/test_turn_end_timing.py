"""The turn ends `silence_duration_ms` after the voice stops, not that plus the VAD's own lag."""

from __future__ import annotations

import numpy as np
import pytest

from support.speech import concat, mix, pink_noise, silence, speak
from talkbox.audio.vad import GateSpeechEnded, VoiceActivity
from talkbox.audio_format import CAPTURE_PERIOD_MS
from talkbox.config import parse_config
from talkbox.shell.app import build_front_end

RATE = 16000
BUFFER_SAMPLES = RATE * CAPTURE_PERIOD_MS // 1000


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
        for start in range(0, len(pcm), BUFFER_SAMPLES):  # the daemon's capture buffers
            for event in front_end.process(pcm[start : start + BUFFER_SAMPLES].tobytes()):
                waited = front_end.audio_time - started - voice_end
                # (webrtcvad calls the first frames of a new noise floor speech: a blip
                # before the phrase may open and close a short segment; it is not this turn.)
                if isinstance(event, GateSpeechEnded) and waited > 0:
                    ends.append(waited)
    assert len(ends) == 2
    for waited in ends:
        # The end is decided on the buffer that completes the silence: up to one capture
        # buffer, and a 20 ms VAD frame of hangover spread, later than the exact moment.
        assert silence_ms - 40 <= waited * 1000 <= silence_ms + CAPTURE_PERIOD_MS + 20, ends


def test_the_turn_ends_in_the_capture_buffer_that_completes_its_silence() -> None:
    """No waiting on the upload resampler: the 24 kHz stream lags the 16 kHz one by ~12 ms,
    and the end must not wait a further capture buffer for it."""
    cfg = parse_config("[turn]\nsilence_duration_ms = 500\n", "test")
    gate = build_front_end(cfg).gate
    frame_samples = RATE * gate.frame_ms // 1000
    checked = 0
    for text in ("what is the capital of france", "turn on the kitchen lights", "stop"):
        spoken = speak(text, rate=RATE, pad=(0.5, 0.0))
        pcm = concat(spoken, silence(1.5))
        pcm = mix(pcm, pink_noise(len(pcm) / RATE, volume=0.003)[: len(pcm)])
        # Where the silence completes, by the VAD's decisions on the 16 kHz frames alone.
        vad = VoiceActivity(cfg.turn.vad_aggressiveness)
        frames = [pcm[i : i + frame_samples] for i in range(0, len(pcm), frame_samples)]
        voiced = [vad.is_speech(f.tobytes()) for f in frames if len(f) == frame_samples]
        last_voiced = max(i for i, v in enumerate(voiced) if v)
        completing_frame = last_voiced + gate.silence_frames
        expected_buffer = -(-(completing_frame + 1) * frame_samples // BUFFER_SAMPLES) - 1
        # Fresh stream state per phrase so the frame grid starts at this phrase's sample 0.
        front_end = build_front_end(cfg)
        front_end.wake_enabled = False
        ended_in = [
            index
            for index, start in enumerate(range(0, len(pcm), BUFFER_SAMPLES))
            for event in front_end.process(pcm[start : start + BUFFER_SAMPLES].tobytes())
            if isinstance(event, GateSpeechEnded)
        ]
        # (A noise-onset blip may open and close a short segment first; see above.)
        assert ended_in[-1] == expected_buffer, (text, completing_frame, ended_in)
        # The telling case: a buffer's last frame, whose upload audio is not in hand yet.
        checked += completing_frame % (BUFFER_SAMPLES // frame_samples) == 1
    assert checked, "no phrase's silence completed on the last frame of a buffer"
