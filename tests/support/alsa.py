"""A sound card made of files: ALSA's `file` plugin over the `null` plugin, for real PyAudio.

`alsa_sandbox()` writes an asound.conf of its own and points `ALSA_CONFIG_PATH` at it (that
replaces the system config, so only these devices exist):

- `pcm.!default` and `pcm.mic` capture from `capture_path`, `pcm.!default` and `pcm.speaker`
  play into `playback_path`; either path may be a FIFO (`capture_fifo` / `playback_fifo`).
- `extra_pcms` adds more devices by name; `capture_pcm()`, `playback_pcm()`,
  `playback_only_pcm()`, `failing_capture_pcm()`, `failing_playback_pcm()` make their bodies.
- `sound_card=False` leaves those three out and makes `default` a card that is not there:
  PortAudio then lists no device at all, as on a machine without a sound card (devices
  added to the file later appear, as a card plugged in does).

What was found about the file plugin, PortAudio and the process (see also
/work/shared/testing-without-hardware.md):

- ALSA does NOT cache its config for the life of the process: it re-reads it whenever
  `ALSA_CONFIG_PATH` (or a file's time) changes. PortAudio, however, lists devices once per
  `Pa_Initialize`, and that is reference counted: while ANY PyAudio instance is alive, a new
  one still sees the device list of the first. So set the variable first (entering the
  sandbox does) and terminate every PyAudio before leaving; then each test sees its own
  devices in-process, and no subprocess is needed. `env` is for subprocesses.
- Every file-plugin PCM claims 128 input and 128 output channels, whatever it is for, except
  one whose `infile` cannot be opened: that has 0 inputs (`playback_only_pcm()`).
- Unpaced, a file is read (and written) as fast as PortAudio asks, ~100k periods/s on one
  core; at its end the last buffer repeats. Pad input with silence and stop by length.
- A capture FIFO paces capture when each write is one whole period (`FifoFeeder`); a playback
  FIFO drained at a real-time rate paces playback (`FifoDrainer`), one period per callback
  when each period fills the pipe's one page (`playback_pcm()` widens the frames for that).
- A capture PCM copies what it captured into its `file`; copying into /dev/full makes the
  stream fail a few periods after it starts, as an unplugged USB device does.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from support.room import EchoRoom

SAMPLE_BYTES = 2  # PCM16 mono
WIDE_CHANNELS = 2  # what a playback_pcm() device writes: S32_LE stereo...
WIDE_FRAME_BYTES = 4 * WIDE_CHANNELS  # ...8 bytes for every PCM16 mono sample played


def narrow(wide: bytes) -> bytes:
    """What a `playback_pcm()` device wrote (whole S32_LE stereo frames) -> the PCM16 mono
    that was played: the left channel, shifted back."""
    frames = np.frombuffer(wide, dtype="<i4").reshape(-1, WIDE_CHANNELS)
    return (frames[:, 0] >> 16).astype("<i2").tobytes()


def capture_pcm(infile: Path | str) -> str:
    """A capture device reading raw PCM16 from `infile` (its own copy goes to /dev/null)."""
    return _file_pcm(infile=infile, outfile="/dev/null")


def playback_pcm(outfile: Path | str, rate: int | None = None) -> str:
    """A playback device writing into `outfile` as a sound card takes audio: one period at a
    time, every period (read it with `FifoDrainer`, which turns it back into PCM16 mono).
    With `rate`, the card runs at that rate only, as dmix does: `plug` converts any other.

    ALSA's `plug` widens each PCM16 mono frame to S32 stereo (exactly: shifted, duplicated),
    so a 20 ms period at 24 kHz is 3840 bytes. A FIFO shrunk to one page then holds a single
    period: PortAudio's callback comes every 20 ms, as on a card. At 2 bytes a frame, four
    periods fit in the page and the callbacks came in bursts of four every 80 ms.
    """
    wide = _file_pcm(infile=None, outfile=outfile)
    fixed_rate = "" if rate is None else f" rate {rate}"
    return (
        f"{{ type plug slave {{ pcm {wide} format S32_LE channels {WIDE_CHANNELS}{fixed_rate} }} }}"
    )


def playback_only_pcm(outfile: Path | str) -> str:
    """A device PortAudio lists with 0 input channels: its capture file cannot be opened."""
    return _file_pcm(infile="/nonexistent/talkbox-no-capture.raw", outfile=outfile)


def failing_capture_pcm(infile: Path | str) -> str:
    """A capture device whose stream dies shortly after it starts (its copy hits /dev/full)."""
    return _file_pcm(infile=infile, outfile="/dev/full")


def failing_playback_pcm() -> str:
    """A playback device whose stream dies once it writes (/dev/full is always full)."""
    return _file_pcm(infile=None, outfile="/dev/full")


def missing_card_pcm() -> str:
    """A PCM on a sound card the system does not have (PortAudio leaves it out of its list).

    A config without any usable `default` is no stand-in: PortAudio's ALSA device scan
    aborts the process on it (an assertion), where a machine without a card lists nothing.
    """
    return '{ type hw card "talkbox_no_such_card" }'


def _file_pcm(infile: Path | str | None, outfile: Path | str) -> str:
    source = f' infile "{infile}"' if infile is not None else ""
    return f'{{ type file slave.pcm {{ type null }} file "{outfile}"{source} format "raw" }}'


def _alsa_id(name: str) -> str:
    # Names like "Kitchen Speaker" must be quoted in ALSA's config syntax.
    return name if re.fullmatch(r"!?\w+", name) else '"' + name.replace('"', '\\"') + '"'


@dataclass
class AlsaSandbox:
    directory: Path
    config_path: Path
    capture_path: Path
    playback_path: Path
    env: dict[str, str] = field(default_factory=dict)
    """os.environ plus ALSA_CONFIG_PATH, to pass to a subprocess."""


@contextmanager
def alsa_sandbox(
    directory: Path,
    *,
    capture_fifo: bool = False,
    playback_fifo: bool = False,
    extra_pcms: Mapping[str, str] | None = None,
    sound_card: bool = True,
) -> Iterator[AlsaSandbox]:
    """Write the config into `directory` and set ALSA_CONFIG_PATH while inside."""
    directory.mkdir(parents=True, exist_ok=True)
    capture_path = directory / "capture.raw"
    playback_path = directory / "playback.raw"
    for path, is_fifo in ((capture_path, capture_fifo), (playback_path, playback_fifo)):
        if is_fifo:
            os.mkfifo(path)
        else:
            path.touch()
    standard = {
        "!default": _file_pcm(infile=capture_path, outfile=playback_path),
        "mic": capture_pcm(capture_path),
        "speaker": playback_pcm(playback_path),
    }
    pcms = {
        **(standard if sound_card else {"!default": missing_card_pcm()}),
        **(extra_pcms or {}),
    }
    config_path = directory / "asound.conf"
    config_path.write_text("".join(f"pcm.{_alsa_id(name)} {body}\n" for name, body in pcms.items()))
    previous = os.environ.get("ALSA_CONFIG_PATH")
    os.environ["ALSA_CONFIG_PATH"] = str(config_path)
    try:
        yield AlsaSandbox(
            directory=directory,
            config_path=config_path,
            capture_path=capture_path,
            playback_path=playback_path,
            env={**os.environ, "ALSA_CONFIG_PATH": str(config_path)},
        )
    finally:
        if previous is None:
            os.environ.pop("ALSA_CONFIG_PATH", None)
        else:
            os.environ["ALSA_CONFIG_PATH"] = previous


def silence(seconds: float, rate: int) -> bytes:
    return bytes(round(seconds * rate) * SAMPLE_BYTES)


def write_capture_file(path: Path, pcm: bytes, pad_seconds: float, *, rate: int) -> None:
    """Write `pcm` followed by `pad_seconds` of silence, so what repeats after the end is silent."""
    path.write_bytes(pcm + silence(pad_seconds, rate))


class FifoFeeder(threading.Thread):
    """Feed a capture FIFO one whole period at a time on a real-time clock (x `speed`).

    The FIFO is opened read-write in the constructor, before the stream under test opens it,
    so neither side blocks in open() and the reader never sees end-of-file. After `pcm`
    (padded to whole periods) it goes on with silence. `pause()` stops writing, which leaves
    PortAudio's capture thread waiting in read() like a device that went quiet; `resume()` goes on.

    Resume before closing a stream that is waiting on the FIFO: PortAudio aborts a stream by
    cancelling its thread, but cancellation is disabled while that thread is inside the
    device read, and the file plugin reads a FIFO with a plain blocking read().

    With a `room` (support.room), each period written is the person's audio plus what the
    microphone hears of the speaker in the period before its scheduled time.
    """

    def __init__(
        self,
        fifo: Path,
        pcm: bytes,
        *,
        rate: int,
        period_frames: int,
        speed: float = 1.0,
        room: EchoRoom | None = None,
    ) -> None:
        super().__init__(name="fifo-feeder", daemon=True)
        if room is not None and (speed != 1.0 or rate != room.mic_rate):
            raise ValueError("a room hears in real time at its microphone's rate")
        self.room = room
        self.period_bytes = period_frames * SAMPLE_BYTES
        # Whole periods up to PIPE_BUF are written atomically: a reader never sees half of one.
        if self.period_bytes > select.PIPE_BUF:
            raise ValueError(f"a period of {self.period_bytes} bytes is above PIPE_BUF")
        remainder = len(pcm) % self.period_bytes
        self.pcm = pcm + bytes(self.period_bytes - remainder if remainder else 0)
        # With a room, the microphone keeps its own clock (drift_ppm apart from the speaker's).
        self.period_s = room.period_s(period_frames) if room else period_frames / rate / speed
        self.written: list[tuple[float, int]] = []
        """(time.monotonic(), bytes) of every write, in order."""
        self.pcm_done = threading.Event()
        """Set once the last period of `pcm` has been written."""
        self._stop_requested = threading.Event()
        self._feeding = threading.Event()
        self._feeding.set()
        self._offset = 0
        self.scheduled = 0.0
        """When the period being made is due (time.monotonic(), the device clock)."""
        self._fd = os.open(fifo, os.O_RDWR)

    def run(self) -> None:
        next_write = time.monotonic()
        while not self._stop_requested.is_set():
            if not self._feeding.is_set():
                self._feeding.wait(0.05)
                next_write = time.monotonic()
                continue
            delay = next_write - time.monotonic()
            if delay > 0 and self._stop_requested.wait(delay):
                return
            self.scheduled = next_write
            chunk = self._next_period()
            if self.room is not None:
                # The scheduled time, not the late wake-up: the echo follows the device clock.
                chunk = self.room.mix(chunk, at=next_write)
            if not self._write_when_room(chunk):
                return
            self.written.append((time.monotonic(), len(chunk)))
            next_write += self.period_s

    def _next_period(self) -> bytes:
        """The next period to write: the recording's, then silence. Subclasses may differ."""
        chunk = self.pcm[self._offset : self._offset + self.period_bytes]
        self._offset += len(chunk)
        if self._offset >= len(self.pcm):
            self.pcm_done.set()
        return chunk or bytes(self.period_bytes)

    def _write_when_room(self, chunk: bytes) -> bool:
        # Waits in short slices so stop() is honoured even when nobody reads the FIFO.
        while not self._stop_requested.is_set():
            _, writable, _ = select.select([], [self._fd], [], 0.05)
            if writable:
                os.write(self._fd, chunk)
                return True
        return False

    def pause(self) -> None:
        self._feeding.clear()

    def resume(self) -> None:
        self._feeding.set()

    def stop(self) -> None:
        self._stop_requested.set()
        if self.is_alive():
            self.join(timeout=5)
        os.close(self._fd)


