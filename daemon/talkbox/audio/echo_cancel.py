"""Echo cancellation: take what the speaker plays out of what the microphone hears.

This module owns the two ends of the echo path and, between them, WebRTC's audio processing
as a WebRTC call runs it: AEC3, then the noise suppressor (which takes most of what AEC3 leaves):

- `SpeakerReference` is filled from PortAudio's output callback (audio/playback.py) with every
  block handed to the device, stamped with when it reaches the DAC (now + the stream's output
  latency). That is the reference AEC3 needs: what was really played, when it was played.
  Taken any later (say, when the event loop queues a reply), it arrived after its echo, and
  AEC3 stops converging when the reference is even 30 ms late (measured: 28 dB of echo
  reduction at 5-10 ms late, 9 dB at 30 ms, 3 dB at 60 ms).
- `EchoCanceller.process()` takes each captured chunk with the time its first sample was at
  the ADC (audio/capture.py), cuts the reference for that stretch of time out of what the
  speaker played, `REFERENCE_LEAD_MS` later, so it always leads its echo despite errors in
  the latencies the devices report (AEC3 finds the rest of the delay itself, from a few ms to
  about 500 ms; with the echo at the same instant as its reference it removed 3 dB), and
  returns the cleaned chunk. Everything downstream (VAD, wake word, upload) hears only that.
  The reference of that later stretch is already known: it was handed to the device an
  output latency before it is heard, and the chunk reaches us an input latency after.

Two clocks: a USB microphone and a separate speaker drift apart by up to a few hundred ppm.
The reference is read as one continuous stream (a jump would look to AEC3 like a new room),
and its read position is steered towards where the timestamps say it should be by at most one
sample per chunk: 25 samples a second against the 1.6 a second that 100 ppm at 16 kHz needs.
Only an error beyond `_RESYNC_S` (a stall, a device reopened) makes it jump. The stamps
themselves are taken in the callbacks and jitter by milliseconds; each side's are smoothed by
a `_StreamClock` that runs all the time (a few additions per block), so a reply that starts
after a silence is placed by the clock, not by the one stamp of its first block.

Idle costs nothing: AEC3 runs from the speaker's first sound until `STAY_ON_S` after its last
(its echo is over `ECHO_TAIL_S` after it); otherwise the chunk passes through untouched and the
reference blocks, all silence, are dropped unread. It stays on that long so that the next
answer of a conversation continues the same two streams, paired sample for sample as before.
Restarted for every answer, the pairing came from that moment's smoothed stamps, a few samples
off the last one, and AEC3 let the echo of the answer's first second through while it re-learnt
the room: in the simulated living room with 3 ms of jitter on the stamps, one false barge-in a
minute and 23 dB of echo reduction instead of none and 45 dB (python -m bench.echo_room).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pywebrtc_audio

from talkbox.audio.near_end import NearEndDetector, sounding
from talkbox.audio.resample import PromptResampler
from talkbox.audio_format import BYTES_PER_SAMPLE

log = logging.getLogger(__name__)

# The capture at time t is paired with what the speaker played at t + this: the reference
# leads its echo by this much plus the acoustic delay. AEC3 removed 58-74 dB of echo 5-500 ms
# behind its reference, 3 dB at 0 ms and 9 dB with the reference 30 ms late.
REFERENCE_LEAD_MS = 20
# How long after the last sound its echo may still be heard: the echo path's delay (up to
# ~300 ms in a room, plus the lead) and the room's reverberation (RT60 up to ~0.6 s).
ECHO_TAIL_S = 1.2
# How long after the last sound AEC3 keeps running (on silence): longer than the pause between
# two answers of one conversation (the person's turn and the service's reply).
STAY_ON_S = 10.0
# A new canceller has not learnt the room: for its first seconds of echo, what it leaves is
# louder (the front end asks more of a voice meanwhile: frontend.FINDING_ECHO_FLOOR_DBFS,
# WARMING_UP_FLOOR_DBFS, WARMING_UP_START).
WARM_UP_S = 6.0
# ...counted only while the speaker sounds (near_end.sounding): the chime's tail,
# the person's request after it and the silence an answer may begin with teach AEC3 nothing
# about the room. In the simulated hall (bench.barge_in_live, a new daemon's first answer),
# what AEC3 left of the echo 2-3 s into it, at -35 to -43 dBFS, interrupted the answer in 3
# of 15 runs when 3 s of chunks near a sound made the warm-up, in 1 of 6 after 3 s of sound;
# after 6 s of sound, in none of 24 runs between 1 and 6 s into the answer.
# ...and for its first 1.5 s of sound it has not found the echo yet and lets it through
# nearly whole, as loud as a person (-22 to -33 dBFS at the start of a new daemon's first
# answer, kitchen-drift and the hall): the front end asks for a louder voice meanwhile.
FINDING_ECHO_S = 1.5
# ...or longer, until it takes this much of the echo out over FOUND_JUDGED_S of sound (from
# FINDING_ECHO_S on: before that AEC3 may mute everything while it searches), within its
# warm-up: after the microphone had restarted just before a new daemon's first answer, its
# clock's first estimate moved the reference by 6 ms in 2 s, and AEC3 let the echo through
# at -23 to -30 dBFS 1.7 s in (living-room), with the person not yet talking.
FOUND_ECHO_REDUCTION_DB = 15.0
FOUND_JUDGED_S = 0.4
# The near-end detector's filter learns from a chunk only if AEC3's output was below this
# (-55 dBFS: cleaned echo alone is at -70 to -80, a person AEC3 lets through far above).
_NEAR_END_ECHO_LEFT_SQUARES = 32768.0**2 * 10 ** (-55 / 10)
# Reference history kept: the lead plus AEC3's longest delay, with room to spare.
_HISTORY_S = 2.0
# Larger timing errors are a stall or a reopened device, not drift: start the stream afresh.
_RESYNC_S = 0.1
# Drift steering: the timestamps' jitter is smoothed, and a smoothed error below this is noise.
_STEER_DEADBAND_S = 0.002
_STEER_SMOOTHING = 0.05
# At most this many reference blocks wait between two captured chunks (about 2 s of 20 ms
# periods): a stalled microphone must not let the speaker's blocks pile up.
_MAX_PENDING_BLOCKS = 100


class SpeakerReference:
    """What the speaker played, handed from PortAudio's output thread to the capture side.

    `played()` is called by the output callback with each block as handed to the device;
    `take()` by the canceller on the event loop. One lock, held only to append or swap.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blocks: deque[tuple[float, bytes, bool, bool]] = deque(maxlen=_MAX_PENDING_BLOCKS)
        self.rate = 0
        """The output device's rate (set by the playback that feeds this reference)."""

    def played(self, pcm: bytes, dac_time: float, audible: bool, reply: bool = False) -> None:
        """A block handed to the device: heard from `dac_time` (time.monotonic()) on.

        `audible` is False for the silence the stream plays between sounds; `reply` is True
        if the block holds the assistant's answer (not a chime)."""
        with self._lock:
            self._blocks.append((dac_time, pcm, audible, reply))

    def take(self) -> list[tuple[float, bytes, bool, bool]]:
        with self._lock:
            blocks = list(self._blocks)
            self._blocks.clear()
        return blocks


