"""The wake word through the real capture path: PyAudio -> PortAudio -> ALSA's file plugin.

A capture file holds a script: "hey jarvis" in every test voice and speed, separated by
silence or quiet room noise, then a minute with no wake word (ordinary speech, silence, low
noise). `Capture` reads it with the daemon's own period into the daemon's own front end
(`build_front_end` on a `Config`), at 16 kHz and at 48 kHz from a 48 kHz file.

The file plugin is unpaced: PortAudio's thread delivers 80 ms periods as fast as it can
(10 000-35 000 a second measured here, at both rates) and the loop runs their callbacks in
batches, so even a reader that does nothing but collect overruns the default queue of 50
chunks (hundreds dropped). Running the front end between reads would be worse: the producer
keeps going meanwhile. So the reader only collects (it drains the queue each time the loop
hands over, ~1600 chunks in under 0.1 s), and `max_queued` is raised far above the script
(`QUEUE_CHUNKS`): a chunk is dropped only if the loop stalls for over half a second, and
callbacks queued on the loop during such a stall would hold the same audio anyway, so the
bigger queue costs no memory a stall would not. Stopping is by length: the file ends in
silence, and after its end the plugin repeats its last buffer forever. The front end then
takes the chunks in capture order, one `process()` call per chunk as in the daemon's capture
loop; it is pure, so its events do not depend on when the chunks arrived.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Literal

import pytest

from support.alsa import alsa_sandbox, write_capture_file
from support.speech import (
    Pcm,
    concat,
    ordinary_speech_stretch,
    pink_noise,
    silence,
    speak,
    speech_bounds,
)
from support.wake_clips import SPEEDS, VOICES, on_chunk_grid, with_room_noise
from talkbox.audio.capture import Capture
from talkbox.audio.frontend import WakeDetected, WakeScores
from talkbox.audio_format import CAPTURE_PERIOD_MS
from talkbox.config import AudioConfig, Config
from talkbox.shell.app import build_front_end

pytestmark = pytest.mark.audio

# How long after the end of "hey jarvis" its detection may come.
DETECTION_DEADLINE_S = 1.0
# Silence after the script, more than one capture period: what the reader takes past the
# script's end is still the file's own bytes, never the plugin's repeat of its last buffer.
TRAILING_PAD_S = 2.0
# Over 12 times the script's ~1600 chunks (see the module docstring).
QUEUE_CHUNKS = 20_000
# The no-wake minute must be heard, not skipped by the VAD gate (~600 of its 750 chunks are
# scored), and must stay far below the threshold (it peaks near 0.002).
MIN_SCORED_CHUNKS_IN_MINUTE = 300
MAX_SCORE_IN_MINUTE = 0.1


@dataclass(frozen=True)
class WakeClip:
    label: str
    speech_start_s: float
    speech_end_s: float


@dataclass(frozen=True)
class CaptureScript:
    pcm: Pcm
    rate: int
    clips: tuple[WakeClip, ...]
    no_wake_start_s: float


def make_script(rate: int) -> CaptureScript:
    """Every voice at every speed, each clip on the 80 ms grid (fast synthetic voices score
    by phase), every other one over quiet noise. Between two phrases: 2.5 s of the clips'
    padding plus a gap of silence or quiet noise; 3.3 s to 5.7 s in all, both below and
    above the gated detector's lookback plus hangover (4 s). Then the no-wake minute."""
    parts: list[Pcm] = []
    clips: list[WakeClip] = []
    offset = 0.0
    gaps = (silence(0.8, rate), pink_noise(1.6, rate, volume=0.01), silence(3.2, rate))
    for index, (voice, speed) in enumerate(product(VOICES, SPEEDS)):
        clip = on_chunk_grid(
            speak("hey jarvis", voice=voice, speed=speed, rate=rate, pad=(1.0, 1.5)), rate
        )
        start, end = speech_bounds(clip, rate)
        if index % 2:
            clip = with_room_noise(clip, rate)
        gap = gaps[index % len(gaps)]
        clips.append(WakeClip(f"{voice}@{speed}", offset + start, offset + end))
        parts += [clip, gap]
        offset += (len(clip) + len(gap)) / rate
    no_wake = concat(
        ordinary_speech_stretch(rate, seconds=48.0),
        silence(6.0, rate),
        pink_noise(6.0, rate, volume=0.01),
    )
    return CaptureScript(concat(*parts, no_wake), rate, tuple(clips), offset)


async def capture_script(device: str, script: CaptureScript) -> tuple[list[bytes], Capture]:
    """Read the script's length of audio through `Capture` with the daemon's period."""
    frames = script.rate * CAPTURE_PERIOD_MS // 1000
    script_chunks = -(-len(script.pcm) // frames)
    capture = Capture(
        device, script.rate, frames, asyncio.get_running_loop(), max_queued=QUEUE_CHUNKS
    )
    chunks: list[bytes] = []
    async with capture:
        while len(chunks) < script_chunks:
            chunks.append((await capture.read()).pcm)
    return chunks, capture


def clip_of(detection: WakeDetected, clips: tuple[WakeClip, ...]) -> str | None:
    for clip in clips:
        if clip.speech_start_s < detection.audio_time <= clip.speech_end_s + DETECTION_DEADLINE_S:
            return clip.label
    return None


@pytest.mark.parametrize("input_rate", [16000, 48000])
async def test_each_wake_clip_fires_once_through_pyaudio_and_the_no_wake_minute_never(
    tmp_path: Path, input_rate: Literal[16000, 48000]
) -> None:
    script = make_script(input_rate)
    file_pcm = script.pcm.astype("<i2").tobytes()
    cfg = Config(audio=AudioConfig(input_device="mic", input_rate=input_rate))
    front_end = build_front_end(cfg)
    front_end.monitor = True  # scores of every inferred chunk, as `talkbox listen` shows them

    with alsa_sandbox(tmp_path / "alsa") as sandbox:
        write_capture_file(sandbox.capture_path, file_pcm, TRAILING_PAD_S, rate=input_rate)
        chunks, capture = await capture_script(cfg.audio.input_device, script)

    assert capture.overflows == 0
    assert capture.device_overruns == 0
    frames = input_rate * CAPTURE_PERIOD_MS // 1000
    assert {len(chunk) for chunk in chunks} == {frames * 2}
    captured = b"".join(chunks)
    # Byte-exact: the whole script, and the start of the silence after it.
    assert captured == sandbox.capture_path.read_bytes()[: len(captured)]
    assert len(captured) >= len(file_pcm)

    events = [event for chunk in chunks for event in front_end.process(chunk)]
    assert front_end.audio_time == pytest.approx(len(captured) / 2 / input_rate)
    fired = [e for e in events if isinstance(e, WakeDetected)]

    in_the_minute = [e.audio_time for e in fired if e.audio_time > script.no_wake_start_s]
    assert in_the_minute == [], f"wake word fired during the no-wake minute at {in_the_minute}"
    minute_scores = [
        e.scores["hey_jarvis"]
        for e in events
        if isinstance(e, WakeScores) and e.audio_time > script.no_wake_start_s
    ]
    assert len(minute_scores) >= MIN_SCORED_CHUNKS_IN_MINUTE
    assert max(minute_scores) < MAX_SCORE_IN_MINUTE
    assert [e.model for e in fired] == ["hey_jarvis"] * len(fired)
    heard = [clip_of(e, script.clips) for e in fired]
    assert heard == [clip.label for clip in script.clips], [
        (e.audio_time, label) for e, label in zip(fired, heard, strict=True)
    ]
