"""How late the test speaker (ALSA file plugin -> FIFO -> drainer) reports what was played.

This module owns the calibration that lets the daemon benchmark take the drainer's times
back to the moment the daemon handed audio to PortAudio. It runs talkbox's own `Playback`
in this process on a sandbox sound card built exactly like the daemon's (FIFO speaker drained
in real time by the tests' `FifoDrainer`, 24 kHz, 20 ms periods), stamps the moment the
PortAudio callback hands over the first sample of a tone, and finds when the drainer read it.

Two figures come out, each repeated (and their sum, `write_to_drain_ms`):
- `handover_to_drain_ms`: the harness's own delay after the callback (PortAudio's ALSA
  buffer, the file plugin, the FIFO's one page, the drainer's 5 ms tick). Tight (within a
  few ms): the daemon benchmark subtracts its median from the drainer's times to get
  "handed to PortAudio".
- `write_to_handover_ms`: `Playback.write()` until the callback takes the audio: the wait
  for the next 20 ms callback, as on a sound card (`playback_pcm()` makes one period fill
  the FIFO's page; with four periods to a page, the callbacks came in bursts every 80 ms).
  Comparing the daemon against `write_to_drain_ms` leaves what the daemon adds before
  `Playback.write()`.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from bench.timeline import DrainedStream
from support.alsa import FifoDrainer, alsa_sandbox
from talkbox.audio.playback import Playback

RATE = 24000
TONE_SECONDS = 0.2
SETTLE_SECONDS = 1.0  # the stream and the FIFO reach their steady state of full buffers
BETWEEN_TONES_SECONDS = 0.45


class _StampedPlayback(Playback):
    """`Playback` that notes when each callback returned which bytes to PortAudio."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handovers: list[tuple[float, bytes]] = []

    def _fill(self, in_data: bytes | None, frame_count: int, time_info: Any,
              status_flags: int) -> tuple[bytes, int]:
        out, flag = super()._fill(in_data, frame_count, time_info, status_flags)
        self.handovers.append((time.monotonic(), out))
        return out, flag


@dataclass(frozen=True)
class SpeakerCalibration:
    handover_to_drain_ms: list[float]
    write_to_handover_ms: list[float]
    reported_output_latency_ms: float

    @property
    def write_to_drain_ms(self) -> list[float]:
        """`Playback.write()` until the drainer read the audio: the harness plus Playback."""
        return [a + b for a, b in zip(self.write_to_handover_ms, self.handover_to_drain_ms,
                                      strict=True)]


def _first_loud_handover(handovers: list[tuple[float, bytes]], since: float) -> float:
    for at, out in handovers:
        if at >= since and np.any(np.frombuffer(out, dtype="<i2")):
            return at
    raise RuntimeError("the tone was never handed to PortAudio")


async def _calibrate(directory: Path, repetitions: int) -> SpeakerCalibration:
    with alsa_sandbox(directory, capture_fifo=True, playback_fifo=True) as sandbox:
        # PortAudio opens the default capture FIFO while listing devices: hold it open
        # read-write so that open() never waits for a writer.
        mic_fd = os.open(sandbox.capture_path, os.O_RDWR)
        drainer = FifoDrainer(sandbox.playback_path, rate=RATE)
        drainer.start()
        playback = _StampedPlayback("speaker", RATE, RATE)
        try:
            playback.start()
            assert playback._stream is not None
            latency_ms = float(playback._stream.get_output_latency()) * 1000
            await asyncio.sleep(SETTLE_SECONDS)
            t = np.arange(round(TONE_SECONDS * RATE)) / RATE
            # A cosine: its very first sample is already loud, so the first loud callback is exact.
            tone = (np.cos(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
            writes: list[float] = []
            for _ in range(repetitions):
                writes.append(time.monotonic())
                playback.write(tone)
                playback.end_of_stream()
                await asyncio.sleep(BETWEEN_TONES_SECONDS)
            await asyncio.sleep(0.3)
        finally:
            playback.close()
            drainer.stop()
            os.close(mic_fd)
    drained = DrainedStream.of(list(drainer.records), RATE * 2)
    handover_to_drain, write_to_handover = [], []
    for written in writes:
        handed = _first_loud_handover(playback.handovers, written)
        offset = drained.find(tone[:2400], drained.offset_at(written))
        if offset is None:
            raise RuntimeError("the calibration tone never reached the drainer")
        handover_to_drain.append((drained.time_of(offset) - handed) * 1000)
        write_to_handover.append((handed - written) * 1000)
    return SpeakerCalibration(handover_to_drain, write_to_handover, latency_ms)


def calibrate_speaker(repetitions: int) -> SpeakerCalibration:
    """Run the calibration (about 0.5 s per repetition) in a private sandbox."""
    with tempfile.TemporaryDirectory(prefix="talkbox-bench-speaker-") as tmp:
        return asyncio.run(_calibrate(Path(tmp) / "alsa", repetitions))
