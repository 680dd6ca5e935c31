"""Capture, playback and device lookup on real PyAudio -> PortAudio -> ALSA, backed by files.

Devices are ALSA `file` PCMs (tests/support/alsa.py): capture reads a file or a FIFO fed on
a real-time clock; playback writes into a FIFO drained at the DAC's pace, so what the drain
read is what the room would have heard, and when.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from support.alsa import (
    AlsaSandbox,
    FifoDrainer,
    FifoFeeder,
    alsa_sandbox,
    capture_pcm,
    failing_capture_pcm,
    failing_playback_pcm,
    playback_only_pcm,
    playback_pcm,
    write_capture_file,
)
from talkbox.audio.alsa import alsa_name, native_rate, playback_rate
from talkbox.audio.capture import Capture
from talkbox.audio.chimes import chime
from talkbox.audio.devices import find_device, format_device_table, list_devices
from talkbox.audio.echo_cancel import EchoCanceller, SpeakerReference
from talkbox.audio.pa import create_pyaudio, open_pyaudio
from talkbox.audio.playback import Playback
from talkbox.audio.resample import Resampler
from talkbox.errors import AudioDeviceError

pytestmark = pytest.mark.audio

SPEAKER_RATE = 48000
REPLY_RATE = 24000
NATIVE_RATE = 48000  # the only rate of a device like dmix
PIPE_BYTES = 4096  # the drained FIFO's size (F_SETPIPE_SZ)


def noise_pcm(seconds: float, rate: int, seed: int) -> bytes:
    """Random PCM16 without zeros, so silence never passes for it."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    values = rng.integers(1, 20000, n) * rng.choice([-1, 1], n)
    pcm: bytes = values.astype("<i2").tobytes()
    return pcm


def sine_pcm(frequency: float, rate: int, seconds: float, amplitude: float = 12000.0) -> bytes:
    """A sine with 20 ms raised-cosine ends; first and last samples nonzero to mark the edges."""
    n = round(rate * seconds)
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.02 * rate))
    samples = amplitude * (0.5 - 0.5 * np.cos(np.pi * ramp)) * np.sin(
        2 * np.pi * frequency * np.arange(n) / rate
    )
    pcm = np.rint(samples).astype("<i2")
    pcm[0], pcm[-1] = 1, -1
    encoded: bytes = pcm.tobytes()
    return encoded


def as_samples(pcm: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)


def heard_bytes(drainer: FifoDrainer) -> int:
    """How much was drained from the first non-silent byte on."""
    sounding = np.flatnonzero(np.frombuffer(drainer.data(), dtype=np.uint8))
    return len(drainer.data()) - int(sounding[0]) if len(sounding) else 0


def thread_cpu_seconds() -> dict[int, float]:
    """CPU time of each thread of this process, from /proc (nanosecond schedstat)."""
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/schedstat") as stat:
            seconds[int(tid)] = int(stat.read().split()[0]) / 1e9
    return seconds


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def speaker(tmp_path: Path) -> Iterator[tuple[AlsaSandbox, FifoDrainer]]:
    """pcm.speaker plays into a FIFO drained in real time at 48 kHz."""
    with (
        alsa_sandbox(tmp_path / "alsa", playback_fifo=True,
                     extra_pcms={"dead_speaker": failing_playback_pcm()}) as sandbox,
        FifoDrainer(sandbox.playback_path, rate=SPEAKER_RATE) as drainer,
    ):
        yield sandbox, drainer


# ----- the harness itself, and device lookup


def test_each_sandbox_is_seen_in_process_once_every_pyaudio_is_gone(tmp_path: Path) -> None:
    with alsa_sandbox(tmp_path / "a", extra_pcms={"alpha": playback_pcm(tmp_path / "x")}):
        first = create_pyaudio()
        first_alive = True
        try:
            assert "alpha" in [d.name for d in list_devices(first)]
            with alsa_sandbox(tmp_path / "b", extra_pcms={"beta": playback_pcm(tmp_path / "x")}):
                # PortAudio lists devices once per (reference-counted) initialisation.
                with open_pyaudio() as still_first:
                    assert "beta" not in [d.name for d in list_devices(still_first)]
                first.terminate()
                first_alive = False
                with open_pyaudio() as fresh:
                    names = [d.name for d in list_devices(fresh)]
                assert "beta" in names and "alpha" not in names
        finally:
            if first_alive:  # each terminate() counts PortAudio's initialisations down
                first.terminate()


def usb_mics_and_a_kitchen_speaker(directory: Path) -> dict[str, str]:
    """Two capture devices with a common prefix and one that can only play."""
    for side in ("left", "right"):
        (directory / f"{side}.raw").write_bytes(bytes(3200))
    return {
        "usb_mic_left": capture_pcm(directory / "left.raw"),
        "usb_mic_right": capture_pcm(directory / "right.raw"),
        "Kitchen Speaker": playback_only_pcm(directory / "kitchen.raw"),
    }


