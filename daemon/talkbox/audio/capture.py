"""Microphone capture: one PyAudio input stream feeding an asyncio queue, or a consumer.

This module owns the hand-over from PortAudio's audio thread. The stream callback does
nothing but stamp the time and pass the bytes PyAudio already copied on: by default to
`loop.call_soon_threadsafe`, so it never waits on the loop and the loop never waits on it;
given `deliver`, straight to that (the daemon's front-end thread), without waking the loop.
Each chunk carries the time its first sample was at the ADC (the callback's time less the
chunk's length and the stream's input latency): the echo canceller pairs it with what the
speaker played at that moment.
On the loop side the chunk goes into a bounded queue; when the consumer falls behind, the
OLDEST chunk is dropped (fresh audio matters more for wake word and turn-taking), counted in
`overflows` and logged, rate-limited.

A device that vanishes mid-run (USB unplug, ALSA error) makes PortAudio's thread end or go
quiet; `read()` notices either, once the queue is empty, and raises `AudioDeviceError`, and
so does `check_health()`, which a consumer's owner calls from time to time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple

import pyaudio

from talkbox.audio.devices import find_device
from talkbox.audio.pa import (
    ThrottledWarning,
    create_pyaudio,
    device_error,
    release,
)
from talkbox.errors import AudioDeviceError

log = logging.getLogger(__name__)

# How often a waiting read() looks at the stream's health when no audio comes.
_HEALTH_POLL_S = 0.2


class Captured(NamedTuple):
    """One chunk from the microphone: PCM16 mono, and when its first sample was at the ADC
    (time.monotonic())."""

    pcm: bytes
    time: float


class Capture:
    """Capture 16-bit mono PCM at `rate` from the input device named `device`.

    `start()`, `read()`, `check_health()` and `stop()` belong to the event loop's thread;
    `loop` is that loop. With `deliver`, each chunk goes to it on PortAudio's thread instead of
    to `read()`: it must be quick and never block.
    """

    def __init__(
        self,
        device: str,
        rate: int,
        frames_per_buffer: int,
        loop: asyncio.AbstractEventLoop,
        max_queued: int = 50,
        *,
        stall_timeout_s: float = 3.0,
        deliver: Callable[[Captured], None] | None = None,
    ) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        self.device = device
        self.rate = rate
        self.frames_per_buffer = frames_per_buffer
        self._loop = loop
        self._stall_timeout_s = stall_timeout_s
        self._deliver = deliver
        # None wakes a waiting read() so it re-checks whether the capture has stopped.
        self._queue: asyncio.Queue[Captured | None] = asyncio.Queue(maxsize=max_queued)
        self._pa: Any = None
        self._stream: Any = None
        self._input_latency_s = 0.0
        self._stopped = False
        self.overflows = 0
        """Chunks dropped because the consumer fell behind (the oldest ones go)."""
        self.device_overruns = 0
        """Periods in which PortAudio itself reported lost input (the device side overran)."""
        self.last_chunk_monotonic = time.monotonic()
        """time.monotonic() of the newest chunk from the device (or of start()), for watchdogs."""
        self._overflow_warning = ThrottledWarning(
            log, f"capture from {device!r}: reader fell behind, dropped the oldest audio"
        )
        self._overrun_warning = ThrottledWarning(
            log, f"capture from {device!r}: the device reported an input overflow"
        )

    def start(self) -> None:
        """Open the device and start capturing. Raises AudioDeviceError naming the device."""
        if self._stream is not None:
            return
        if self._stopped:
            raise RuntimeError("a stopped Capture cannot be restarted; make a new one")
        self._pa = create_pyaudio()
        try:
            index = find_device(self._pa, self.device, "input")
            self.last_chunk_monotonic = time.monotonic()
            self._stream = self._pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=self.rate,
                input=True,
                input_device_index=index,
                frames_per_buffer=self.frames_per_buffer,
                stream_callback=self._on_audio,
            )
            self._input_latency_s = float(self._stream.get_input_latency())
        except OSError as exc:
            self._release()
            raise device_error(exc, "input", self.device, self.rate) from exc
        except BaseException:
            self._release()
            raise
        log.info("capture started: input device %r at %d Hz", self.device, self.rate)

    def _on_audio(
        self, in_data: bytes | None, frame_count: int, time_info: Any, status_flags: int
    ) -> tuple[None, int]:
        # PortAudio's thread: no locks, no logging, nothing that can wait on the loop.
        now = self.last_chunk_monotonic = time.monotonic()
        captured = Captured(
            in_data or b"", now - self._input_latency_s - frame_count / self.rate
        )
        try:
            if self._deliver is None:
                self._loop.call_soon_threadsafe(self._enqueue, captured, status_flags)
            else:
                self._deliver(captured)
                if status_flags & pyaudio.paInputOverflow:
                    self._loop.call_soon_threadsafe(self._note_overrun)
        except RuntimeError:  # the loop is closed: nobody will ever read again
            return None, pyaudio.paAbort
        return None, pyaudio.paContinue

    def _enqueue(self, chunk: Captured, status_flags: int) -> None:
        if self._stopped:
            return
        if status_flags & pyaudio.paInputOverflow:
            self._note_overrun()
        if self._queue.full():
            self._queue.get_nowait()
            self.overflows += 1
            self._overflow_warning.note(self.overflows)
        self._queue.put_nowait(chunk)

    def _note_overrun(self) -> None:
        self.device_overruns += 1
        self._overrun_warning.note(self.device_overruns)

    @property
    def input_latency_s(self) -> float:
        """The input latency PortAudio reported when the stream opened (0 before that)."""
        return self._input_latency_s

    async def read(self) -> Captured:
        """The next chunk of `frames_per_buffer` frames, with its capture time.

        Raises AudioDeviceError once the queue is empty and the capture was stopped, the
        stream ended (device gone), or no audio came for `stall_timeout_s`.
        """
        while True:
            if not self._queue.empty():
                chunk = self._queue.get_nowait()
            else:
                self.check_health()
                try:
                    async with asyncio.timeout(_HEALTH_POLL_S):
                        chunk = await self._queue.get()
                except TimeoutError:
                    continue
            if chunk is not None:
                return chunk

    def check_health(self) -> None:
        """Raise AudioDeviceError if the capture was stopped, the stream ended (device gone),
        or no audio came for `stall_timeout_s`."""
        if self._stopped or self._stream is None:
            raise AudioDeviceError(f"capture from input device {self.device!r} is not running")
        if not self._stream.is_active():
            raise AudioDeviceError(
                f"input device {self.device!r} stopped delivering audio (unplugged or failed?)"
            )
        silent_for = time.monotonic() - self.last_chunk_monotonic
        if silent_for > self._stall_timeout_s:
            raise AudioDeviceError(
                f"no audio from input device {self.device!r} for {silent_for:.1f} s"
            )

    def stop(self) -> None:
        """Stop and close the stream (idempotent); a waiting read() then raises."""
        if self._stopped:
            return
        self._stopped = True
        was_running = self._stream is not None
        self._release()
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        if was_running:
            log.info(
                "capture stopped: input device %r (%d chunks dropped)", self.device, self.overflows
            )

    def _release(self) -> None:
        # close() aborts the stream and joins PortAudio's thread (cancelling a blocked read).
        stream, self._stream = self._stream, None
        pa, self._pa = self._pa, None
        release(stream, pa, f"input device {self.device!r}")

    async def __aenter__(self) -> Capture:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