# How much of each stamp's error a stream clock takes in: 0.2 % a block, so callbacks that
# jitter by ms move it by tens of microseconds, and 100 ppm of drift lags by about 2 ms (a
# steady lag, which AEC3 takes as part of the delay). At 1 %, with 3 ms of jitter on the
# stamps, the simulated living room kept 41 dB of echo reduction instead of 47, and heard a
# person at the 95th percentile after 831 ms instead of 253 (bench.echo_room, 90 s a room).
_CLOCK_SMOOTHING = 0.002
# A stream whose stamps all come at least this much later than its clock expects, for this
# many blocks in a row, lost that much time: the device ran dry (an underrun, or the process
# stalled) and played or captured nothing meanwhile, then went on. Its clock steps, and the
# canceller puts the gap into the reference (speaker) or skips it (microphone), so that the
# reference stays where the echo is. Smoothed away instead, as jitter, a 61 ms stall of the
# whole process left the reference that far behind the echo for the rest of the answer: its
# newest part was not there when the microphone's chunk needed it, zeros went in, and the
# answer interrupted itself six times in 40 s (bench.barge_in_live, kitchen-drift).
_GAP_S = 0.010
_GAP_BLOCKS = 4
# ...once the clock has settled (its first stamps are averaged, and can be far off).
_GAP_AFTER_BLOCKS = 50