def test_devices_are_found_by_exact_name_then_unique_substring(tmp_path: Path) -> None:
    pcms = usb_mics_and_a_kitchen_speaker(tmp_path)
    with alsa_sandbox(tmp_path / "alsa", extra_pcms=pcms), open_pyaudio() as pa:
        devices = list_devices(pa)
        index = {d.name: d.index for d in devices}
        kitchen = devices[index["Kitchen Speaker"]]
        assert kitchen.max_input_channels == 0 and kitchen.max_output_channels > 0
        assert all(d.default_rate > 0 for d in devices)

        assert find_device(pa, "default", "input") is None
        assert find_device(pa, "Default", "output") is None
        # "mic" is also inside "usb_mic_left"/"usb_mic_right": the exact name wins.
        assert find_device(pa, "mic", "input") == index["mic"]
        assert find_device(pa, "KITCHEN", "output") == index["Kitchen Speaker"]
        assert find_device(pa, "usb_mic_r", "input") == index["usb_mic_right"]

        with pytest.raises(AudioDeviceError) as ambiguous:
            find_device(pa, "usb_mic", "input")
        message = str(ambiguous.value)
        assert "audio.input_device" in message and "2 input devices" in message
        assert "usb_mic_left" in message and "usb_mic_right" in message
        assert "Kitchen" not in message

        # The kitchen speaker cannot capture, so as an input it does not exist.
        with pytest.raises(AudioDeviceError) as missing:
            find_device(pa, "kitchen", "input")
        message = str(missing.value)
        assert "audio.input_device" in message and "matches no input device" in message
        assert "usb_mic_left" in message and "Kitchen" not in message

        with pytest.raises(AudioDeviceError, match=r"audio\.output_device") as missing_output:
            find_device(pa, "bathroom", "output")
        assert "Kitchen Speaker" in str(missing_output.value)


def test_device_table_marks_the_configured_devices(tmp_path: Path) -> None:
    pcms = usb_mics_and_a_kitchen_speaker(tmp_path)
    with alsa_sandbox(tmp_path / "alsa", extra_pcms=pcms), open_pyaudio() as pa:
        devices = list_devices(pa)
    table = format_device_table(devices, ("usb_mic_left", "kitchen"))
    # Rows are "index  in  out  rate  name[   <- marks]", the name from column 25 on.
    rows = {line[25:].split("   <- ")[0]: line for line in table.splitlines()[1:len(devices) + 1]}
    assert set(rows) == {d.name for d in devices}
    assert rows["usb_mic_left"].endswith("<- input")
    assert rows["Kitchen Speaker"].endswith("<- output")
    assert "<-" not in rows["usb_mic_right"] and "<-" not in rows["mic"]
    kitchen = next(d for d in devices if d.name == "Kitchen Speaker")
    assert f"{kitchen.index:>5}    0  128   {kitchen.default_rate}  Kitchen Speaker" in table
    assert "audio.output_device = 'kitchen': [" in table

    unusable = format_device_table(devices, ("usb_mic", "default"))
    assert "audio.input_device = 'usb_mic': AMBIGUOUS" in unusable
    assert "audio.output_device = 'default': PortAudio's default device" in unusable
    assert "<-" not in unusable
    assert "NOT FOUND" in format_device_table(devices, ("nothing", "default"))


def test_pyaudio_opens_without_jack_or_alsa_noise(tmp_path: Path) -> None:
    # A broken PCM makes ALSA report while PortAudio probes; JACK always complains here.
    # (This also guards the errno handling in the ALSA handler: without it, this segfaults.)
    pcms = {"broken": playback_only_pcm(tmp_path / "b")}
    with alsa_sandbox(tmp_path / "alsa", extra_pcms=pcms) as sandbox:
        script = ("from talkbox.audio.pa import open_pyaudio\n"
                  "with open_pyaudio() as pa:\n"
                  "    print(pa.get_device_count())\n")
        result = subprocess.run([sys.executable, "-c", script], env=sandbox.env,
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"
    assert result.stderr == ""


# ----- capture


@pytest.mark.parametrize(("rate", "frames"), [(16000, 320), (48000, 960)])
async def test_capture_reads_back_exactly_the_bytes_in_the_file(
    tmp_path: Path, rate: int, frames: int
) -> None:
    pcm = noise_pcm(1.0, rate, seed=rate)
    with alsa_sandbox(tmp_path / "alsa") as sandbox:
        write_capture_file(sandbox.capture_path, pcm, pad_seconds=1.0, rate=rate)
        # Unpaced, the file plugin delivers far faster than real time: queue generously.
        capture = Capture("mic", rate, frames, asyncio.get_running_loop(), max_queued=100_000)
        async with capture:
            received = b""
            while len(received) < len(pcm):
                chunk = (await capture.read()).pcm
                assert len(chunk) == frames * 2
                received += chunk
    assert received[: len(pcm)] == pcm
    assert capture.overflows == 0


async def test_capture_from_a_paced_fifo_arrives_in_real_time(tmp_path: Path) -> None:
    rate, frames, seconds = 16000, 320, 0.8
    pcm = noise_pcm(seconds, rate, seed=3)
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True) as sandbox:
        feeder = FifoFeeder(sandbox.capture_path, pcm, rate=rate, period_frames=frames)
        feeder.start()
        try:
            async with Capture("mic", rate, frames, asyncio.get_running_loop()) as capture:
                received, arrivals = b"", []
                while len(received) < len(pcm):
                    received += (await capture.read()).pcm
                    arrivals.append(time.monotonic())
                    assert abs(capture.last_chunk_monotonic - arrivals[-1]) < 1.0
        finally:
            feeder.stop()
    assert received[: len(pcm)] == pcm
    spread = arrivals[-1] - arrivals[0]
    expected = seconds - frames / rate  # first to last of 40 periods
    assert 0.75 * expected <= spread <= 3 * expected, spread


