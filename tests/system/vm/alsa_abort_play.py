"""Guest side of tests/system/alsa_abort_vm.sh: one PyAudio playback stream like talkbox's.

    python alsa_abort_play.py RATE CHANNELS SECONDS [DEVICE]

Opens a PCM16 callback stream at RATE Hz with CHANNELS channels on DEVICE (default: PortAudio's
default, ALSA's `default`), 20 ms periods as talkbox's playback, and keeps it running for
SECONDS, playing a tone for a second and silence for a second, as replies come and go. On the
way out (SECONDS passed or SIGTERM) it prints one line: the callbacks and the output underflows
PortAudio reported. An alsa-lib assertion kills it with SIGABRT instead, before that line.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from typing import Any

import pyaudio


def main() -> int:
    rate, channels, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    device = sys.argv[4] if len(sys.argv) > 4 else None
    period = rate // 50
    tone = bytearray()
    for n in range(rate):
        value = int(8000 * math.sin(2 * math.pi * 440 * n / rate))
        tone += value.to_bytes(2, "little", signed=True) * channels
    second = bytes(tone) + bytes(len(tone))  # a second of tone, a second of silence
    frame_bytes = 2 * channels
    position = 0
    counts = {"callbacks": 0, "underflows": 0}

    def fill(in_data: Any, frame_count: int, time_info: Any, status: int) -> tuple[bytes, int]:
        nonlocal position
        counts["callbacks"] += 1
        if status & pyaudio.paOutputUnderflow:
            counts["underflows"] += 1
        wanted = frame_count * frame_bytes
        block = second[position : position + wanted]
        position = (position + wanted) % len(second)
        if len(block) < wanted:
            block += second[: wanted - len(block)]
        return block, pyaudio.paContinue

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pa = pyaudio.PyAudio()
    index = None
    if device is not None:
        for i in range(pa.get_device_count()):
            if pa.get_device_info_by_index(i)["name"] == device:
                index = i
    stream = pa.open(
        format=pyaudio.paInt16,
        channels=channels,
        rate=rate,
        output=True,
        output_device_index=index,
        frames_per_buffer=period,
        stream_callback=fill,
    )
    started = time.monotonic()
    stop.wait(seconds)
    active = stream.is_active()
    stream.close()
    pa.terminate()
    print(
        f"rate={rate} channels={channels} ran={time.monotonic() - started:.0f}s "
        f"callbacks={counts['callbacks']} underflows={counts['underflows']} "
        f"active_at_end={active}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