class _StreamClock:
    """When the samples of a periodic stream happen, from jittery stamps of its blocks: each
    block follows the last one, nudged towards its stamp (a delay-locked loop)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.next: float | None = None  # when the next block's first sample happens
        self._blocks = 0  # since the clock (re)started
        self._late: list[float] = []  # how late the latest blocks came, while all were late
        self.lost_s = 0.0
        """The time the stream lost just before its last `_GAP_BLOCKS` blocks, if the last
        `place()` found that (0 otherwise): those blocks, that one included, happen that much
        later than the clock had placed the ones before."""

    def place(self, stamp: float, samples: int) -> tuple[float, bool]:
        """(the smoothed time of a block of `samples` stamped `stamp`, whether it jumped)."""
        jumped = self.next is None or abs(stamp - self.next) > _RESYNC_S
        self.lost_s = 0.0
        if jumped or self.next is None:
            self.next = stamp
            self._blocks = 1
            self._late.clear()
        else:
            self._blocks += 1
            self._find_gap(stamp - self.next)
            # The mean of the stamps so far at first (a stream's first stamps can be far off:
            # a backlog handed over at once), then a slow loop that follows drift.
            weight = max(_CLOCK_SMOOTHING, 1 / self._blocks)
            self.next += weight * (stamp - self.next)
        at = self.next
        self.next += samples / self.rate
        return at, jumped

    def _find_gap(self, late_s: float) -> None:
        if late_s < _GAP_S or self._blocks <= _GAP_AFTER_BLOCKS:
            self._late.clear()
            return
        self._late.append(late_s)
        if len(self._late) < _GAP_BLOCKS:
            return
        # The least late of them is the gap: a late callback only ever adds to it.
        self.lost_s = min(self._late)
        self._late.clear()
        assert self.next is not None
        self.next += self.lost_s


@dataclass
class EchoStats:
    """What the canceller has done, for the log, `talkbox echo-test` and the benchmark."""

    chunks_cleaned: int = 0
    chunks_passed: int = 0
    short_reference_samples: int = 0
    """Reference samples not yet played when their capture was cleaned (zeros went in)."""
    resyncs: int = 0
    steered_samples: int = 0
    gaps: int = 0
    """Stretches the speaker or the microphone lost (underruns, stalls): see _GAP_S."""
    echo_s: float = 0.0
    """Seconds of the speaker sounding that AEC3 has learnt the room from (WARM_UP_S)."""


class EchoCanceller:
    """AEC3 over the capture stream at `capture_rate`, fed by a `SpeakerReference`.

    Not thread-safe: call `process()` from one thread (the event loop).
    """

    def __init__(self, reference: SpeakerReference, capture_rate: int) -> None:
        self.reference = reference
        self.capture_rate = capture_rate
        self.stats = EchoStats()
        # AEC3, then WebRTC's noise suppressor (its mildest level, 6 dB), as a WebRTC call
        # runs them: what AEC3 leaves of the echo is noise-like, and the suppressor takes most
        # of it. In the simulated rooms (bench.echo_room) it cut false barge-ins from 2 to 0
        # in 12 minutes of echo and the 95th percentile of detection from 456 to 278 ms.
        self._aec = pywebrtc_audio.AudioProcessor(
            sample_rate=capture_rate,
            echo_cancellation=True,
            noise_suppression=True,
            ns_level=1,
        )
        self._resampler: PromptResampler | None = None
        self._speaker_clock: _StreamClock | None = None
        self._microphone_clock = _StreamClock(capture_rate)
        # The reference at the capture rate: samples from `_start_time` on (DAC time).
        self._history = np.zeros(0, dtype=np.int16)
        # Samples of the last blocks appended, for a gap found after them (_insert_silence).
        self._appended: deque[int] = deque(maxlen=_GAP_BLOCKS - 1)
        self._streaming = False  # _history is being filled, from _start_time on
        self._start_time = 0.0
        self._read_at: int | None = None  # index into _history of the next chunk's reference
        self._smoothed_error = 0.0
        self._sound_ended = -math.inf  # DAC time when the last sound handed over ends
        self._reply_ended = -math.inf  # ...and the last block of an answer
        # Energy of the microphone and of what AEC3 left over the sound being judged, until it
        # has found the echo (FOUND_ECHO_REDUCTION_DB).
        self._raw_energy = self._left_energy = self._judged_s = 0.0
        self._found_echo = False
        self.last_chunk_cleaned = False
        """Whether the last chunk went through AEC3."""
        self.last_chunk_may_echo = False
        """Whether the last chunk may hold echo (the speaker was playing, or its tail)."""
        self.last_chunk_may_echo_reply = False
        """Whether that echo may be the answer's (not only a chime's)."""
        self.last_cleaned = b""
        """The last chunk AEC3 returned (for `talkbox echo-test` and the benchmark)."""
        self.near_end = NearEndDetector(capture_rate)
        """Double talk from the raw microphone and a linear echo filter of its own
        (audio/near_end.py), fed the same chunks and reference as AEC3."""
        self.last_chunk_near_end = False
        """Whether the near-end detector heard a person over the echo in the last chunk."""
        self.last_chunk_leaked = False
        """Whether AEC3 let echo through in the last chunk (see near_end.LEAK_MARGIN_DB)."""

    @property
    def warming_up(self) -> bool:
        """Whether AEC3 has not yet had `WARM_UP_S` of sound to learn the room from."""
        return self.stats.echo_s < WARM_UP_S

    @property
    def finding_the_echo(self) -> bool:
        """Whether AEC3 has not found the echo yet, and lets it through: it has had less than
        `FINDING_ECHO_S` of sound, or has not yet taken FOUND_ECHO_REDUCTION_DB out of it
        over FOUND_JUDGED_S of sound since (within its warm-up)."""
        return not self._found_echo and self.warming_up

    def process(self, captured: bytes, capture_time: float) -> bytes:
        """The chunk with the speaker's echo taken out (unchanged when nothing was played).

        `captured` is PCM16 mono at `capture_rate`; `capture_time` is the time.monotonic() at
        which its first sample was at the ADC."""
        self._take_reference()
        n = len(captured) // BYTES_PER_SAMPLE
        capture_time, _ = self._microphone_clock.place(capture_time, n)
        if self._microphone_clock.lost_s:
            self.stats.gaps += 1
            if self._read_at is not None:  # nothing was captured meanwhile: skip its reference
                self._read_at += round(self._microphone_clock.lost_s * self.capture_rate)
        self.last_chunk_may_echo = n > 0 and capture_time < self._sound_ended + ECHO_TAIL_S
        self.last_chunk_may_echo_reply = (
            self.last_chunk_may_echo and capture_time < self._reply_ended + ECHO_TAIL_S
        )
        self.last_chunk_cleaned = n > 0 and capture_time < self._sound_ended + STAY_ON_S
        if not self.last_chunk_cleaned:
            if self._read_at is not None:
                log.debug("echo canceller resting: %s", self.stats)
            self.stats.chunks_passed += 1
            self._forget_reference()
            self.last_chunk_near_end = self.last_chunk_leaked = False
            return captured
        far = self._reference_for(capture_time + REFERENCE_LEAD_MS / 1000, n)
        near = np.frombuffer(captured, dtype=np.int16, count=n)
        cleaned: npt.NDArray[np.int16] = self._aec.process(near, far)
        self.last_chunk_near_end = self._detect_near_end(near, far, cleaned)
        self.stats.chunks_cleaned += 1
        if sounding(far):
            finding, warming_up = self.finding_the_echo, self.warming_up
            self.stats.echo_s += n / self.capture_rate
            # (Only within the warm-up: after it, finding_the_echo is false whatever AEC3 does.)
            if self.finding_the_echo and self.stats.echo_s > FINDING_ECHO_S:
                self._judge_echo_reduction(near, cleaned)
            if finding != self.finding_the_echo or warming_up != self.warming_up:
                log.debug("echo canceller: %s after %.1f s of sound",
                          "warmed up" if not self.warming_up else "found the echo",
                          self.stats.echo_s)
        self.last_cleaned = cleaned.astype("<i2", copy=False).tobytes()
        return self.last_cleaned + captured[n * BYTES_PER_SAMPLE :]

    def _judge_echo_reduction(
        self, near: npt.NDArray[np.int16], cleaned: npt.NDArray[np.int16]
    ) -> None:
        """How much of the echo AEC3 takes out, FOUND_JUDGED_S of sound at a time, until it
        has found it (for good: a person talking over the answer later is not the echo)."""
        raw, left = near.astype(np.float64), cleaned.astype(np.float64)
        self._raw_energy += float(np.dot(raw, raw))
        self._left_energy += float(np.dot(left, left))
        self._judged_s += len(near) / self.capture_rate
        if self._judged_s < FOUND_JUDGED_S:
            return
        ratio = 10 ** (FOUND_ECHO_REDUCTION_DB / 10)
        self._found_echo = self._raw_energy >= self._left_energy * ratio
        self._raw_energy = self._left_energy = self._judged_s = 0.0

    def _detect_near_end(
        self, near: npt.NDArray[np.int16], far: npt.NDArray[np.int16],
        cleaned: npt.NDArray[np.int16],
    ) -> bool:
        """Double talk, judged beside AEC3 rather than from what its suppressor let through."""
        left = float(np.mean(cleaned.astype(np.float64) ** 2)) if len(cleaned) else 0.0
        echo_left = left < _NEAR_END_ECHO_LEFT_SQUARES
        present = self.near_end.feed(near, far, cleaned, echo_left=echo_left)
        self.last_chunk_leaked = self.near_end.leaked
        return present

    # --- the reference stream -----------------------------------------------------------------

    def _take_reference(self) -> None:
        rate = self.reference.rate
        for dac_time, pcm, audible, reply in self.reference.take():
            if self._speaker_clock is None or self._speaker_clock.rate != rate:
                self._speaker_clock = _StreamClock(rate)
                # Not soxr: it holds back up to 37 ms, and the chunk's reference then ended
                # in zeros (see PromptResampler).
                self._resampler = PromptResampler(rate, self.capture_rate)
                self._forget_reference()
            samples = len(pcm) // BYTES_PER_SAMPLE
            dac_time, jumped = self._speaker_clock.place(dac_time, samples)
            if jumped:  # a gap in what the speaker was handed (a stall, a reopened device)
                self._forget_reference()
            elif self._speaker_clock.lost_s:
                self._insert_silence(self._speaker_clock.lost_s)
            if audible:
                self._sound_ended = max(self._sound_ended, dac_time + samples / rate)
                if reply:
                    self._reply_ended = max(self._reply_ended, dac_time + samples / rate)
            elif dac_time >= self._sound_ended + STAY_ON_S and self._read_at is None:
                continue  # silence while nothing needs cancelling: not worth resampling
            self._append_reference(dac_time, pcm)

    def _append_reference(self, dac_time: float, pcm: bytes) -> None:
        assert self._resampler is not None
        if not self._streaming:
            # The resampler's output starts at its input's first sample: the history's first
            # sample is this block's.
            self._streaming = True
            self._resampler.reset()
            self._start_time = dac_time
            self.stats.resyncs += 1
        samples = np.frombuffer(self._resampler.process(pcm), dtype=np.int16)
        self._history = np.concatenate((self._history, samples))
        self._appended.append(len(samples))
        keep = int(_HISTORY_S * self.capture_rate)
        excess = len(self._history) - keep
        if excess > 0:
            self._history = self._history[excess:]
            self._start_time += excess / self.capture_rate
            if self._read_at is not None:
                self._read_at = max(0, self._read_at - excess)

    def _insert_silence(self, seconds: float) -> None:
        """The speaker played nothing for `seconds` before the blocks appended since the
        clock began to find them late (`_StreamClock.lost_s`)."""
        self.stats.gaps += 1
        if not self._streaming:
            return
        at = len(self._history) - sum(self._appended)
        if self._read_at is not None:
            at = max(at, self._read_at)  # what the microphone's chunks took is past
        silence = np.zeros(round(seconds * self.capture_rate), dtype=np.int16)
        self._history = np.concatenate((self._history[:at], silence, self._history[at:]))

    def _forget_reference(self) -> None:
        if not self._streaming and self._read_at is None:
            return  # idle: every chunk passes through here, and there is nothing to forget
        self._streaming = False
        self._history = np.zeros(0, dtype=np.int16)
        self._appended.clear()
        self._read_at = None
        self._smoothed_error = 0.0

    def _reference_for(self, start_time: float, n: int) -> npt.NDArray[np.int16]:
        """`n` reference samples from `start_time` on, continuing the last chunk's read."""
        rate = self.capture_rate
        ideal = round((start_time - self._start_time) * rate)
        if self._read_at is None or abs(ideal - self._read_at) > _RESYNC_S * rate:
            self._read_at = ideal
            self._smoothed_error = 0.0
        else:
            error = (ideal - self._read_at) / rate
            self._smoothed_error += _STEER_SMOOTHING * (error - self._smoothed_error)
            if abs(self._smoothed_error) > _STEER_DEADBAND_S:
                step = 1 if self._smoothed_error > 0 else -1
                self._read_at += step
                self._smoothed_error -= step / rate
                self.stats.steered_samples += 1
        at = self._read_at
        self._read_at = at + n
        far = np.zeros(n, dtype=np.int16)
        lo, hi = max(at, 0), min(at + n, len(self._history))
        if hi > lo:
            far[lo - at : hi - at] = self._history[lo:hi]
        self.stats.short_reference_samples += max(0, at + n - max(hi, lo))
        return far