async def test_each_chunk_says_when_its_first_sample_was_captured(tmp_path: Path) -> None:
    # The echo canceller pairs each chunk with what the speaker played at that time.
    rate, frames = 16000, 640
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True) as sandbox:
        feeder = FifoFeeder(sandbox.capture_path, noise_pcm(1.2, rate, seed=4), rate=rate,
                            period_frames=frames)
        feeder.start()
        try:
            async with Capture("mic", rate, frames, asyncio.get_running_loop()) as capture:
                stamped = []
                for _ in range(20):
                    chunk = await capture.read()
                    stamped.append((chunk.time, time.monotonic()))
        finally:
            feeder.stop()
    for captured_at, read_at in stamped:
        # Its first sample was heard before the chunk was complete, let alone read.
        assert captured_at <= read_at - frames / rate
    steps = np.diff([captured_at for captured_at, _ in stamped[5:]])
    assert abs(float(np.median(steps)) - frames / rate) < 0.01, steps


async def test_a_stalled_reader_loses_the_oldest_chunks_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rate, frames = 16000, 320
    # Period i holds the value i in every sample, so what survives can be identified.
    pcm = b"".join(np.full(frames, i, dtype="<i2").tobytes() for i in range(1, 200))
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True) as sandbox:
        feeder = FifoFeeder(sandbox.capture_path, pcm, rate=rate, period_frames=frames, speed=4)
        feeder.start()
        try:
            capture = Capture("mic", rate, frames, asyncio.get_running_loop(), max_queued=5)
            with caplog.at_level(logging.WARNING, logger="talkbox.audio.capture"):
                async with capture:
                    await asyncio.sleep(0.4)  # ~80 periods arrive meanwhile; 5 fit
                    kept = [int(as_samples((await capture.read()).pcm)[0]) for _ in range(5)]
        finally:
            feeder.stop()
    assert capture.overflows >= 20
    assert kept[0] >= 20, kept  # the first periods were dropped, not the last
    assert kept == list(range(kept[0], kept[0] + 5))  # and the kept ones are in order
    warnings = [r for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one report for the whole burst


async def test_a_device_that_fails_mid_run_raises_audio_device_error(tmp_path: Path) -> None:
    recording = tmp_path / "usb_mic.raw"
    write_capture_file(recording, b"", pad_seconds=1.0, rate=16000)
    with alsa_sandbox(tmp_path / "alsa", extra_pcms={"usb_mic": failing_capture_pcm(recording)}):
        capture = Capture("usb_mic", 16000, 320, asyncio.get_running_loop(), max_queued=100_000)
        capture.start()
        started = time.monotonic()
        with pytest.raises(AudioDeviceError, match="'usb_mic' stopped delivering audio"):
            while True:
                await capture.read()
        assert time.monotonic() - started < 5
        capture.stop()
        capture.stop()  # idempotent


async def test_a_device_that_goes_quiet_raises_after_the_stall_timeout(tmp_path: Path) -> None:
    rate, frames = 16000, 320
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True) as sandbox:
        feeder = FifoFeeder(sandbox.capture_path, b"", rate=rate, period_frames=frames)
        feeder.start()
        try:
            capture = Capture("mic", rate, frames, asyncio.get_running_loop(),
                              stall_timeout_s=0.5)
            async with capture:
                await capture.read()
                feeder.pause()
                started = time.monotonic()
                with pytest.raises(AudioDeviceError, match="no audio from input device 'mic'"):
                    while True:
                        await capture.read()
                assert 0.4 <= time.monotonic() - started < 3
                # PortAudio's thread sits in the FIFO read; one more period lets it go.
                feeder.resume()
        finally:
            feeder.stop()


async def test_stop_wakes_a_waiting_reader(tmp_path: Path) -> None:
    rate, frames = 16000, 2048  # 128 ms periods: the reader is mostly waiting
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True) as sandbox:
        feeder = FifoFeeder(sandbox.capture_path, b"", rate=rate, period_frames=frames)
        feeder.start()
        try:
            capture = Capture("mic", rate, frames, asyncio.get_running_loop())
            capture.start()
            await capture.read()
            reader = asyncio.create_task(capture.read())
            await asyncio.sleep(0.01)
            capture.stop()
            with pytest.raises(AudioDeviceError, match="not running"):
                await asyncio.wait_for(reader, timeout=2)
            with pytest.raises(AudioDeviceError):
                await capture.read()
        finally:
            feeder.stop()


async def test_devices_that_cannot_open_are_named_in_the_error(tmp_path: Path) -> None:
    pcms = {"Kitchen Speaker": playback_only_pcm(tmp_path / "k")}
    loop = asyncio.get_running_loop()
    with alsa_sandbox(tmp_path / "alsa", extra_pcms=pcms):
        with pytest.raises(AudioDeviceError, match=r"audio\.input_device = 'attic'"):
            Capture("attic", 16000, 320, loop).start()
        with pytest.raises(AudioDeviceError, match=r"audio\.output_device = 'attic'"):
            Playback("attic", SPEAKER_RATE).start()
        # The speaker exists, but cannot capture: no input device has that name.
        with pytest.raises(AudioDeviceError, match="matches no input device"):
            Capture("Kitchen Speaker", 16000, 320, loop).start()