class FifoDrainer(threading.Thread):
    """Drain a `playback_pcm()` FIFO like a DAC: at `rate` x `speed`, recording what and when.

    The pipe is shrunk to one page so the writer is held to the drain rate. Time the writer
    does not use is lost (a real DAC does not catch up), so a late writer is not rushed.
    What was read is kept as the PCM16 mono the player wrote (the left channel, narrowed).
    A `room` (support.room) is handed every block read, in order, with the time it finished
    playing on this budget's clock, and is told of ticks that read nothing (the speaker
    played nothing more up to then).
    """

    def __init__(
        self,
        fifo: Path,
        *,
        rate: int,
        speed: float = 1.0,
        tick_s: float = 0.005,
        keep: bool = True,
        room: EchoRoom | None = None,
    ) -> None:
        super().__init__(name="fifo-drainer", daemon=True)
        if room is not None and rate * speed != room.speaker_rate:
            raise ValueError("a room hears in real time at its speaker's rate")
        self.room = room
        self.bytes_per_s = rate * speed * WIDE_FRAME_BYTES
        self.tick_s = tick_s
        # Credit for at most 20 ms: a stalled writer cannot later be drained in a burst.
        self._max_credit = max(0.02, 2 * tick_s) * self.bytes_per_s
        self.records: list[tuple[float, bytes]] = []
        """(time.monotonic(), PCM16 bytes) of every read, in order (none when `keep` is False)."""
        self.keep = keep
        self.drained = 0
        """PCM16 bytes drained so far, kept or not."""
        self._partial_frame = b""
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, 4096)

    def run(self) -> None:
        budget = 0.0
        last = time.monotonic()
        while not self._stop_requested.wait(self.tick_s):
            now = time.monotonic()
            budget = min(budget + (now - last) * self.bytes_per_s, self._max_credit)
            last = now
            wanted = int(budget)
            pcm = b""
            if wanted > 0:
                try:
                    data = os.read(self._fd, wanted)
                except BlockingIOError:
                    data = None
                if data is not None:
                    budget -= len(data)
                    pcm = self._narrow(data)
                    self.drained += len(pcm)
                    if self.keep:  # a soak drains megabytes that must not count as test memory
                        with self._lock:
                            self.records.append((now, pcm))
            if self.room is not None:
                # Budget not yet read is time the writer was late for and may still fill
                # (credit): the block, and what is known to have played, ended that long ago.
                self.room.played(pcm, at=now - budget / self.bytes_per_s)

    def _narrow(self, data: bytes) -> bytes:
        data = self._partial_frame + data
        whole = len(data) - len(data) % WIDE_FRAME_BYTES
        self._partial_frame = data[whole:]
        return narrow(data[:whole])

    def data(self, since: float = 0.0) -> bytes:
        """Everything drained at or after monotonic time `since`, concatenated."""
        with self._lock:
            return b"".join(chunk for at, chunk in self.records if at >= since)

    def sounding(self, since: float) -> list[float]:
        """The times of the reads at or after `since` that held sound, in order."""
        with self._lock:
            times = []
            for at, chunk in reversed(self.records):  # the newest first: stop at `since`
                if at < since:
                    break
                if any(chunk):
                    times.append(at)
        return times[::-1]

    def stop(self) -> None:
        self._stop_requested.set()
        if self.is_alive():
            self.join(timeout=5)
        os.close(self._fd)
        if self.room is not None:
            self.room.close()  # nothing more will play: the microphone need not wait for it

    def __enter__(self) -> FifoDrainer:
        """Draining until the `with` ends."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
