"""The capture front end's signal processing: one mic stream in, speech and wake events out.

This module owns what happens to captured audio before anything else sees it: taking the
speaker's echo out of it (`EchoCanceller`, while the speaker plays), resampling
the native-rate capture to 16 kHz (VAD and wake word) and 24 kHz (upload) with stateful soxr
streams, slicing both into time-aligned frames, running the VAD on each 16 kHz frame, and
feeding the decisions to the speech gate (with the 24 kHz frame of 40 ms earlier) and to
the gated wake-word detector. It is pure computation with no device I/O: hand it bytes in
any chunk size (`process`) and it returns events in audio-time order, so tests and the
benchmark drive it with files, and the daemon, on its front-end thread
(`front_end_thread.py`), with each captured buffer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from talkbox.audio.echo_cancel import EchoCanceller
from talkbox.audio.resample import Resampler
from talkbox.audio.vad import (
    GateEvent,
    GateSpeechLikely,
    GateSpeechStarted,
    SpeechGate,
    VoiceActivity,
)
from talkbox.audio.wake import GatedWakeDetector
from talkbox.audio_format import LISTEN_RATE

UPLOAD_RATE = 24000  # the Realtime API's pcm16 input rate

# The gate applies each VAD decision to the upload audio of two frames (40 ms) earlier.
# soxr hands out its 24 kHz output in blocks, up to 37 ms behind the 16 kHz stream (8 kHz
# input: 59 ms). Pairing same-instant frames made the frame that completes a turn's silence
# wait for the next capture buffer (+20 ms median commit latency). Shifted, a turn's upload
# starts and ends 40 ms sooner: inside its pre-roll and its trailing silence, so no speech
# is lost, and `build_front_end` takes the 40 ms off the pre-roll it asks the gate for.
UPLOAD_LAG_FRAMES = 2

# While the speaker plays, a voiced frame counts only if the cleaned signal is at least this
# loud: what is left of the echo is quiet, but webrtcvad still calls much of it speech...
ECHO_SPEECH_FLOOR_DBFS = -45.0
# ...and a turn opens on 4 such frames of the last 10 (80 ms of voice within 200 ms), not 3
# of 5: residual echo comes in short bursts, and in a room whose echo is louder than the
# person AEC3 lets a person's voice through in bursts too (double talk), so the frames need
# not be consecutive. Chosen in simulated rooms (python -m bench.echo_room; 12 minutes of
# answers in four rooms, 80 interruptions, with the noise suppressor): to hear a person at
# the 95th percentile, 3 of 8 took 245 ms but interrupted itself twice; 4 of 8 took 338 ms
# and 4 of 10 278 ms, neither interrupting itself. (Without the suppressor, 6 of 8 took
# 637 ms and still interrupted itself.)
OVER_ECHO_START = (4, 10)
# ...and while a new canceller is still learning the room (its first seconds of sound after
# the daemon starts: echo_cancel.WARM_UP_S), what it leaves of the answer's echo comes in
# louder bursts: in the hall, -35 to -43 dBFS 2-3 s into a new daemon's first answer, up to
# six frames in a row (bench.barge_in_live, 1.7 and 3.2 s into new daemons' first answers).
# Over it only frames this loud count, 4 of 10 as always; a person talking over it came
# through at -22 to -37. (6 of 10 at -45 dBFS let those frames open a turn in 4 of 31 of the
# hall's first answers, and heard a person no sooner: 20 runs of four rooms' first answers.
# All 6 s at -35 dBFS lost living-room's first request in 2 of 5 runs.)
WARMING_UP_FLOOR_DBFS = -38.0
# ...over a chime's echo meanwhile, 6 of 10 at the usual floor: the request after the wake
# chime goes on, a chime's leak does not.
WARMING_UP_START = (6, 10)
# ...but before that, while it has not even found the echo (echo_cancel.FINDING_ECHO_S), the
# echo comes through continuous and as loud as a person: only frames this loud count (a
# person's request after the wake chime is, over the chime's echo), and over the answer's
# echo none do. (The first 0.3-0.8 s of a new daemon's first answer came through at -22 to
# -37 dBFS and interrupted it in 4 of about 80 runs of bench.barge_in_live; deaf over it, in
# none of 60. Deaf over the chime as well, the daemon lost the request said after it.)
FINDING_ECHO_FLOOR_DBFS = -35.0
# ...and its pre-roll reaches back this far before the first voiced frame (not
# [turn] prefix_padding_ms): in double talk AEC3 dulls a person's first syllables, and a
# turn that opened 0.7 s after they began talking lost the first 12-18 % of the request
# (python -m bench.barge_in_live). Cleaned echo before the request costs nothing.
OVER_ECHO_PADDING_MS = 1000
# ...and while the canceller's double-talk detector (audio/near_end.py) hears someone over
# the echo, and this many frames after, the answer pauses (a turn is likely), even if AEC3's
# suppressor muted them; once the echo is gone, AEC3 lets them through and the turn opens.
# No turn opens on the detector's word alone: when it went wrong (the whole process, the
# hall, 52 s into an answer), it heard a person at the start of every answer after, 23 times
# in 45 s, and never learnt again, for each answer stopped before its filter could adapt. In
# the simulated hall (bench.echo_room, 240 s a seed) pausing instead of opening was about
# even on time to silence: p95 501 -> 428 ms on two seeds, 317 / 800 / 330 -> 437 / 800 /
# 368 on three more; no pause for nobody added.
NEAR_END_HOLD_FRAMES = 5
# ...but where AEC3 let the echo through (its output louder than what the detector's linear
# filter leaves), a frame over echo does not count as voiced, from then until this many frames
# after: that is echo, not a person.
LEAK_HOLD_FRAMES = 6
# To pause the answer, a frame over echo that the VAD calls voiced counts even below the
# floor (SpeechGate.feed's `maybe_speech`: a short first word often has only two frames above
# it before AEC3 mutes the rest), while the VAD calls at most this share of the frames over
# echo voiced (averaged over about a minute of echo: ECHO_VOICED_SMOOTHING a frame). In the
# simulated rooms (bench.echo_room, 300 s of echo alone) the VAD called 10 % of the hall's
# cleaned echo voiced and 0-0.3 % of the others'; a person talking over the answer every 6 s
# adds about 3 % (5-10 voiced frames before each turn). Without this condition the hall
# paused for nobody 30 times in 10 minutes.
LOOSE_PAUSE_MAX_VOICED_SHARE = 0.05
ECHO_VOICED_SMOOTHING = 1 / 3000
# ...and a run of this many frames over echo that the VAD calls voiced, in a row, one of them
# at least this loud, pauses the answer too (where quiet frames may: the share above): a
# first word that AEC3 mutes after a frame or two has at most one frame above the floor, and
# the rule above wants two ("what", living-room, the whole process: `-61v -47v -56v -68v -77v
# -79v`, then 460 ms to the next word). What AEC3 leaves of an echo comes in quieter runs
# (-57 to -69 dBFS in the simulated living room). In the simulated rooms (bench.echo_room,
# 240 s x 2 seeds a room, and 300 s of echo alone) living-room's p95 to silence went from 431
# to 345 ms, with no pause for nobody added (runs of 6 at any level: 22 in living-room's 8
# minutes). In the whole process AEC3 leaves louder runs: this about doubles the answer's
# pauses for nobody, to one or two a minute where the echo is as loud as the person
# (bench.barge_in_live, answer_pauses_per_minute), and took living-room's muted first words
# from 301-602 ms to silence to 225-304.
WORD_RUN_FRAMES = 5
WORD_RUN_PEAK_DBFS = -52.0
# A frame over echo joins that share this many frames late, and the frames before a turn that
# opens never join it: they were the person's, not the echo's. (Counted at once, the person's
# own first words took the looser pause away in the whole process, where bench.barge_in_live
# talks over the answer every 2-4 s: in living-room, after about ten interruptions.)
ECHO_SHARE_DELAY_FRAMES = 40
# For the debug log of a pause or a turn over echo (`opening_trace`): this many frames.
TRACE_FRAMES = 40
# The floors as the mean square of PCM16 samples, which is what a frame is measured in.
_FLOOR_MEAN_SQUARE = 32768.0**2 * 10 ** (ECHO_SPEECH_FLOOR_DBFS / 10)
_FINDING_ECHO_FLOOR_MEAN_SQUARE = 32768.0**2 * 10 ** (FINDING_ECHO_FLOOR_DBFS / 10)
_WARMING_UP_FLOOR_MEAN_SQUARE = 32768.0**2 * 10 ** (WARMING_UP_FLOOR_DBFS / 10)
_WORD_RUN_PEAK_MEAN_SQUARE = 32768.0**2 * 10 ** (WORD_RUN_PEAK_DBFS / 10)


@dataclass(frozen=True, slots=True)
class WakeDetected:
    """A wake word fired; `audio_time` is seconds of 16 kHz audio up to the end of its chunk."""

    model: str
    score: float
    audio_time: float


@dataclass(frozen=True, slots=True)
class VadFrame:
    """The VAD decision for one frame (only with `monitor=True`, for `talkbox listen`)."""

    is_speech: bool
    audio_time: float


@dataclass(frozen=True, slots=True)
class WakeScores:
    """Scores of one inferred 80 ms chunk (only with `monitor=True`). Chunks skipped while
    nobody talks have no scores: the gated detector did not run on them."""

    scores: Mapping[str, float]
    audio_time: float


FrontEndEvent = WakeDetected | VadFrame | WakeScores | GateEvent


class FrontEnd:
    """Resample, VAD, speech gate and gated wake word over one capture stream.

    Calling contract: `process()` takes consecutive captured bytes (PCM16 mono at
    `input_rate`, any length, even split mid-sample) and returns the events they completed,
    in audio-time order: for each frame, its `VadFrame` (monitor only), then any
    `WakeDetected`/`WakeScores` of the wake chunk it completed, then the gate's events.
    `flush()` drains the resamplers at the end of a stream (e.g. a test file).
    Not thread-safe: feed it from one thread at a time. `wake_enabled` may be set from
    another (the daemon's loop): it is read once per frame.
    """

    def __init__(
        self,
        input_rate: int,
        vad: VoiceActivity,
        gate: SpeechGate,
        wake: GatedWakeDetector | None,
        *,
        echo: EchoCanceller | None = None,
        monitor: bool = False,
    ) -> None:
        if input_rate <= 0:
            raise ValueError("input_rate must be positive")
        if vad.sample_rate != LISTEN_RATE:
            raise ValueError(f"the VAD must run at {LISTEN_RATE} Hz (the wake word's rate)")
        if vad.frame_ms != gate.frame_ms:
            raise ValueError("the VAD and the speech gate must use the same frame length")
        self.input_rate = input_rate
        self.vad = vad
        self.gate = gate
        self.wake = wake
        self.echo = echo
        self.monitor = monitor
        self._over_echo = False  # the last chunk may hold echo: the speaker is playing
        self._near_end_frames = 0  # frames for which the double-talk detector's word holds
        self._leak_frames = 0  # frames for which the canceller's leak holds
        self._voiced_run = 0  # frames over echo the VAD called voiced, in a row (WORD_RUN_...)
        self._voiced_run_peak = 0.0  # ...and the loudest of them (mean square)
        # Of the frames over echo, before a turn (see above): from the edge, so that a room
        # whose echo sounds like speech loses the looser pause with its first such frames.
        self._echo_voiced_share = LOOSE_PAUSE_MAX_VOICED_SHARE
        self._not_yet_shared: deque[bool] = deque()  # the VAD's word on the latest such frames
        # (frame, mark) while opening over echo; levels are taken only when a trace is made.
        self._trace: deque[tuple[bytes, str]] = deque(maxlen=TRACE_FRAMES)
        self.opening_trace = ""
        """How the last pause or turn over echo came about, frame by frame (for the debug
        log): the cleaned frame's level in dBFS, then `.` not voiced, `v` voiced but too quiet,
        `V` voiced, `n` a person to the double-talk detector (towards a pause), `x` not voiced
        for a leak (or over the answer's echo before the canceller has found it)."""
        self._to_wake_rate = Resampler(input_rate, LISTEN_RATE)
        self._to_upload_rate = Resampler(input_rate, UPLOAD_RATE)
        self._frame16_bytes = vad.frame_bytes
        self._frame24_bytes = UPLOAD_RATE * gate.frame_ms // 1000 * 2
        self._pending16 = bytearray()
        self._pending24 = bytearray()
        self._odd_byte = b""
        self._frames_without_upload = UPLOAD_LAG_FRAMES
        self._samples_in = 0
        self._frames_done = 0
        self._wake_enabled = wake is not None
        self.last_is_speech = False

    @property
    def audio_time(self) -> float:
        """Seconds of captured audio taken in so far."""
        return self._samples_in / self.input_rate

    @property
    def wake_enabled(self) -> bool:
        """Whether wake-word inference runs (idle, or during playback for barge-in)."""
        return self._wake_enabled

    @wake_enabled.setter
    def wake_enabled(self, enabled: bool) -> None:
        if enabled and self.wake is None:
            raise ValueError("no wake-word detector configured")
        self._wake_enabled = enabled

    @property
    def quiet_frames_may_pause(self) -> bool:
        """Whether, over echo, frames the VAD calls voiced below the floor count towards
        pausing the answer (LOOSE_PAUSE_MAX_VOICED_SHARE)."""
        return self._echo_voiced_share <= LOOSE_PAUSE_MAX_VOICED_SHARE

    @property
    def in_speech(self) -> bool:
        """Whether the speech gate has a turn open."""
        return self.gate.in_speech

    def process(self, captured: bytes, capture_time: float | None = None) -> list[FrontEndEvent]:
        """Take captured PCM16 bytes at `input_rate`; return the events they completed.

        With an echo canceller, `capture_time` (when the chunk's first sample was at the ADC)
        pairs it with what the speaker played; without one it is not needed."""
        if self.echo is not None and capture_time is not None and not len(captured) % 2:
            captured = self.echo.process(captured, capture_time)
            self._over_echo = self.echo.last_chunk_may_echo
            if self.echo.last_chunk_near_end:
                self._near_end_frames = NEAR_END_HOLD_FRAMES
            if self.echo.last_chunk_leaked:
                self._leak_frames = LEAK_HOLD_FRAMES
        data = self._odd_byte + captured
        usable = len(data) & ~1
        self._odd_byte = data[usable:]
        self._samples_in += usable // 2
        self._pending16 += self._to_wake_rate.process(data[:usable])
        self._pending24 += self._to_upload_rate.process(data[:usable])
        return self._frames()

    def flush(self) -> list[FrontEndEvent]:
        """End of stream: drain the resamplers and return the last whole frames' events.

        A trailing part-frame is dropped, and so is the last UPLOAD_LAG_FRAMES of upload
        audio (no VAD decision covers it). The front end can go on with a new stream after.
        """
        self._pending16 += self._to_wake_rate.flush()
        self._pending24 += self._to_upload_rate.flush()
        events = self._frames()
        self._pending16.clear()
        self._pending24.clear()
        self._odd_byte = b""
        self._frames_without_upload = UPLOAD_LAG_FRAMES
        return events

    def _frames(self) -> list[FrontEndEvent]:
        events: list[FrontEndEvent] = []
        n16, n24 = self._frame16_bytes, self._frame24_bytes
        at16 = at24 = 0
        # Lockstep, so the events never depend on how capture was chunked: 16 kHz frame i
        # (its VAD decision and wake word) goes with 24 kHz frame i - UPLOAD_LAG_FRAMES.
        while len(self._pending16) - at16 >= n16:
            frame24: bytes | None = None
            if self._frames_without_upload == 0:
                if len(self._pending24) - at24 < n24:
                    break
                frame24 = bytes(self._pending24[at24 : at24 + n24])
                at24 += n24
            else:
                self._frames_without_upload -= 1
            self._frame(bytes(self._pending16[at16 : at16 + n16]), frame24, events)
            at16 += n16
        del self._pending16[:at16]
        del self._pending24[:at24]
        return events

    def _frame(
        self, frame16: bytes, frame24: bytes | None, events: list[FrontEndEvent]
    ) -> None:
        is_speech = self.vad.is_speech(frame16)
        vad_said = is_speech
        opening_over_echo = self._over_echo and not self.gate.in_speech
        # A voiced frame's level over echo (None otherwise).
        level = _mean_square(frame16) if is_speech and opening_over_echo else None
        if level is not None:
            # Only to open a turn: once the person has the word, the echo canceller may dull
            # their quieter syllables, and a turn must not end on them.
            is_speech = level >= self._opening_floor()
        floor_said = is_speech
        # The answer's echo that a new canceller has not found yet: no voice counts over it.
        deaf = (
            opening_over_echo
            and self.echo is not None
            and self.echo.finding_the_echo
            and self.echo.last_chunk_may_echo_reply
        )
        maybe_speech = is_speech  # to pause the answer: see SpeechGate.feed
        if opening_over_echo:
            self._share_later(vad_said)
            if self.quiet_frames_may_pause:
                maybe_speech = vad_said
        voice_heard = self._word_run(level)
        near_end = False
        if self._near_end_frames:
            self._near_end_frames -= 1
            # The double-talk detector heard a person that AEC3's suppressor may be muting.
            near_end = opening_over_echo
            voice_heard = voice_heard or near_end
        if self._leak_frames:
            self._leak_frames -= 1
            is_speech = is_speech and not opening_over_echo
            maybe_speech = maybe_speech and not opening_over_echo
            near_end = near_end and not opening_over_echo
            voice_heard = voice_heard and not opening_over_echo
        # The wake word is listened for over it all the same (and over the person the
        # detector heard: its audio is scored as if the VAD had called it speech).
        wake_speech = is_speech or near_end
        if deaf:
            is_speech = maybe_speech = voice_heard = False
        if opening_over_echo:
            mark = _trace_mark(vad_said, floor_said, is_speech, near_end and not deaf)
            self._trace.append((frame16, mark))
        self.last_is_speech = is_speech
        self._frames_done += 1
        if self.monitor:
            events.append(VadFrame(is_speech, self._frames_done * self.gate.frame_ms / 1000))
        if self.wake is not None:
            if self._wake_enabled:
                scored_before = self.wake.detector.last_scores_time
                detections = self.wake.feed(frame16, wake_speech)
                scored_now = self.wake.detector.last_scores_time
                if self.monitor and scored_now is not None and scored_now != scored_before:
                    events.append(WakeScores(dict(self.wake.detector.last_scores), scored_now))
                events.extend(WakeDetected(d.model, d.score, d.audio_time) for d in detections)
            else:
                self.wake.skip(len(frame16) // 2)
        if frame24 is not None:
            warming_up = self.echo is not None and self.echo.warming_up
            new_chime_echo = (warming_up and self.echo is not None
                              and not self.echo.finding_the_echo
                              and not self.echo.last_chunk_may_echo_reply)
            gate_events = self.gate.feed(
                frame24, is_speech, over_echo=self._over_echo, maybe_speech=maybe_speech,
                start_over_echo=WARMING_UP_START if new_chime_echo else None,
                voice_heard=voice_heard,
            )
            if warming_up:
                # No pause while the canceller is new to the room: when a pause for no one
                # ended, the echo came back at once, louder than a new canceller takes out,
                # and opened a turn (the whole process, kitchen-drift, the first answer).
                gate_events = [e for e in gate_events if not isinstance(e, GateSpeechLikely)]
            if opening_over_echo and any(isinstance(e, GateSpeechStarted) for e in gate_events):
                self._not_yet_shared.clear()
            if opening_over_echo and any(
                isinstance(e, GateSpeechLikely | GateSpeechStarted) for e in gate_events
            ):
                self.opening_trace = " ".join(
                    f"{10 * np.log10(_mean_square(frame) / 32768.0**2 + 1e-10):.0f}{mark}"
                    for frame, mark in self._trace
                )
            events.extend(gate_events)

    def _opening_floor(self) -> float:
        """How loud a voiced frame over echo must be to count (as a mean square)."""
        echo = self.echo
        if echo is None or not echo.warming_up:
            return _FLOOR_MEAN_SQUARE
        if echo.finding_the_echo:
            return _FINDING_ECHO_FLOOR_MEAN_SQUARE
        if echo.last_chunk_may_echo_reply:
            return _WARMING_UP_FLOOR_MEAN_SQUARE
        return _FLOOR_MEAN_SQUARE

    def _word_run(self, voiced_level: float | None) -> bool:
        """Whether this frame ends a run of WORD_RUN_FRAMES or more voiced frames over echo, one
        of them at WORD_RUN_PEAK_DBFS (`voiced_level`: the frame's mean square if the VAD
        called it voiced over echo, else None), where quiet frames may pause the answer."""
        if voiced_level is None or not self.quiet_frames_may_pause:
            self._voiced_run, self._voiced_run_peak = 0, 0.0
            return False
        self._voiced_run += 1
        self._voiced_run_peak = max(self._voiced_run_peak, voiced_level)
        return (self._voiced_run >= WORD_RUN_FRAMES
                and self._voiced_run_peak >= _WORD_RUN_PEAK_MEAN_SQUARE)

    def _share_later(self, vad_said: bool) -> None:
        self._not_yet_shared.append(vad_said)
        if len(self._not_yet_shared) > ECHO_SHARE_DELAY_FRAMES:
            voiced = self._not_yet_shared.popleft()
            self._echo_voiced_share += ECHO_VOICED_SMOOTHING * (voiced - self._echo_voiced_share)


def _trace_mark(vad_said: bool, floor_said: bool, counted: bool, near_end: bool) -> str:
    if counted:
        return "V"
    if floor_said:
        return "x"
    if near_end:
        return "n"
    return "v" if vad_said else "."


def _mean_square(frame: bytes) -> float:
    samples = np.frombuffer(frame, dtype="<i2").astype(np.float32)
    return float(np.dot(samples, samples)) / max(1, len(samples))