async def test_without_a_sound_card_the_error_says_so_and_not_the_rate(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    with alsa_sandbox(tmp_path / "alsa", sound_card=False):
        with pytest.raises(AudioDeviceError) as capture_error:
            Capture("default", 16000, 320, loop).start()
        with pytest.raises(AudioDeviceError) as playback_error:
            Playback("default", SPEAKER_RATE).start()
    for error, kind in ((capture_error, "input"), (playback_error, "output")):
        message = str(error.value)
        assert message.startswith(
            f"{kind} device 'default': no sound card found: PortAudio lists no audio device "
            f"(audio.{kind}_device); check that `aplay -l`"
        ), message
        assert "Hz" not in message and f"audio.{kind}_rate" not in message


async def test_an_opening_error_from_portaudio_is_translated(tmp_path: Path) -> None:
    # The file plugin takes any sane rate; 10 MHz it refuses, as a hw device refuses 16 kHz.
    with alsa_sandbox(tmp_path / "alsa"):
        capture = Capture("mic", 10_000_000, 320, asyncio.get_running_loop())
        with pytest.raises(AudioDeviceError) as capture_error:
            capture.start()
        with pytest.raises(AudioDeviceError) as playback_error:
            Playback("speaker", 10_000_000).start()
    message = str(capture_error.value)
    assert "input device 'mic': cannot capture at 10000000 Hz: Invalid sample rate" in message
    assert "PortAudio error -9997" in message
    assert "audio.input_device and audio.input_rate" in message
    assert "output device 'speaker': cannot play at 10000000 Hz" in str(playback_error.value)
    capture.stop()


# ----- playback


async def test_playback_plays_exactly_the_reply_counts_it_and_reports_drained(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    reply = sine_pcm(440.0, REPLY_RATE, 0.6)
    heard_when_drained: list[int] = []
    playback = Playback("speaker", SPEAKER_RATE, REPLY_RATE,
                        on_drained=lambda: heard_when_drained.append(heard_bytes(drainer)))
    async with playback:
        for offset in range(0, len(reply), 4800):  # 100 ms deltas, as the service sends
            playback.write(reply[offset:offset + 4800])
        playback.end_of_stream()
        await asyncio.wait_for(playback.wait_drained(), timeout=5)
        assert len(heard_when_drained) == 1
        assert playback.played_samples == len(reply) // 2
        await asyncio.sleep(0.2)  # the tail is still in the pipe
    resampler = Resampler(REPLY_RATE, SPEAKER_RATE)
    expected = resampler.process(reply) + resampler.flush()
    heard = drainer.data()
    start = heard.find(expected)
    assert start >= 0 and start % 2 == 0
    assert not any(heard[:start]) and not any(heard[start + len(expected):])
    assert heard.count(expected) == 1
    # Announced once all was handed over: only what fits in the pipe and a few periods
    # (1.2 s of audio at 48 kHz in all) was still on its way to the room.
    still_coming = len(expected) - heard_when_drained[0]
    assert still_coming <= PIPE_BYTES + 0.1 * SPEAKER_RATE * 2, still_coming


async def test_every_block_handed_to_the_device_reaches_the_echo_reference(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    del speaker  # the drained FIFO keeps the stream paced
    reference = SpeakerReference()
    reply = sine_pcm(440.0, REPLY_RATE, 0.3)
    wake = chime("wake", REPLY_RATE, 0.5)
    playback = Playback("speaker", SPEAKER_RATE, REPLY_RATE, reference=reference)
    blocks = []
    async with playback:
        await asyncio.sleep(0.1)
        blocks += reference.take()
        written_at = time.monotonic()
        playback.play_chime(wake)
        await asyncio.wait_for(playback.wait_drained(), timeout=5)
        playback.write(reply)
        playback.end_of_stream()
        await asyncio.wait_for(playback.wait_drained(), timeout=5)
        blocks += reference.take()
    assert reference.rate == SPEAKER_RATE
    audible = [(at, pcm) for at, pcm, is_audible, _ in blocks if is_audible]
    # The reference is exactly what was played, and stamped no earlier than it was handed on.
    resampler = Resampler(REPLY_RATE, SPEAKER_RATE)
    resampled_reply = resampler.process(reply)
    assert b"".join(pcm for _, pcm in audible).find(resampled_reply) >= 0
    assert all(at >= written_at for at, _ in audible)
    assert not any(any(pcm) for _, pcm, is_audible, _ in blocks if not is_audible)
    times = [at for at, _, _, _ in blocks]
    assert times == sorted(times)
    # The answer's blocks say so (the canceller treats its echo apart), the chime's do not.
    of_reply = b"".join(pcm for _, pcm, _, is_reply in blocks if is_reply)
    assert of_reply.find(resampled_reply) >= 0
    assert len(of_reply) < len(resampled_reply) + 2 * 2 * SPEAKER_RATE * 20 // 1000


def queue_footprint(playback: Playback) -> int:
    """Bytes of objects the playback queue holds: the deque, its pieces and their audio.

    Counted by hand rather than with tracemalloc: on CPython 3.11 tracemalloc can crash the
    process when PortAudio's callback thread makes itself a Python thread state while tracing
    is on (seen here as a segfault in traceback_new under PyGILState_Ensure; cpython #128679).
    """
    with playback._lock:
        segments = list(playback._segments)
    return sys.getsizeof(playback._segments) + sum(
        sys.getsizeof(segment) + sys.getsizeof(segment.pcm) for segment in segments
    )


async def test_tiny_deltas_play_exactly_and_queue_little_more_than_their_audio(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    reply = sine_pcm(440.0, REPLY_RATE, 1.0)
    delta_bytes = 48  # 1 ms: a service flooding the speaker with tiny deltas
    # A prebuffer longer than the reply keeps all of it queued until end_of_stream().
    async with Playback(
        "speaker", SPEAKER_RATE, REPLY_RATE, prebuffer_ms=2000, prebuffer_wait_ms=2000
    ) as playback:
        for offset in range(0, len(reply), delta_bytes):
            playback.write(reply[offset:offset + delta_bytes])
        queued = queue_footprint(playback)
        playback.end_of_stream()
        await asyncio.wait_for(playback.wait_drained(), timeout=5)
        await asyncio.sleep(0.2)
    # At 48 kHz the reply is twice its size; an object per delta would cost several times it.
    audio_at_48k = 2 * len(reply)
    assert audio_at_48k * 0.98 < queued < 1.25 * audio_at_48k, (queued, audio_at_48k)
    resampler = Resampler(REPLY_RATE, SPEAKER_RATE)
    expected = resampler.process(reply) + resampler.flush()
    heard = drainer.data()
    assert heard.count(expected) == 1
    start = heard.find(expected)
    assert not any(heard[:start]) and not any(heard[start + len(expected):])


async def test_a_long_reply_written_at_once_plays_exactly(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    reply = sine_pcm(330.0, REPLY_RATE, 2.5)  # resampled in slices, not in one piece
    async with Playback("speaker", SPEAKER_RATE, REPLY_RATE) as playback:
        playback.write(reply)
        playback.end_of_stream()
        await asyncio.wait_for(playback.wait_drained(), timeout=10)
        await asyncio.sleep(0.2)
    resampler = Resampler(REPLY_RATE, SPEAKER_RATE)
    expected = resampler.process(reply) + resampler.flush()
    assert drainer.data().count(expected) == 1


async def test_reply_resampled_to_48k_and_back_keeps_60_db_snr(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    reply = sine_pcm(1000.0, REPLY_RATE, 0.5, amplitude=16000)
    async with Playback("speaker", SPEAKER_RATE, REPLY_RATE) as playback:
        playback.write(reply)
        playback.end_of_stream()
        await asyncio.wait_for(playback.wait_drained(), timeout=5)
        await asyncio.sleep(0.2)
    heard = drainer.data()
    first = next(i for i in range(0, len(heard), 2) if heard[i:i + 2] != b"\0\0")
    at_48k = heard[first:first + len(reply) * 2]
    down = Resampler(SPEAKER_RATE, REPLY_RATE)
    back = as_samples(down.process(at_48k) + down.flush())
    original = as_samples(reply)
    assert len(back) == len(original)
    noise_energy = max(float(np.sum((back - original) ** 2)), 1e-9)  # exact is possible
    snr = 10 * np.log10(np.sum(original**2) / noise_energy)
    assert snr > 60, snr


async def test_played_samples_counts_what_was_handed_over_not_what_was_written(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    reply = sine_pcm(300.0, REPLY_RATE, 1.5)
    async with Playback("speaker", SPEAKER_RATE, REPLY_RATE) as playback:
        playback.write(reply)  # all of it at once, far faster than real time
        await until(lambda: heard_bytes(drainer) > 0.4 * SPEAKER_RATE * 2, 5, "0.4 s heard")
        heard = heard_bytes(drainer) // 2 // 2  # 48 kHz bytes -> 24 kHz samples
        played = playback.played_samples
        assert heard <= played <= len(reply) // 2 - 0.5 * REPLY_RATE
        # What was handed over but not yet heard fits in the pipe and a few periods.
        assert played - heard <= (PIPE_BYTES // 4) + 0.15 * REPLY_RATE
        playback.flush()
        playback.reset_count()
        assert playback.played_samples == 0


async def test_flush_silences_the_speaker_within_a_period(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    drained: list[bool] = []
    playback = Playback("speaker", SPEAKER_RATE, REPLY_RATE,
                        on_drained=lambda: drained.append(True))
    async with playback:
        playback.write(sine_pcm(500.0, REPLY_RATE, 3.0))
        await until(lambda: heard_bytes(drainer) > 0.3 * SPEAKER_RATE * 2, 5, "0.3 s heard")
        flushed_at = time.monotonic()
        playback.flush()
        assert time.monotonic() - flushed_at < 0.01  # returns at once
        played = playback.played_samples
        await asyncio.wait_for(playback.wait_drained(), timeout=0.05)
        await asyncio.sleep(0.6)
        assert playback.played_samples == played  # nothing more was handed over
    period_s = playback.period_frames / SPEAKER_RATE
    in_pipe_s = PIPE_BYTES / 2 / SPEAKER_RATE
    # What had already been handed over still drains: the pipe, a period, and slack (the
    # 2.7 s of the sine that were still queued would sound for far longer).
    latest_allowed = flushed_at + period_s + in_pipe_s + 0.25
    last_sound = drainer.sounding(flushed_at)[-1]
    assert last_sound <= latest_allowed, last_sound - flushed_at
    assert drained == []  # a flush is not the end of a reply


async def test_hold_pauses_the_reply_where_it_is_and_resume_plays_all_of_it(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    drained: list[bool] = []
    reply = sine_pcm(500.0, REPLY_RATE, 1.0)
    playback = Playback("speaker", SPEAKER_RATE, REPLY_RATE,
                        on_drained=lambda: drained.append(True))
    async with playback:
        playback.write(reply)
        playback.end_of_stream()
        await until(lambda: heard_bytes(drainer) > 0.3 * SPEAKER_RATE * 2, 5, "0.3 s heard")
        held_at = time.monotonic()
        playback.hold()
        played = playback.played_samples
        await asyncio.sleep(0.5)
        # Nothing more was handed over, the device went quiet, and the reply is not over.
        assert playback.played_samples - played <= playback.period_frames  # one in flight
        assert drained == []
        period_s = playback.period_frames / SPEAKER_RATE
        in_pipe_s = PIPE_BYTES / 2 / SPEAKER_RATE
        quiet_from = held_at + 2 * period_s + in_pipe_s + 0.1
        assert not drainer.sounding(quiet_from), "still sounding while held"
        resumed_at = time.monotonic()
        playback.resume()
        await asyncio.wait_for(playback.wait_drained(), timeout=3)
    assert drained == [True]
    assert playback.played_samples == len(reply) // 2  # every sample, none lost to the pause
    assert drainer.sounding(resumed_at), "the rest of the reply was not heard"


async def test_a_flush_ends_a_hold(speaker: tuple[AlsaSandbox, FifoDrainer]) -> None:
    async with Playback("speaker", SPEAKER_RATE, REPLY_RATE) as playback:
        playback.write(sine_pcm(500.0, REPLY_RATE, 0.5))
        playback.hold()
        playback.flush()
        playback.reset_count()
        # The next reply plays at once: the pause was part of the answer that was silenced.
        playback.write(sine_pcm(300.0, REPLY_RATE, 0.3))
        playback.end_of_stream()
        await asyncio.wait_for(playback.wait_drained(), timeout=3)
        assert playback.played_samples == 0.3 * REPLY_RATE


async def test_a_short_first_delta_waits_for_the_prebuffer_only_briefly(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    drained: list[bool] = []
    short = noise_pcm(0.04, REPLY_RATE, seed=7)  # 40 ms, less than the 100 ms prebuffer
    playback = Playback("speaker", SPEAKER_RATE, REPLY_RATE,
                        on_drained=lambda: drained.append(True))
    async with playback:
        written_at = time.monotonic()
        playback.write(short)
        assert not playback.is_playing  # held for more audio, as jitter insurance...
        # ...but only for prebuffer_wait_ms (50): then it plays with no more audio coming.
        await until(lambda: playback.played_samples > 0, 1, "the short delta")
        handed_over_s = time.monotonic() - written_at
        assert 0.045 <= handed_over_s <= 0.05 + 0.1, handed_over_s
        assert drained == []
        playback.end_of_stream()
        await asyncio.wait_for(playback.wait_drained(), timeout=3)
        assert drained == [True]
        assert playback.played_samples == len(short) // 2
    await until(lambda: heard_bytes(drainer) > 0, 2, "the short reply")


async def test_a_reply_with_enough_audio_starts_without_waiting(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    async with Playback("speaker", SPEAKER_RATE, REPLY_RATE) as playback:
        # More than the 100 ms prebuffer (the resampler to the device rate holds some back).
        playback.write(noise_pcm(0.15, REPLY_RATE, seed=8))
        assert playback.is_playing


async def test_a_reply_arriving_too_slowly_underruns_counted_and_still_all_played(
    speaker: tuple[AlsaSandbox, FifoDrainer], caplog: pytest.LogCaptureFixture
) -> None:
    drained: list[bool] = []
    reply = noise_pcm(0.6, REPLY_RATE, seed=11)
    playback = Playback("speaker", SPEAKER_RATE, REPLY_RATE,
                        on_drained=lambda: drained.append(True))
    with caplog.at_level(logging.WARNING, logger="talkbox.audio.playback"):
        async with playback:
            # 120 ms every 250 ms: each delta plays out before the next one arrives.
            for offset in range(0, len(reply), 5760):
                playback.write(reply[offset:offset + 5760])
                await asyncio.sleep(0.25)
            playback.end_of_stream()
            await asyncio.wait_for(playback.wait_drained(), timeout=3)
    assert playback.underruns >= 3
    assert playback.played_samples == len(reply) // 2  # every sample, gaps or not
    assert drained == [True]
    assert len([r for r in caplog.records if "ran dry" in r.getMessage()]) == 1


async def test_a_chime_plays_at_once_exactly_and_is_not_counted(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    drained: list[bool] = []
    wake = chime("wake", REPLY_RATE, 0.5)  # at the replies' rate, converted as they are
    playback = Playback("speaker", SPEAKER_RATE, REPLY_RATE,
                        on_drained=lambda: drained.append(True))
    async with playback:
        playback.play_chime(wake)
        await asyncio.wait_for(playback.wait_drained(), timeout=3)
        assert playback.played_samples == 0
        await asyncio.sleep(0.2)
    resampler = Resampler(REPLY_RATE, SPEAKER_RATE)
    played = resampler.process(wake) + resampler.flush()
    # The chime starts and ends with zero samples, so look for its sounding part exactly.
    sounding = np.flatnonzero(as_samples(played))
    assert drainer.data().find(played[sounding[0] * 2:(sounding[-1] + 1) * 2]) >= 0
    assert drained == []  # only end_of_stream() marks the end of a reply


# ----- a device that runs at one rate only, behind ALSA's plug (as `default` is: plug -> dmix)


@pytest.fixture
def dmix_like_speaker(tmp_path: Path) -> Iterator[tuple[AlsaSandbox, FifoDrainer]]:
    """pcm.speaker48k: plug in front of a card that runs at 48 kHz only, drained in real time."""
    directory = tmp_path / "alsa"
    fixed = {"speaker48k": playback_pcm(directory / "playback.raw", rate=NATIVE_RATE)}
    with (
        alsa_sandbox(directory, playback_fifo=True, extra_pcms=fixed) as sandbox,
        FifoDrainer(sandbox.playback_path, rate=NATIVE_RATE) as drainer,
    ):
        yield sandbox, drainer


def test_alsa_tells_the_rate_a_device_takes_without_converting(tmp_path: Path) -> None:
    directory = tmp_path / "alsa"
    fixed = {"speaker48k": playback_pcm(directory / "x.raw", rate=NATIVE_RATE)}
    with alsa_sandbox(directory, extra_pcms=fixed):
        assert native_rate("speaker48k", REPLY_RATE) == NATIVE_RATE
        assert native_rate("speaker48k", NATIVE_RATE) == NATIVE_RATE
        assert native_rate("speaker", REPLY_RATE) == REPLY_RATE  # the file takes any rate
        assert native_rate("no_such_pcm", REPLY_RATE) is None
        with open_pyaudio() as pa:
            index = find_device(pa, "speaker48k", "output")
            assert alsa_name(pa, index) == "speaker48k"
            assert alsa_name(pa, None) == "default"
            assert playback_rate(pa, index, REPLY_RATE) == NATIVE_RATE
            assert playback_rate(pa, find_device(pa, "speaker", "output"), 22050) == 22050


async def test_a_reply_is_resampled_here_not_by_alsa_when_the_device_runs_at_another_rate(
    dmix_like_speaker: tuple[AlsaSandbox, FifoDrainer], caplog: pytest.LogCaptureFixture,
) -> None:
    """Configured for 24 kHz, on a device that runs at 48 kHz: the stream opens at 48 kHz
    and what the card gets is soxr's conversion, sample for sample (ALSA's plug would have
    converted with its own filter); counts stay in reply samples, the echo reference and
    the chimes follow the device's rate."""
    caplog.set_level(logging.INFO, logger="talkbox.audio.playback")
    _, drainer = dmix_like_speaker
    reference = SpeakerReference()
    reply = noise_pcm(0.5, REPLY_RATE, seed=7)
    wake = chime("wake", REPLY_RATE, 0.5)
    drained: list[bool] = []
    playback = Playback("speaker48k", REPLY_RATE, REPLY_RATE, reference=reference,
                        on_drained=lambda: drained.append(True))
    assert playback.output_rate == REPLY_RATE  # nothing asked of ALSA before start()
    blocks = []
    async with playback:
        assert playback.output_rate == NATIVE_RATE
        assert playback.period_frames == NATIVE_RATE // 50  # still 20 ms periods
        assert reference.rate == NATIVE_RATE
        for offset in range(0, len(reply), 4800):
            playback.write(reply[offset:offset + 4800])
        playback.end_of_stream()
        await asyncio.wait_for(playback.wait_drained(), timeout=5)
        assert drained == [True]
        assert playback.played_samples == len(reply) // 2  # in the reply's 24 kHz samples
        blocks += reference.take()
        playback.reset_count()
        playback.play_chime(wake)
        await asyncio.wait_for(playback.wait_drained(), timeout=5)
        assert playback.played_samples == 0
        blocks += reference.take()
        await asyncio.sleep(0.2)  # the tail is still in the pipe
    resampler = Resampler(REPLY_RATE, NATIVE_RATE)
    expected = resampler.process(reply) + resampler.flush()
    heard = drainer.data()
    assert heard.count(expected) == 1
    assert b"".join(pcm for _, pcm, audible, _ in blocks if audible).find(expected) >= 0
    resampler = Resampler(REPLY_RATE, NATIVE_RATE)
    chimed = resampler.process(wake) + resampler.flush()
    sounding = np.flatnonzero(as_samples(chimed))
    assert heard.find(chimed[sounding[0] * 2:(sounding[-1] + 1) * 2]) >= 0
    assert any("playing at its 48000 Hz" in r.getMessage() for r in caplog.records)


async def test_a_device_that_takes_the_configured_rate_is_opened_at_it(
    dmix_like_speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    del dmix_like_speaker
    async with Playback("speaker48k", NATIVE_RATE, REPLY_RATE) as playback:
        assert playback.output_rate == NATIVE_RATE
    async with Playback("speaker", 22050, REPLY_RATE) as playback:  # the file takes any rate
        assert playback.output_rate == 22050


async def test_an_idle_stream_does_not_spin(speaker: tuple[AlsaSandbox, FifoDrainer]) -> None:
    before = set(thread_cpu_seconds())
    async with Playback("speaker", SPEAKER_RATE, REPLY_RATE):
        await asyncio.sleep(0.2)
        started = thread_cpu_seconds()
        audio_threads = set(started) - before
        assert audio_threads  # PortAudio's callback thread
        await asyncio.sleep(1.0)
        ended = thread_cpu_seconds()
    used = sum(ended[tid] - started[tid] for tid in audio_threads if tid in ended)
    assert used < 0.2, used  # a busy loop would use ~1.0 s of CPU in this second


async def test_a_failed_speaker_raises_audio_device_error(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    playback = Playback("dead_speaker", SPEAKER_RATE, REPLY_RATE)
    playback.start()
    try:
        with pytest.raises(AudioDeviceError, match="'dead_speaker' stopped taking audio"):
            for _ in range(100):
                playback.write(noise_pcm(0.05, REPLY_RATE, seed=1))
                await asyncio.sleep(0.05)
        with pytest.raises(AudioDeviceError):
            await asyncio.wait_for(playback.wait_drained(), timeout=3)
    finally:
        playback.close()
        playback.close()  # idempotent


# ----- standby: the stream stops while nothing plays

STANDBY_S = 0.4
# From queuing a chime to its first sound in the drained FIFO: a running stream needs up to a
# period and the one-page pipe (~35 ms); starting it adds well under a millisecond. Generous
# for a loaded machine, far below a linger that would mean "it waited for something".
PROMPT_S = 0.25


async def quiet_for(drainer: FifoDrainer, reference: SpeakerReference, seconds: float,
                    timeout_s: float = 5.0) -> None:
    """Until nothing was drained and no reference block came for `seconds` (the pipe's last
    page and the stream's last periods drain after it ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reference.take()
        before = drainer.drained
        await asyncio.sleep(seconds)
        if drainer.drained == before and not reference.take():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the speaker went on playing for {timeout_s} s")


async def test_a_speaker_in_standby_writes_nothing_and_the_next_sound_plays_at_once(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    reference = SpeakerReference()
    wake = chime("wake", REPLY_RATE, 0.5)
    reply = sine_pcm(330.0, REPLY_RATE, 0.8)
    playback = Playback("speaker", SPEAKER_RATE, REPLY_RATE, reference=reference,
                        standby_after_s=STANDBY_S)
    async with playback:
        # Opened, not started: nothing written, no callback, and that is not a failure.
        await asyncio.sleep(0.3)
        assert drainer.drained == 0 and reference.take() == []
        await asyncio.wait_for(playback.wait_drained(), timeout=1)

        for round_ in range(2):  # the first start, then a restart after standing by
            queued_at = time.monotonic()
            playback.play_chime(wake)
            await asyncio.wait_for(playback.wait_drained(), timeout=5)
            first_sound = drainer.sounding(queued_at)
            assert first_sound and first_sound[0] - queued_at < PROMPT_S, (round_, first_sound)
            assert any(audible for _, _, audible, _ in reference.take())
            # Shorter gaps than the linger (a conversation's) keep it running, writing silence.
            drained = drainer.drained
            await asyncio.sleep(STANDBY_S / 2)
            assert drainer.drained - drained > 0.1 * STANDBY_S * SPEAKER_RATE * 2
            # After the linger it stops: nothing more reaches the speaker or the canceller.
            await asyncio.sleep(STANDBY_S / 2)
            await quiet_for(drainer, reference, 0.3)

        # A reply after that plays whole, and is counted as before.
        written_at = time.monotonic()
        playback.write(reply)
        playback.end_of_stream()
        await asyncio.wait_for(playback.wait_drained(), timeout=5)
        assert playback.played_samples == len(reply) // 2
        await asyncio.sleep(0.2)  # the tail is still in the pipe
        assert drainer.sounding(written_at)[0] - written_at < PROMPT_S + 0.1  # prebuffer
    resampler = Resampler(REPLY_RATE, SPEAKER_RATE)
    expected = resampler.process(reply) + resampler.flush()
    assert drainer.data(written_at).count(expected) == 1


async def test_without_a_standby_the_stream_keeps_writing_silence(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    reference = SpeakerReference()
    async with Playback("speaker", SPEAKER_RATE, REPLY_RATE, reference=reference) as playback:
        playback.play_chime(chime("wake", REPLY_RATE, 0.5))
        await asyncio.wait_for(playback.wait_drained(), timeout=5)
        await asyncio.sleep(2 * STANDBY_S)
        reference.take()
        drained = drainer.drained
        await asyncio.sleep(0.5)
        # About 0.5 s of silence at 48 kHz: at least half of it, on a loaded machine.
        assert drainer.drained - drained > 0.25 * SPEAKER_RATE * 2
        blocks = reference.take()
        assert len(blocks) > 10 and not any(audible for _, _, audible, _ in blocks)


async def test_a_speaker_that_cannot_start_again_after_standby_is_a_device_error(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    _, drainer = speaker
    reference = SpeakerReference()
    playback = Playback("speaker", SPEAKER_RATE, REPLY_RATE, reference=reference,
                        standby_after_s=STANDBY_S)
    async with playback:
        playback.play_chime(chime("wake", REPLY_RATE, 0.5))
        await asyncio.wait_for(playback.wait_drained(), timeout=5)
        await asyncio.sleep(STANDBY_S)
        await quiet_for(drainer, reference, 0.3)
        # The device went away in standby: PortAudio's stream is gone (the file plugin cannot
        # be unplugged, so it is closed behind the playback's back) and cannot start.
        playback._stream.close()
        with pytest.raises(AudioDeviceError, match=r"output device 'speaker' could not start"):
            playback.play_chime(chime("wake", REPLY_RATE, 0.5))


async def test_a_speaker_that_died_in_standby_fails_on_the_next_sound(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    playback = Playback("dead_speaker", SPEAKER_RATE, REPLY_RATE, standby_after_s=STANDBY_S)
    playback.start()
    try:
        await playback.wait_drained()  # in standby: not a failure
        with pytest.raises(AudioDeviceError, match="'dead_speaker' stopped taking audio"):
            for _ in range(100):
                playback.play_chime(chime("wake", REPLY_RATE, 0.5))
                await asyncio.sleep(0.05)
    finally:
        playback.close()


async def test_the_echo_canceller_meets_a_restart_after_standby_as_a_gap(
    speaker: tuple[AlsaSandbox, FifoDrainer],
) -> None:
    # A linger shorter than the canceller's STAY_ON_S, so it is still pairing the reference
    # with the microphone when the stream stops and starts again (the daemon's 30 s is longer:
    # there the canceller rests first, and the restart only meets a resting canceller).
    reference = SpeakerReference()
    canceller = EchoCanceller(reference, capture_rate=16000)
    chunk = bytes(640 * 2)  # 40 ms of a silent microphone at 16 kHz

    async def microphone() -> None:
        while True:
            await asyncio.sleep(0.04)
            canceller.process(chunk, time.monotonic() - 0.04)

    playback = Playback("speaker", SPEAKER_RATE, REPLY_RATE, reference=reference,
                        standby_after_s=STANDBY_S)
    listening = asyncio.create_task(microphone())
    try:
        async with playback:
            playback.play_chime(chime("wake", REPLY_RATE, 0.5))
            await asyncio.wait_for(playback.wait_drained(), timeout=5)
            await asyncio.sleep(STANDBY_S + 0.5)  # standing by, the canceller still on
            assert canceller.last_chunk_cleaned
            before = canceller.stats.resyncs
            playback.play_chime(chime("wake", REPLY_RATE, 0.5))
            await asyncio.wait_for(playback.wait_drained(), timeout=5)
            await asyncio.sleep(0.2)
    finally:
        listening.cancel()
    # The first sound started the reference stream; the restart started it afresh.
    assert before >= 1
    assert canceller.stats.resyncs == before + 1, (before, canceller.stats)
