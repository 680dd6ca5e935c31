"""Speaker output: one PyAudio output stream that plays a queue and counts what it played.

This module owns the speaker side of the data path: replies arrive as 24 kHz PCM16 deltas,
are resampled to the device rate on the event loop (`write()`), queued, and handed to
PortAudio period by period from its callback thread. The device rate is the configured one
unless ALSA would have to convert it (its `plug` in front of dmix, say): then `start()` opens
the device at the rate it takes as it is (audio/alsa.py) and the resampling is done here,
never by ALSA's rate plugin, which has aborted the process under load. The queue and
counters are shared with that thread under one lock, held only for list operations; the
callback never allocates more than its output buffer and never waits on the event loop.

The stream is opened by `start()` and, while sounds come and go, kept RUNNING, writing
silence when the queue is empty, rather than stopped between replies: with the stream
running, a chime or a reply starts within one period (no ALSA prepare/start), and the speaker
amplifier is not switched on and off around every utterance (the I2S amps on Pi HATs and many
USB speakers pop when their clock starts or stops). The cost is one callback per period (50
per second at the default 20 ms), each a lock and a slice; PortAudio waits on the device
between them, so there is no busy loop.

Standby: with `standby_after_s`, the stream is opened by `start()` (a wrong device or rate is
still an error then) but not started; the first sound queued starts it, and once nothing has
been queued or played for `standby_after_s` it ends again, so an idle daemon runs no output
callback at all. It ends from inside: the callback returns paComplete at its next period (see
`_stand_by`), and the next sound's `start_stream()` is preceded by a `stop_stream()` that then
only marks it stopped. A stream in standby is not a failed device; one that cannot start again
(unplugged meanwhile) is the same AudioDeviceError as one that stops taking audio. Without
`standby_after_s` (None) the stream starts at `start()` and runs until `close()`.

Starting: a chime plays at once. A reply waits until `prebuffer_ms` (100) of it is queued,
so network jitter does not break it up, but never longer than `prebuffer_wait_ms` (50) after
its first audio arrived: a service that sends a small first delta is heard at once anyway.

Counting: `played_samples` is what the callback handed to PortAudio of assistant audio
since `reset_count()`, in SOURCE-rate samples, so `conversation.item.truncate` can say how
much of the item the user really heard. Chimes and silence are not counted.

Memory: the queue holds reply audio and little else. Small deltas are appended to the last
queued piece (up to `_COALESCE_MS` of audio), so a service that sends thousands of tiny deltas
costs about their audio, not an object per delta; a large delta is resampled in slices of
`_RESAMPLE_SLICE_BYTES`, so the float copies soxr needs never exceed a slice. How much a reply
may queue in total is the core's decision (core/conversation.py, MAX_REPLY_SECONDS).

Draining: `end_of_stream()` marks the end of a reply; once everything up to the mark has
been handed over and the queue is empty, `on_drained` is called on the event loop after the
stream's output latency (the time PortAudio says handed audio takes to reach the DAC).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple

import pyaudio

from talkbox.audio.alsa import playback_rate
from talkbox.audio.devices import find_device
from talkbox.audio.echo_cancel import SpeakerReference
from talkbox.audio.pa import (
    ThrottledWarning,
    create_pyaudio,
    describe_os_error,
    device_error,
    release,
)
from talkbox.audio.resample import Resampler
from talkbox.audio_format import BYTES_PER_SAMPLE, REALTIME_RATE
from talkbox.errors import AudioDeviceError

log = logging.getLogger(__name__)

# How often a waiting wait_drained() looks at the stream's health.
_HEALTH_POLL_S = 0.2
# Reply audio shorter than this (at the output rate) is appended to the last queued piece
# instead of queued on its own: a piece costs ~120 bytes of objects whatever its length.
_COALESCE_MS = 100
# Reply audio is resampled at most this much (source-rate bytes, 1 s at 24 kHz) at a time.
_RESAMPLE_SLICE_BYTES = 48000


class _Kind(enum.Enum):
    SPEECH = "speech"  # counted in played_samples
    CHIME = "chime"  # played at once, not counted
    END = "end"  # zero-length mark: the reply ends here


class _Segment(NamedTuple):
    # A bytearray only for coalesced reply audio, which may still grow at the tail; it is
    # read by slicing (a copy) under the lock, never through a view, so it can be resized.
    pcm: bytes | bytearray
    kind: _Kind


_END_MARK = _Segment(b"", _Kind.END)


class Playback:
    """Play PCM16 mono written at `source_rate` on the output device named `device`, at
    `output_rate` or, if ALSA would convert that, at the device's own rate (`output_rate`
    says which once `start()` has opened it).

    With `standby_after_s`, the stream stands by until the first sound and again once nothing
    has played for that long (None: it runs from `start()` to `close()`).

    `start()`, `write()`, `end_of_stream()`, `flush()`, `hold()`, `resume()`, `play_chime()`,
    `wait_drained()` and `close()` belong to the event loop's thread (`start()` binds to the
    running loop).
    """

    def __init__(
        self,
        device: str,
        output_rate: int,
        source_rate: int = REALTIME_RATE,
        period_frames: int | None = None,
        *,
        prebuffer_ms: int = 100,
        prebuffer_wait_ms: int = 50,
        on_drained: Callable[[], None] | None = None,
        reference: SpeakerReference | None = None,
        standby_after_s: float | None = None,
    ) -> None:
        self.device = device
        self.source_rate = source_rate
        self.on_drained = on_drained
        # Every block handed to the device goes here too, for the echo canceller.
        self.reference = reference
        self._prebuffer_ms = prebuffer_ms
        self._period_ms: float | None = (
            None if period_frames is None else period_frames * 1000 / output_rate
        )
        self._use_output_rate(output_rate)
        # The prebuffer absorbs network jitter, but must not hold a small first delta back
        # until more arrives: after this long, whatever is queued starts playing.
        self._prebuffer_wait_s = prebuffer_wait_ms / 1000
        self._prebuffer_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pa: Any = None
        self._stream: Any = None
        self._closed = False
        self._output_latency_s = 0.0
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_timer: asyncio.TimerHandle | None = None
        # Standby (see the module docstring): None = the stream runs from start() to close().
        self._standby_after_s = standby_after_s
        self._standby_timer: asyncio.TimerHandle | None = None
        self._in_standby = False  # the stream is stopped, or ending, on purpose
        self._underrun_warning = ThrottledWarning(
            log, f"playback on {device!r}: audio arrived too slowly, output ran dry mid-reply"
        )
        # Shared with the callback thread; guarded by _lock.
        self._lock = threading.Lock()
        self._segments: deque[_Segment] = deque()
        self._head_offset = 0  # bytes of _segments[0] already handed to the device
        self._queued_bytes = 0
        self._playing = False  # False: prebuffering (or idle), the callback plays silence
        self._held = False  # hold(): the callback plays silence, keeping what is queued
        self._end_passed = False  # an END mark was handed over since the queue last ran dry
        self._generation = 0  # bumped by every change from the loop; stale drains are dropped
        self._ending = False  # standby: the callback ends the stream at its next period...
        self._ended = False  # ...and says here that it did
        self._played_speech_bytes = 0
        self.underruns = 0
        """Times the queue ran dry in the middle of a reply (before its end_of_stream())."""

    # ----- lifecycle

    def start(self) -> None:
        """Open the device and start the (silent) stream, or with `standby_after_s` leave it
        in standby until the first sound. Raises AudioDeviceError."""
        if self._stream is not None:
            return
        if self._closed:
            raise RuntimeError("a closed Playback cannot be restarted; make a new one")
        self._loop = asyncio.get_running_loop()
        self._pa = create_pyaudio()
        try:
            index = find_device(self._pa, self.device, "output")
            native = playback_rate(self._pa, index, self.output_rate)
            if native != self.output_rate:
                log.info(
                    "output device %r does not take %d Hz without ALSA converting it: "
                    "playing at its %d Hz, resampled here",
                    self.device,
                    self.output_rate,
                    native,
                )
                self._use_output_rate(native)
            self._stream = self._pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=self.output_rate,
                output=True,
                output_device_index=index,
                frames_per_buffer=self.period_frames,
                stream_callback=self._fill,
                start=self._standby_after_s is None,
            )
            self._in_standby = self._standby_after_s is not None
            self._output_latency_s = float(self._stream.get_output_latency())
        except OSError as exc:
            self._release()
            raise device_error(exc, "output", self.device, self.output_rate) from exc
        except BaseException:
            self._release()
            raise
        log.info(
            "playback %s: output device %r at %d Hz",
            "ready (in standby until the first sound)" if self._in_standby else "started",
            self.device,
            self.output_rate,
        )

    def _use_output_rate(self, output_rate: int) -> None:
        # Before start() opens the stream, nothing is queued yet: all that depends on the rate.
        self.output_rate = output_rate
        # 20 ms by default: flush() silences output within this, at 50 callbacks a second.
        period_ms = 20 if self._period_ms is None else self._period_ms
        self.period_frames = round(output_rate * period_ms / 1000)
        if self.reference is not None:
            self.reference.rate = output_rate
        self._prebuffer_bytes = round(self._prebuffer_ms * output_rate / 1000) * BYTES_PER_SAMPLE
        self._resampler = Resampler(self.source_rate, output_rate)
        self._silence = bytes(self.period_frames * BYTES_PER_SAMPLE)
        self._coalesce_bytes = output_rate * _COALESCE_MS // 1000 * BYTES_PER_SAMPLE

    def close(self) -> None:
        """Stop the stream and release the device (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._cancel_drain_timer()
        self._cancel_prebuffer_timer()
        self._cancel_standby_timer()
        self._release()

    def _release(self) -> None:
        stream, self._stream = self._stream, None
        pa, self._pa = self._pa, None
        release(stream, pa, f"output device {self.device!r}")

    async def __aenter__(self) -> Playback:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ----- the event loop's side

    def write(self, pcm_source_rate: bytes) -> None:
        """Queue reply audio (PCM16 at source_rate); returns at once."""
        if len(pcm_source_rate) % BYTES_PER_SAMPLE:
            raise ValueError(f"PCM16 reply audio has an odd length ({len(pcm_source_rate)} bytes)")
        self._raise_if_unhealthy()
        if self._resampler.is_identity:
            self._enqueue(_Segment(pcm_source_rate, _Kind.SPEECH))
            return
        for start in range(0, len(pcm_source_rate), _RESAMPLE_SLICE_BYTES):
            piece = pcm_source_rate[start : start + _RESAMPLE_SLICE_BYTES]
            self._enqueue(_Segment(self._resampler.process(piece), _Kind.SPEECH))

    def end_of_stream(self) -> None:
        """The reply has no more audio: play what is queued now, however little it is."""
        self._raise_if_unhealthy()
        tail = self._resampler.flush()
        if tail:
            self._enqueue(_Segment(tail, _Kind.SPEECH))
        self._enqueue(_END_MARK)

    def play_chime(self, pcm_source_rate: bytes) -> None:
        """Queue a chime (PCM16 at source_rate, see chimes.chime()); it plays at once."""
        if len(pcm_source_rate) % BYTES_PER_SAMPLE:
            raise ValueError(f"PCM16 chime has an odd length ({len(pcm_source_rate)} bytes)")
        self._raise_if_unhealthy()
        pcm = pcm_source_rate
        if self.source_rate != self.output_rate:
            # A resampler of its own: the reply's may be in the middle of a delta.
            resampler = Resampler(self.source_rate, self.output_rate)
            pcm = resampler.process(pcm) + resampler.flush()
        self._enqueue(_Segment(pcm, _Kind.CHIME))

    def _enqueue(self, segment: _Segment) -> None:
        self._leave_standby()
        self._cancel_drain_timer()
        self._idle.clear()
        with self._lock:
            self._generation += 1
            self._append(segment)
            self._queued_bytes += len(segment.pcm)
            # Reply audio waits for the prebuffer; a chime or an end mark starts everything.
            if segment.kind is not _Kind.SPEECH or self._queued_bytes >= self._prebuffer_bytes:
                self._playing = True
            waiting = not self._playing
        if not waiting:
            self._cancel_prebuffer_timer()
        elif self._prebuffer_timer is None and self._loop is not None:
            self._prebuffer_timer = self._loop.call_later(
                self._prebuffer_wait_s, self._end_prebuffer_wait
            )

    def _append(self, segment: _Segment) -> None:
        # Holding the lock. Small reply audio joins the last piece if that is reply audio
        # still below the coalescing size; otherwise it starts a piece that may grow.
        segments = self._segments
        if segment.kind is _Kind.SPEECH and len(segment.pcm) < self._coalesce_bytes:
            last = segments[-1] if segments else None
            if (
                last is not None
                and isinstance(last.pcm, bytearray)
                and len(last.pcm) < self._coalesce_bytes
            ):
                last.pcm.extend(segment.pcm)
            else:
                segments.append(_Segment(bytearray(segment.pcm), _Kind.SPEECH))
            return
        segments.append(segment)

    def _end_prebuffer_wait(self) -> None:
        self._prebuffer_timer = None
        with self._lock:
            if self._segments:
                self._playing = True

    def _cancel_prebuffer_timer(self) -> None:
        if self._prebuffer_timer is not None:
            self._prebuffer_timer.cancel()
            self._prebuffer_timer = None

    def flush(self) -> None:
        """Drop everything queued; the device goes silent within one period. Returns at once."""
        self._cancel_drain_timer()
        self._cancel_prebuffer_timer()
        self._resampler.reset()
        with self._lock:
            self._generation += 1
            self._segments.clear()
            self._head_offset = 0
            self._queued_bytes = 0
            self._playing = False
            self._held = False
            self._end_passed = False
        self._idle.set()
        self._schedule_standby()

    def hold(self) -> None:
        """Pause: the device plays silence from its next period on; what is queued stays."""
        with self._lock:
            self._held = True

    def resume(self) -> None:
        """Play on from where hold() paused."""
        with self._lock:
            self._held = False

    async def wait_drained(self) -> None:
        """Return once everything written has been played (or flushed).

        Raises AudioDeviceError if the device has failed or playback is closed, before or
        while waiting.
        """
        self._raise_if_unhealthy()
        while not self._idle.is_set():
            try:
                async with asyncio.timeout(_HEALTH_POLL_S):
                    await self._idle.wait()
            except TimeoutError:
                self._raise_if_unhealthy()

    @property
    def played_samples(self) -> int:
        """Reply audio handed to the device since reset_count(), in source-rate samples."""
        with self._lock:
            played_frames = self._played_speech_bytes // BYTES_PER_SAMPLE
        # Integer arithmetic on the running total: exact for integer ratios, never drifting.
        return played_frames * self.source_rate // self.output_rate

    def reset_count(self) -> None:
        """Start counting played_samples afresh (call when a new assistant item starts)."""
        with self._lock:
            self._played_speech_bytes = 0

    @property
    def output_latency_s(self) -> float:
        """The output latency PortAudio reported when the stream opened (0 before that)."""
        return self._output_latency_s

    @property
    def is_playing(self) -> bool:
        """True while queued audio is being handed to the device (not prebuffering, not idle)."""
        with self._lock:
            return self._playing

    def _raise_if_unhealthy(self) -> None:
        if self._closed or self._stream is None:
            raise AudioDeviceError(f"playback on output device {self.device!r} is not running")
        # In standby the stream is stopped on purpose; whether the device still works is
        # known when the next sound starts it (_leave_standby).
        if not self._in_standby and not self._stream.is_active():
            raise AudioDeviceError(
                f"output device {self.device!r} stopped taking audio (unplugged or failed?)"
            )

    def _cancel_drain_timer(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _on_ran_dry(self, generation: int, reply_ended: bool, underrun: bool) -> None:
        # Called on the loop when the callback emptied the queue; the audio still has the
        # output latency to travel, so the drain is announced that much later.
        if underrun:
            self._underrun_warning.note(self.underruns)
        if generation != self._generation or self._closed:
            return
        assert self._loop is not None
        self._cancel_drain_timer()
        self._drain_timer = self._loop.call_later(
            self._output_latency_s, self._finish_drain, generation, reply_ended
        )

    def _finish_drain(self, generation: int, reply_ended: bool) -> None:
        self._drain_timer = None
        if generation != self._generation or self._closed:
            return
        self._idle.set()
        self._schedule_standby()
        if reply_ended and self.on_drained is not None:
            self.on_drained()

    # ----- standby

    def _schedule_standby(self) -> None:
        # Called whenever the queue has gone idle (drained or flushed): the count starts now.
        if self._standby_after_s is None or self._in_standby or self._closed:
            return
        if self._loop is None:  # flushed before start(): the stream is not open yet
            return
        self._cancel_standby_timer()
        self._standby_timer = self._loop.call_later(self._standby_after_s, self._stand_by)

    def _cancel_standby_timer(self) -> None:
        if self._standby_timer is not None:
            self._standby_timer.cancel()
            self._standby_timer = None

    def _stand_by(self) -> None:
        # The callback ends the stream itself (paComplete) at its next period: stop_stream()
        # on a running stream blocked the event loop for 62-79 ms on ALSA's file plugin
        # (abort_stream 61-71 ms), waiting for the callback thread to leave its device write;
        # ended from inside, it winds down on PortAudio's thread (~70 ms, the loop not
        # waiting), and the stop_stream() before the next start takes 0.01 ms.
        self._standby_timer = None
        if self._closed or self._in_standby or not self._idle.is_set():
            return
        with self._lock:
            if self._segments:
                return
            self._ending = True
        self._in_standby = True
        log.debug("playback on %r: nothing played for %g s, standing by",
                  self.device, self._standby_after_s)

    def _leave_standby(self) -> None:
        """Start the stream for a sound queued in standby. Raises AudioDeviceError."""
        self._cancel_standby_timer()
        if not self._in_standby:
            return
        assert self._stream is not None  # the callers checked _raise_if_unhealthy()
        with self._lock:
            self._ending = False
            ended, self._ended = self._ended, False
        try:
            if ended:
                # Marks it stopped (waiting out its last periods if it ended only just now).
                self._stream.stop_stream()
                self._stream.start_stream()
            elif self._stream.is_stopped():  # never started: opened in standby
                self._stream.start_stream()
            # else it was still running: the callback never saw `_ending`, and now never will.
        except OSError as exc:
            raise AudioDeviceError(
                f"output device {self.device!r} could not start playing (unplugged or "
                f"failed?): {describe_os_error(exc)}; check audio.output_device "
                "(see `talkbox devices`)"
            ) from exc
        self._in_standby = False
        self._raise_if_unhealthy()  # one that failed as it was ending is found here
        log.debug("playback on %r: started for a sound", self.device)

    # ----- PortAudio's callback thread

    def _fill(
        self, in_data: bytes | None, frame_count: int, time_info: Any, status_flags: int
    ) -> tuple[bytes, int]:
        wanted = frame_count * BYTES_PER_SAMPLE
        pieces: list[bytes | bytearray] = []
        got = reply_got = 0
        ran_dry = reply_ended = underrun = False
        generation = 0
        with self._lock:
            ending = self._ending
            if ending:
                self._ended = True
            if self._playing and not self._held:
                segments = self._segments
                last_kind = _Kind.END
                # END marks right after the last byte handed over are passed now, too.
                while segments and (got < wanted or segments[0].kind is _Kind.END):
                    pcm, kind = segments[0]
                    start = self._head_offset
                    take = pcm[start : start + wanted - got]  # a copy of at most one period
                    if start + len(take) == len(pcm):
                        segments.popleft()
                        self._head_offset = 0
                    else:
                        self._head_offset = start + len(take)
                    pieces.append(take)
                    got += len(take)
                    last_kind = kind
                    if kind is _Kind.SPEECH:
                        self._played_speech_bytes += len(take)
                        reply_got += len(take)
                    elif kind is _Kind.END:
                        self._end_passed = True
                self._queued_bytes -= got
                if not segments:
                    ran_dry = True
                    self._playing = False
                    reply_ended = self._end_passed
                    self._end_passed = False
                    underrun = last_kind is _Kind.SPEECH
                    if underrun:
                        self.underruns += 1
                    generation = self._generation
        if got < wanted:
            pieces.append(
                self._silence[: wanted - got]
                if wanted - got <= len(self._silence)
                else bytes(wanted - got)
            )
        block = b"".join(pieces)
        if self.reference is not None:
            # Heard once it has crossed the device's buffer: that is when its echo begins.
            # Only a sound makes an echo (a reply may start with silence): count(0) runs in C.
            audible = got > 0 and block.count(0) < len(block)
            self.reference.played(block, time.monotonic() + self._output_latency_s, audible,
                                  reply=reply_got > 0)
        if ran_dry and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._on_ran_dry, generation, reply_ended, underrun)
            except RuntimeError:  # the loop is closed: the daemon is going away
                return block, pyaudio.paAbort
        # Standing by: nothing is queued (a sound queued meanwhile clears `_ending` first).
        return block, pyaudio.paComplete if ending else pyaudio.paContinue
