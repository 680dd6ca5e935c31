"""A room in which the microphone hears the speaker: the echo that speech barge-in must survive.

The room lives in the harness, not in the daemon. The thread that drains the speaker FIFO in
real time (`FifoDrainer`, the device clock) hands every block it drained to `EchoRoom.played`;
the thread that feeds the microphone FIFO (`FifoFeeder`) asks `EchoRoom.echo` for each period
and writes `clip16(person + echo)`. `run_daemon(..., room=RoomSpec(...))` wires both.

Time, on both sides, is the device clock (time.monotonic() unless a test passes times in):

- a drained block of N samples finished playing at `at`, so it played during the
  N / speaker_rate seconds before (`FifoDrainer`'s budget grows with elapsed time; its `at`
  is the tick's time less the budget it could not read yet: time the writer was late for,
  which it may still fill, so consecutive blocks meet exactly);
- a microphone period written at `at` holds what the microphone heard during the period
  before `at` (as a sound card hands over a buffer once it is full);
- the microphone hears at time t what the speaker played at t - delay_ms (plus the reverb).

So on those two time lines the echo lags the speaker by exactly `delay_ms`, a fixed offset of
0. (Against the block and period *write times* instead, an echo shows up in the period written
between delay_ms and delay_ms + 40 ms after the speaker played it.)

Signal path: speaker PCM16 (24 kHz) -> optional tanh soft clip -> resampled to the mic rate
with `drift_ppm` clock skew -> delayed -> convolved with a decaying-noise impulse response of
unit energy -> scaled -> plus an optional noise floor. Deterministic for a given `seed`.

Levels: the room's broadband gain, speaker PCM to microphone PCM, is
`person_dbfs + echo_gain_db - speaker_dbfs` dB. In words: a reply played at the reference
speech level `speaker_dbfs` (-20 dBFS; espeak-ng and the fake service's replies are about
-20 and -17 dBFS) reaches the microphone `echo_gain_db` dB above (below, if negative) a person
speaking at `person_dbfs` (-26 dBFS active speech level, ITU-T P.56's nominal level).

Why not soxr: `soxr.ResampleStream` holds back 20 ms (LQ) to 37 ms (HQ) of output inside
its block processing, measured with 5 ms input blocks; a 20 ms echo would then be due before
the room could compute it. `DriftResampler` below holds back 2 ms.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from support.speech import ordinary_speech_stretch, speak

Floats = npt.NDArray[np.float32]
Floats64 = npt.NDArray[np.float64]
Samples = bytes | npt.NDArray[np.int16] | npt.NDArray[np.float32] | npt.NDArray[np.float64]

SPEAKER_RATE = 24000
MIC_RATE = 16000
FULL_SCALE = 32768.0
PERSON_DBFS = -26.0
"""Active speech level of a person at the microphone (ITU-T P.56's nominal -26 dBov)."""
SPEAKER_DBFS = -20.0
"""Active speech level of a normal reply as the speaker plays it."""
SNAP_S = 0.001
"""Timing differences below this are rounding (a drained block's end is known to within a
sample), not gaps or jumps."""


@dataclass(frozen=True)
class RoomSpec:
    """The room's acoustics; `EchoRoom(spec)` is the room itself."""

    delay_ms: float = 60.0
    """Speaker to microphone, from the moment the drain plays a sample (20-300 ms in tests)."""
    rt60_s: float = 0.3
    """Reverberation time: the impulse response's tail reaches -60 dB after this."""
    echo_gain_db: float = 0.0
    """The echo of a reply at `speaker_dbfs`, relative to a person at `person_dbfs`."""
    drift_ppm: float = 0.0
    """Microphone clock minus speaker clock: the microphone takes drift_ppm more samples a
    second than nominal (a feeder paced by `EchoRoom.period_s` delivers them that fast, so a
    capture's timestamps show it, as a real USB microphone's do). Counted in samples at the
    nominal rates, the echo then drifts later by drift_ppm microseconds a second (through
    pauses too, as two free-running clocks do); in time, its delay stays put."""
    drive: float = 0.0
    """A cheap speaker's soft clip, tanh(drive * x) / drive (x in full scale); 0: none."""
    noise_dbfs: float | None = -65.0
    """White noise floor at the microphone (RMS), so it never hears digital silence."""
    direct_db: float = 6.0
    """Energy of the direct sound relative to the whole reverberant tail."""
    seed: int = 0
    person_dbfs: float = PERSON_DBFS
    speaker_dbfs: float = SPEAKER_DBFS

    def __post_init__(self) -> None:
        # Below ~10 ms the echo is due before the drain (5 ms ticks) and resampler (2 ms) have it.
        if not 10.0 <= self.delay_ms <= 2000.0:
            raise ValueError(f"delay_ms {self.delay_ms} is outside 10..2000")
        if not 0.0 < self.rt60_s <= 5.0:
            raise ValueError(f"rt60_s {self.rt60_s} is outside (0, 5]")
        if self.drive < 0:
            raise ValueError("drive must be >= 0")
        if abs(self.drift_ppm) > 10_000:
            raise ValueError("drift_ppm beyond 1 % is no clock drift")

    @property
    def gain_db(self) -> float:
        """The broadband gain from speaker PCM to microphone PCM."""
        return self.person_dbfs + self.echo_gain_db - self.speaker_dbfs


# ----- measuring


# The rooms the end-to-end tests and the benchmark use: the range of delays,
# reverberation, echo levels, clipping and clock drift.
ROOMS = {
    "near-small": RoomSpec(delay_ms=20, rt60_s=0.1, echo_gain_db=-12, seed=1),
    "kitchen-drift": RoomSpec(delay_ms=120, rt60_s=0.3, echo_gain_db=0, drift_ppm=100, seed=2),
    "hall-loud-cheap": RoomSpec(delay_ms=300, rt60_s=0.6, echo_gain_db=6, drive=2.0, seed=3),
    "living-room": RoomSpec(delay_ms=200, rt60_s=0.45, echo_gain_db=3, drift_ppm=-100,
                            drive=1.0, seed=4),
}


def as_floats(pcm: Samples) -> Floats64:
    """PCM16 bytes or samples as float64 in PCM16 units."""
    if isinstance(pcm, bytes):
        return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    return np.asarray(pcm, dtype=np.float64)


def clip16(samples: npt.NDArray[np.float32] | npt.NDArray[np.float64]) -> bytes:
    """Float samples in PCM16 units, rounded and clipped to PCM16 bytes."""
    encoded: bytes = np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
    return encoded


def rms_dbfs(pcm: Samples) -> float:
    """RMS level of all of `pcm` in dBFS (a full-scale square wave is 0); -inf for silence."""
    x = as_floats(pcm) / FULL_SCALE
    power = float(np.mean(x**2)) if len(x) else 0.0
    return 10 * math.log10(power) if power > 0 else -math.inf


def speech_level_dbfs(pcm: Samples, rate: int = MIC_RATE, frame_ms: int = 20) -> float:
    """Active speech level in dBFS: a frame-based take on ITU-T P.56.

    The mean power of the frames louder than a threshold that lies 15.9 dB below that very
    mean, so pauses do not count and the level does not depend on how much pause there is.
    """
    x = as_floats(pcm) / FULL_SCALE
    n = rate * frame_ms // 1000
    frames = x[: len(x) // n * n].reshape(-1, n)
    power = (frames**2).mean(axis=1)
    if not np.any(power > 0):
        return -math.inf
    power_db = 10 * np.log10(np.maximum(power, 1e-20))
    # Lower the threshold until the active frames' level lies 15.9 dB above it.
    for threshold in np.arange(power_db.max(), power_db.max() - 100.0, -0.25):
        level = 10 * math.log10(float(power[power_db >= threshold].mean()))
        if level - threshold >= 15.9:
            return level
    return 10 * math.log10(float(power.mean()))


def at_speech_level(pcm: Samples, dbfs: float) -> npt.NDArray[np.int16]:
    """`pcm` (at the microphone's rate) scaled to an active speech level of `dbfs`."""
    gain = 10 ** ((dbfs - speech_level_dbfs(pcm)) / 20)
    return np.clip(as_floats(pcm) * gain, -32768, 32767).astype(np.int16)


# What people say over an answer, in the benchmarks of speech barge-in (bench.echo_room,
# bench.barge_in_live): (text, espeak voice, words a minute). Each is one turn: no pause in it
# as long as the end of a turn. Some begin softly ("how", "who") or with a short word and a
# gap ("what is the weather": 140 ms, then 60 ms of silence), which the speech gate hears
# later over an echo.
INTERRUPTING_REQUESTS = (
    ("what is the weather like tomorrow", "en-us", 160),
    ("wait tell me something else", "en-gb", 150),
    ("how tall is the eiffel tower", "en-us+f3", 170),
    ("can you speak more slowly please", "en-gb-x-rp", 140),
    ("who wrote the odyssey", "en-us+m3", 180),
    ("no I meant the other one", "en-gb+f3", 160),
    ("wait, what was that", "en-us", 160),
    ("how tall is the eiffel tower", "en-gb", 150),
    ("tell me something else", "en-us+f3", 170),
    ("who wrote the odyssey", "en-gb-x-rp", 140),
    ("stop and go back", "en-us+m3", 180),
    ("no, the other one", "en-gb+f3", 160),
)


def person(text: str, voice: str = "en-us", speed: int = 160) -> npt.NDArray[np.int16]:
    """A person at the microphone saying `text`, at the room's reference level, from their
    first sound (so that the benchmarks' "start of speech" is when the person starts)."""
    spoken = speak(text, voice=voice, speed=speed, rate=MIC_RATE, pad=(0.0, 0.0))
    return at_speech_level(from_first_sound(spoken), PERSON_DBFS)


# espeak-ng begins some phrases with up to 50 ms of silence ("tell me something else" in
# en-us+f3, "can you speak more slowly please" in en-gb-x-rp): nobody is speaking yet.
FIRST_SOUND_DBFS = -60.0
_FIRST_SOUND_WINDOW_S = 0.005


def from_first_sound(pcm: npt.NDArray[np.int16], rate: int = MIC_RATE) -> npt.NDArray[np.int16]:
    """`pcm` from the first 5 ms window at or above FIRST_SOUND_DBFS on."""
    window = round(rate * _FIRST_SOUND_WINDOW_S)
    count = len(pcm) // window
    power = (pcm[: count * window].astype(np.float64).reshape(count, window) ** 2).mean(axis=1)
    loud = np.flatnonzero(power >= FULL_SCALE**2 * 10 ** (FIRST_SOUND_DBFS / 10))
    return pcm[int(loud[0]) * window :] if len(loud) else pcm


def long_answer(seconds: float) -> bytes:
    """A spoken answer as the service sends it (24 kHz), at the speaker's reference level."""
    speech = ordinary_speech_stretch(SPEAKER_RATE, seconds, noise_volume=0.0,
                                     pauses=(0.3, 0.6, 0.2))
    return bytes(at_speech_level(speech, SPEAKER_DBFS).tobytes())


def measure_delay(reference: Samples, recording: Samples, rate: int,
                  max_lag_s: float = 1.0) -> float:
    """Seconds by which `recording` lags `reference` (both starting at the same instant, same
    rate): the peak of their cross-correlation, interpolated between samples."""
    ref = as_floats(reference)
    rec = as_floats(recording)
    max_lag = round(max_lag_s * rate)
    n = 1 << (len(ref) + len(rec) + max_lag).bit_length()
    correlation = np.fft.irfft(np.fft.rfft(rec, n) * np.conj(np.fft.rfft(ref, n)), n)
    # Lags -max_lag..max_lag (negative lags wrap to the end).
    lags = np.concatenate([correlation[n - max_lag:], correlation[: max_lag + 1]])
    peak = int(np.argmax(np.abs(lags)))
    offset = 0.0
    if 0 < peak < len(lags) - 1:  # the parabola through the peak and its neighbours
        a, b, c = np.abs(lags[peak - 1: peak + 2])
        denominator = a - 2 * b + c
        offset = 0.5 * float(a - c) / float(denominator) if denominator else 0.0
    return (peak - max_lag + offset) / rate


def on_device_clock(log: Sequence[tuple[float, Samples]], rate: int) -> tuple[float, Floats64]:
    """Blocks, each ending at its time, as one signal on the device clock: (when it starts,
    samples in PCM16 units), e.g. `room.played_log` at the speaker's rate, `room.echo_log`
    at the microphone's. Placed as the room places them: a block follows on from the one
    before unless there is a gap of more than `SNAP_S` (then silence fills it)."""
    blocks = [(at, as_floats(samples)) for at, samples in log if len(samples)]
    if not blocks:
        return 0.0, np.zeros(0)
    start = blocks[0][0] - len(blocks[0][1]) / rate
    pieces: list[Floats64] = []
    placed = 0
    for at, samples in blocks:
        index = round((at - start) * rate) - len(samples)
        if index > placed + SNAP_S * rate:
            pieces.append(np.zeros(index - placed))
            placed = index
        pieces.append(samples)
        placed += len(samples)
    return start, np.concatenate(pieces)


def to_rate(pcm: Samples, from_rate: int, to_rate: int) -> npt.NDArray[np.float64]:
    """Offline, time-aligned resampling (soxr HQ), for references in tests."""
    import soxr  # only here: the room itself does not use it

    resampled: npt.NDArray[np.float64] = soxr.resample(as_floats(pcm), from_rate, to_rate)
    return resampled


# ----- the room's parts


class DriftResampler:
    """Streaming resampler, Kaiser-windowed sinc, for any ratio (a drifting clock too).

    Output sample j is the input interpolated at position j * in_rate / out_rate, so output
    0 is input 0 (no delay); to make it, the input must reach `half_taps` samples beyond that
    position (2 ms at 24 kHz). Unlike soxr's stream, nothing else is held back.
    """

    def __init__(self, in_rate: float, out_rate: float, half_taps: int = 48,
                 phases: int = 1024) -> None:
        self.step = in_rate / out_rate
        """Input samples per output sample."""
        self.half_taps = half_taps
        self._phases = phases
        cutoff = 0.46 * min(in_rate, out_rate) / in_rate  # cycles per input sample
        # Row q is the kernel for fractional position q / phases; column m weighs input
        # floor(position) - half_taps + 1 + m, which lies `distance` samples before it.
        fraction = np.arange(phases + 1)[:, None] / phases
        distance = fraction + (half_taps - 1 - np.arange(2 * half_taps))[None, :]
        window = np.i0(8.6 * np.sqrt(np.clip(1 - (distance / half_taps) ** 2, 0, 1))) / np.i0(8.6)
        kernel = 2 * cutoff * np.sinc(2 * cutoff * distance) * window
        self._table = (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)
        # Silence before the first sample, so the first outputs have their left taps.
        self._input = np.zeros(half_taps - 1, dtype=np.float32)
        self._input_start = -(half_taps - 1)
        self.out_next = 0
        """Index of the next output sample."""

    @property
    def in_end(self) -> int:
        """Input samples pushed so far."""
        return self._input_start + len(self._input)

    def needed_input(self, out_end: int) -> int:
        """Input samples needed before outputs up to `out_end` (exclusive) can be made."""
        return math.floor((out_end - 1) * self.step) + self.half_taps + 1 if out_end > 0 else 0

    def push(self, samples: Floats) -> None:
        self._input = np.concatenate([self._input, samples])

    def pull(self, out_end: int) -> Floats:
        """Outputs from `out_next` up to `out_end`, or as far as the input reaches."""
        # Output j can be made once floor(j * step) + half_taps < in_end.
        end = max(self.out_next, math.ceil((self.in_end - self.half_taps) / self.step))
        while end > self.out_next and self.needed_input(end) > self.in_end:
            end -= 1  # the floating-point edges of the estimate
        while self.needed_input(end + 1) <= self.in_end:
            end += 1
        end = min(end, out_end)
        if end <= self.out_next:
            return np.zeros(0, dtype=np.float32)
        position = np.arange(self.out_next, end, dtype=np.float64) * self.step
        whole = np.floor(position).astype(np.int64)
        phase = np.rint((position - whole) * self._phases).astype(np.int64)
        first = whole - self.half_taps + 1 - self._input_start
        taps = self._input[first[:, None] + np.arange(2 * self.half_taps)]
        out: Floats = np.einsum("ij,ij->i", taps, self._table[phase]).astype(np.float32)
        self.out_next = end
        keep_from = math.floor(end * self.step) - self.half_taps + 1 - self._input_start
        if keep_from > 0:
            self._input = self._input[keep_from:]
            self._input_start += keep_from
        return out


class OverlapAdd:
    """Streaming FFT convolution: each block's output, the tail carried to the next block."""

    def __init__(self, impulse_response: npt.NDArray[np.float64]) -> None:
        self._ir = impulse_response
        self._tail = np.zeros(len(impulse_response) - 1)
        self._spectra: dict[int, npt.NDArray[np.complex128]] = {}

    def process(self, block: Floats) -> Floats:
        if not len(block):
            return block
        length = len(block) + len(self._ir) - 1
        size = 1 << (length - 1).bit_length()
        if size not in self._spectra:
            self._spectra[size] = np.fft.rfft(self._ir, size)
        full = np.fft.irfft(np.fft.rfft(block, size) * self._spectra[size], size)[:length]
        full[: len(self._tail)] += self._tail
        self._tail = full[len(block):]
        out: Floats = full[: len(block)].astype(np.float32)
        return out


def impulse_response(spec: RoomSpec, rate: int = MIC_RATE) -> npt.NDArray[np.float64]:
    """A direct tap, then noise decaying 60 dB (energy) over rt60_s; unit energy in all."""
    length = max(2, round(spec.rt60_s * rate))
    rng = np.random.default_rng([spec.seed, 0])
    tail = rng.standard_normal(length) * 10 ** (-3.0 * np.arange(length) / (spec.rt60_s * rate))
    tail[0] = 0.0
    tail /= math.sqrt(float(np.sum(tail**2)))
    tail[0] = math.sqrt(10 ** (spec.direct_db / 10))
    normalised: npt.NDArray[np.float64] = tail / math.sqrt(float(np.sum(tail**2)))
    return normalised


class EchoRoom:
    """The stateful room: the drain thread calls `played`, the feeder thread `echo`/`mix`.

    Both sides are placed on the device clock, so thread jitter costs nothing: a drained block
    goes where its time says (the drain's budget makes consecutive blocks meet exactly), and a
    period's echo comes from where its time says. Only echo that is due before the drain has
    played it is missing: the feeder then waits up to `wait_s` for the drain, and what is still
    missing is silence, counted in `underflows` (the timing stays exact: it drops echo, it
    does not shift it). Before the speaker's first block there is no echo at all.

    With `FifoDrainer`, the time known to be silent trails the clock by the drain's credit
    (up to 20 ms) while the speaker is idle, so with delays under ~27 ms the feeder waits a
    few ms for each idle period's verdict: a capture a little late, never a wrong echo.
    """

    snap_s = SNAP_S
    backlog_s = 1.0
    """Speaker audio the room works through unasked, so a silent microphone costs no memory."""

    def __init__(self, spec: RoomSpec, *, speaker_rate: int = SPEAKER_RATE,
                 mic_rate: int = MIC_RATE, wait_s: float = 0.05, keep: bool = False) -> None:
        self.spec = spec
        self.keep = keep
        self.played_log: list[tuple[float, bytes]] = []
        """With `keep`: every `played` call (at, pcm), empty ones too, in the order served."""
        self.echo_log: list[tuple[float, Floats]] = []
        """With `keep`: every `echo` call (at, echo with the noise floor), in order."""
        self.speaker_rate = speaker_rate
        self.mic_rate = mic_rate
        self.wait_s = wait_s
        self.underflows = 0
        """Microphone periods whose echo was due before the drain had played it."""
        self.late_blocks = 0
        """Drained blocks that overlapped audio already placed, so they play late."""
        self.max_late_s = 0.0
        self.mic_jumps = 0
        """Microphone periods that did not follow on from the previous one (a paused feeder)."""
        self._cond = threading.Condition()
        self._anchor: float | None = None  # when the speaker's first sample played
        self._drained_until = -math.inf
        self._closed = False
        self.clock_rate = mic_rate * (1 + spec.drift_ppm * 1e-6)
        """The microphone's true rate on the speaker's clock: a feeder paced at it
        (`period_s`) is a microphone whose clock runs drift_ppm apart, as a USB one does."""
        self._resampler = DriftResampler(speaker_rate, self.clock_rate)
        self._reverb = OverlapAdd(impulse_response(spec, mic_rate))
        self._gain = 10 ** (spec.gain_db / 20)
        self._echo = np.zeros(0, dtype=np.float32)  # rendered echo, mic samples...
        self._echo_start = 0  # ...from this index (0: the speaker's first sample, undelayed)
        self._mic_next: int | None = None
        self._history = round((spec.delay_ms / 1000 + 1.0) * mic_rate)
        self._noise = np.random.default_rng([spec.seed, 1])
        self._noise_rms = (
            0.0 if spec.noise_dbfs is None else FULL_SCALE * 10 ** (spec.noise_dbfs / 20))

    # --- the speaker side (the drain's thread)

    def played(self, pcm: bytes, at: float | None = None) -> None:
        """The speaker played `pcm` (PCM16 mono), finishing at `at` (device clock).

        Call it on every drain tick, empty ones too: they tell the room that nothing more was
        played up to `at`, so the microphone need not wait for it.
        """
        at = time.monotonic() if at is None else at
        samples = (as_floats(pcm) / FULL_SCALE).astype(np.float32)
        if self.spec.drive > 0:
            samples = np.tanh(self.spec.drive * samples) / self.spec.drive
        with self._cond:
            if len(samples):
                start = at - len(samples) / self.speaker_rate
                if self._anchor is None:
                    self._anchor = start
                index = round((start - self._anchor) * self.speaker_rate)
                placed = self._resampler.in_end
                snap = self.snap_s * self.speaker_rate
                if index > placed + snap:  # the speaker was silent in between
                    self._resampler.push(np.zeros(index - placed, dtype=np.float32))
                elif index < placed - snap:  # it would overlap: it plays after what is placed
                    self.late_blocks += 1
                    self.max_late_s = max(self.max_late_s, (placed - index) / self.speaker_rate)
                self._resampler.push(samples)
                backlog = self._resampler.in_end - self._resampler.needed_input(
                    self._resampler.out_next)
                if backlog > self.backlog_s * self.speaker_rate:
                    self._render(None)
            self._drained_until = max(self._drained_until, at)
            if self.keep:
                self.played_log.append((at, pcm))
            self._cond.notify_all()

    # --- the microphone side (the feeder's thread)

    def period_s(self, frames: int) -> float:
        """How long `frames` take on the microphone's clock (a feeder paces itself by this)."""
        return frames / self.clock_rate

    def echo(self, frames: int, at: float | None = None) -> Floats:
        """What the microphone hears of the speaker (and the noise floor) in the `frames` before
        `at`, in PCM16 units (float32): add the person's voice, then `clip16`."""
        at = time.monotonic() if at is None else at
        out = np.zeros(frames, dtype=np.float32)
        with self._cond:
            if self._anchor is not None:
                delay = self.spec.delay_ms / 1000
                # On the microphone's own clock: paced by `period_s`, the echo's delay in time
                # stays put; paced at the nominal rate, it drifts (the timestamps hide it).
                first = round((at - frames / self.clock_rate - self._anchor - delay)
                              * self.clock_rate)
                if self._mic_next is not None:
                    if abs(first - self._mic_next) <= self.snap_s * self.clock_rate:
                        first = self._mic_next
                    else:
                        self.mic_jumps += 1
                end = first + frames
                self._mic_next = end
                if end > 0:
                    needed = self._resampler.needed_input(end)
                    if self.wait_s > 0 and not self._can_reach(needed):
                        self._cond.wait_for(lambda: self._can_reach(needed), self.wait_s)
                    self._render(end)
                    rendered_end = self._echo_start + len(self._echo)
                    if rendered_end < end:
                        self.underflows += 1
                    lo, hi = max(first, self._echo_start), min(end, rendered_end)
                    if hi > lo:
                        out[lo - first: hi - first] = self._echo[lo - self._echo_start:
                                                                 hi - self._echo_start]
                self._forget_before(end)
            if self._noise_rms:
                out += (self._noise.standard_normal(frames) * self._noise_rms).astype(np.float32)
            if self.keep:
                self.echo_log.append((at, out.copy()))
        return out

    def close(self) -> None:
        """The speaker is gone: it plays nothing more, so nobody waits for it."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def mix(self, person: bytes, at: float | None = None) -> bytes:
        """`person` (PCM16, one period) with the echo of the `len(person)/2` samples before `at`."""
        return clip16(as_floats(person) + self.echo(len(person) // 2, at))

    # --- inside (callers hold the lock)

    def _speaker_index(self, at: float) -> int:
        assert self._anchor is not None
        return math.floor((at - self._anchor) * self.speaker_rate)

    def _known_until(self) -> int:
        """Speaker samples known: what was placed, and the silence the drain has passed."""
        if self._closed:
            return 2**62
        return max(self._resampler.in_end, self._speaker_index(self._drained_until))

    def _can_reach(self, needed: int) -> bool:
        return self._known_until() >= needed

    def _render(self, end: int | None) -> None:
        """Echo up to mic index `end` (None: as far as the placed speaker audio goes)."""
        if end is not None:
            # What the drain has passed without playing anything was silence: place it, but
            # no further than needed, so a block that comes later still goes where it belongs.
            needed = self._resampler.needed_input(end)
            silent_until = min(needed, self._known_until())
            if silent_until > self._resampler.in_end:
                self._resampler.push(np.zeros(silent_until - self._resampler.in_end,
                                              dtype=np.float32))
        resampled = self._resampler.pull(end if end is not None else 2**62)
        if len(resampled):
            echo = self._reverb.process(resampled) * np.float32(self._gain * FULL_SCALE)
            self._echo = np.concatenate([self._echo, echo])
        self._forget_before(self._echo_start + len(self._echo) - self._history)

    def _forget_before(self, index: int) -> None:
        drop = min(index - self._echo_start, len(self._echo))
        if drop > 0:
            self._echo = self._echo[drop:]
            self._echo_start += drop
