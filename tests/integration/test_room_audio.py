"""The simulated room between real PortAudio streams, in-process: Playback -> speaker FIFO ->
FifoDrainer -> EchoRoom -> FifoFeeder -> microphone FIFO -> Capture (tests/support/room.py)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from support.alsa import FifoDrainer, FifoFeeder, alsa_sandbox
from support.room import (
    MIC_RATE,
    SPEAKER_RATE,
    EchoRoom,
    RoomSpec,
    as_floats,
    clip16,
    measure_delay,
    on_device_clock,
    to_rate,
)
from talkbox.audio.capture import Capture
from talkbox.audio.playback import Playback

pytestmark = pytest.mark.audio

PERIOD = 640  # the daemon's 40 ms capture periods


async def test_capture_hears_what_playback_played_through_the_room(tmp_path: Path) -> None:
    spec = RoomSpec(delay_ms=80, rt60_s=0.2, noise_dbfs=None)
    room = EchoRoom(spec, keep=True)
    rng = np.random.default_rng(12)
    reply = np.rint(rng.standard_normal(SPEAKER_RATE) * 3000).astype("<i2").tobytes()
    captured = bytearray()
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True, playback_fifo=True) as sandbox:
        drainer = FifoDrainer(sandbox.playback_path, rate=SPEAKER_RATE, room=room)
        feeder = FifoFeeder(sandbox.capture_path, b"", rate=MIC_RATE, period_frames=PERIOD,
                            room=room)
        drainer.start()
        feeder.start()
        try:
            capture = Capture("mic", MIC_RATE, PERIOD, asyncio.get_running_loop())
            async with capture:
                listening = True

                async def listen() -> None:
                    while listening:
                        captured.extend((await capture.read()).pcm)

                listener = asyncio.create_task(listen())
                async with Playback("speaker", SPEAKER_RATE, SPEAKER_RATE) as playback:
                    await asyncio.sleep(0.3)
                    playback.write(reply)
                    playback.end_of_stream()
                    await asyncio.wait_for(playback.wait_drained(), timeout=5)
                    await asyncio.sleep(0.6)  # the pipe, the delay and the tail
                listening = False
                await asyncio.wait_for(listener, timeout=2)
        finally:
            feeder.stop()
            drainer.stop()

    assert capture.overflows == 0
    assert room.underflows == 0 and room.late_blocks == 0 and room.mic_jumps == 0
    # Capture delivered a run of what the feeder wrote, byte for byte, echo and all.
    written = b"".join(clip16(out) for _, out in room.echo_log)
    at = written.find(bytes(captured))
    assert len(captured) > 40 * PERIOD * 2 and at >= 0 and at % (PERIOD * 2) == 0
    # The reply was played, and heard 80 ms later at the level the room gives it.
    speaker_start, speaker = on_device_clock(room.played_log, SPEAKER_RATE)
    assert bytes(np.rint(speaker).astype("<i2")).find(reply) >= 0
    mic_start, mic = on_device_clock(room.echo_log, MIC_RATE)
    mic = mic[round((speaker_start - mic_start) * MIC_RATE):]
    reference = to_rate(speaker, SPEAKER_RATE, MIC_RATE)
    assert measure_delay(reference, mic[: len(reference)], MIC_RATE) * 1000 == pytest.approx(
        80, abs=1.0)
    # Energy per second of audio; white noise loses 10 log10(7.36 / 12) = -2.1 dB to the
    # microphone's band (the room's resampler passes up to 7.36 kHz).
    gain_db = energy_db(mic, MIC_RATE) - energy_db(as_floats(reply), SPEAKER_RATE)
    assert gain_db == pytest.approx(spec.gain_db - 2.1, abs=0.5)


def energy_db(samples: npt.NDArray[np.float64], rate: int) -> float:
    return 10 * math.log10(float(np.sum((samples / 32768) ** 2)) / rate)
