"""`talkbox echo-test`'s measurements: the test signal, and what the microphone made of it.

This module owns the numbers the echo test reports, computed from what one run recorded on
the daemon's clock (a `Recording`): pure functions of arrays, no device I/O (talkbox/echo_test.py
plays and records; tests hand in arrays).

- The test signal (`make_signal`): speech-like sound (voiced syllables of harmonics shaped
  by vowel formants, with unvoiced noise and short pauses, which webrtcvad calls speech as it
  does a voice), then a short log sweep, at `TEST_SIGNAL_DBFS` RMS: about as loud as the
  service's answers, whatever [audio] volume says (that scales the chimes only). Speech comes
  first, as an answer does: the canceller starts fresh, as in the daemon's first answer, and
  must adapt on a voice. A sweep first would teach it each frequency only in passing (the
  high ones last): its residue rose to -33 dBFS at the sweep's top, and the daemon opened a
  turn on it in half the runs; at the end, it checks tones after the canceller has adapted.
- The echo's delay (`echo_delay`): the lag of the peak of the cross-correlation (phase
  transform weighted, so reverberation does not smear it) between what the speaker was handed
  and what the microphone captured, each placed on the clock by the same timestamps the echo
  canceller uses: a block's DAC time (handed over + the output latency PortAudio reports) and
  a chunk's ADC time (received - the input latency PortAudio reports). So the delay is the
  acoustic one plus whatever error those reported latencies have.
- Levels (`analyse`) before and after cancellation over the part of the signal where AEC3 has
  converged (the last `CONVERGED_SHARE` of it), against the room's noise before the signal.
- Voice activity over the echo: webrtcvad alone on the cleaned signal, and the daemon's own
  decisions (recorded from the real front end: VAD plus the level floor while the speaker
  plays) and the turns it opened (false barge-ins).
- The verdict (`verdict`), one line: speech barge-in safe here or not, or no echo heard.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

from talkbox.audio.vad import VoiceActivity
from talkbox.audio_format import LISTEN_RATE

Pcm = npt.NDArray[np.int16]
Floats = npt.NDArray[np.float64]

# The test signal: RMS level, length of its closing sweep, and the default total length.
TEST_SIGNAL_DBFS = -20.0
SWEEP_S = 1.0
DEFAULT_SECONDS = 11.0
MIN_SECONDS, MAX_SECONDS = 5.0, 60.0  # at least as long again as the canceller adapts
# Levels are compared over this last share of the signal: AEC3 converges within the first.
CONVERGED_SHARE = 0.6
# Where the echo is looked for, relative to its reference (a negative delay is possible when
# the devices report latencies too large; AEC3 itself handles up to about 500 ms).
MIN_DELAY_S, MAX_DELAY_S = -0.2, 1.0
# A correlation peak this many robust standard deviations above the rest is an echo. Over the
# ~19,000 lags searched, with 11 s of signal: noise alone peaks at 4-5; an echo 20 dB under
# the room's noise at about 25, 30 dB under it at 6-9; a plain echo in the thousands.
ECHO_SIGNIFICANCE = 12.0
# A captured sample this close to full scale is clipped; more than this share of them during
# the signal means the microphone's gain is too high.
CLIP_SAMPLE = 32700
CLIP_SHARE = 1e-4
# A fresh canceller adapts over the first seconds of sound: the daemon's does in its first
# answer after it starts (or reloads its config), and keeps what it learnt for the next ones.
# Turns opened in this first stretch are told apart: in a room where none opened later, its
# residual echo rose in a burst of up to 300 ms, 0.6-2 s in, and opened a turn in one run of
# 6 to 8, varying with the devices' timing (tests/integration/test_cli_echo_test.py's room).
ADAPTING_S = 2.5
# Speech barge-in is safe when the daemon opened no turn over the echo and called at most
# this share of its frames speech (a margin: louder answers leave louder residues).
SAFE_DECISION_SHARE = 0.05
# An echo less than this far above the room's noise is "barely heard".
BARELY_HEARD_DB = 6.0
SILENT_DBFS = -120.0  # what digital silence is reported as

_FRAME_MS = 20


# --- the test signal --------------------------------------------------------------------------


def make_signal(rate: int, seconds: float = DEFAULT_SECONDS, seed: int = 0) -> Pcm:
    """`seconds` of test signal at `rate`: speech-like sound, then a `SWEEP_S` log sweep.

    Both parts are at TEST_SIGNAL_DBFS RMS and stay below 0.45 x `rate` (and 7 kHz), so a
    microphone at 16 kHz hears all of it. Same arguments, same samples."""
    if seconds <= SWEEP_S:
        raise ValueError(f"the test signal needs more than {SWEEP_S:g} s")
    top = min(7000.0, 0.45 * rate)
    sweep = _log_sweep(rate, SWEEP_S, 100.0, top)
    speech = _speech_like(rate, seconds - SWEEP_S, top, np.random.default_rng(seed))
    target = 32768 * 10 ** (TEST_SIGNAL_DBFS / 20)
    parts = [part * (target / max(_rms(part), 1e-9)) for part in (speech, sweep)]
    signal: Pcm = np.clip(np.rint(np.concatenate(parts)), -32768, 32767).astype(np.int16)
    return signal


def _log_sweep(rate: int, seconds: float, low: float, high: float) -> Floats:
    t = np.arange(round(seconds * rate)) / rate
    k = math.log(high / low)
    sweep = np.sin(2 * np.pi * low * seconds / k * (np.exp(t / seconds * k) - 1))
    faded: Floats = sweep * _fades(len(sweep), round(0.01 * rate))
    return faded


def _fades(length: int, ramp: int) -> Floats:
    envelope = np.ones(length)
    ramp = min(ramp, length // 2)
    if ramp:
        rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        envelope[:ramp] = rise
        envelope[length - ramp :] = rise[::-1]
    return envelope


# Vowel formants (Hz) of an adult voice: /a/, /e/, /i/, /o/, /u/, /ae/.
_VOWELS = (
    (730, 1090, 2440),
    (530, 1840, 2480),
    (270, 2290, 3010),
    (570, 840, 2410),
    (300, 870, 2240),
    (660, 1720, 2410),
)
_FORMANT_WIDTHS = (90.0, 110.0, 170.0)


def _speech_like(rate: int, seconds: float, top: float, rng: np.random.Generator) -> Floats:
    """Syllables of a voice (harmonics of a wandering pitch through vowel formants, each with
    a noise burst for its consonant), in phrases separated by short pauses."""
    out = np.zeros(round(seconds * rate))
    at = round(0.05 * rate)
    phrase_left = rng.integers(4, 9)
    while at < len(out):
        syllable_s = rng.uniform(0.14, 0.32)
        n = min(round(syllable_s * rate), len(out) - at)
        if n <= 0:
            break
        out[at : at + n] += _syllable(rate, n, top, rng)
        at += n + round(rng.uniform(0.0, 0.04) * rate)
        phrase_left -= 1
        if phrase_left == 0:
            at += round(rng.uniform(0.12, 0.35) * rate)  # a breath between phrases
            phrase_left = rng.integers(4, 9)
    return out


def _syllable(rate: int, n: int, top: float, rng: np.random.Generator) -> Floats:
    t = np.arange(n) / rate
    f0_start = rng.uniform(100.0, 190.0)
    glide = 1 + rng.uniform(-0.15, 0.15) * t / t[-1]
    f0 = f0_start * glide * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))  # a slow pitch wobble
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = _VOWELS[rng.integers(len(_VOWELS))]
    voiced = np.zeros(n)
    for harmonic in range(1, int(top / f0.min()) + 1):
        frequency = harmonic * f0
        gain = (
            sum(
                1.0 / (1.0 + ((frequency - f) / w) ** 2)
                for f, w in zip(formants, _FORMANT_WIDTHS, strict=True)
            )
            / harmonic**0.5
        )
        gain = np.where(frequency < top, gain, 0.0)
        voiced += gain * np.sin(harmonic * phase + rng.uniform(0, 2 * np.pi))
    envelope = np.sin(np.pi * np.arange(n) / n) ** 0.6
    # A consonant: a short burst of noise before the vowel, brighter than the voice.
    burst = min(n // 3, round(rng.uniform(0.02, 0.06) * rate))
    noise = np.zeros(n)
    if burst:
        spectrum = np.fft.rfft(rng.standard_normal(burst))
        bins = np.fft.rfftfreq(burst, 1 / rate)
        spectrum[(bins < 2000) | (bins > top)] = 0
        noise[:burst] = np.fft.irfft(spectrum, burst) * _fades(burst, burst // 4)
        noise *= 0.5 * _rms(voiced) / max(_rms(noise[:burst]), 1e-9)
    syllable: Floats = voiced * envelope + noise
    return syllable


# --- measuring ------------------------------------------------------------------------------


def _rms(samples: npt.ArrayLike) -> float:
    values = np.asarray(samples, dtype=np.float64)
    return math.sqrt(float(np.mean(values**2))) if values.size else 0.0


def level_dbfs(samples: npt.ArrayLike) -> float:
    """RMS level in dBFS (a full-scale square wave is 0); digital silence is SILENT_DBFS."""
    rms = _rms(samples)
    return max(SILENT_DBFS, 20 * math.log10(rms / 32768)) if rms > 0 else SILENT_DBFS


def clipped_share(samples: npt.ArrayLike) -> float:
    """The share of samples at (or within a hair of) full scale."""
    values = np.asarray(samples)
    if not values.size:
        return 0.0
    return float(np.mean(np.abs(values.astype(np.int32)) >= CLIP_SAMPLE))


def join_stream(chunks: Sequence[tuple[float, bytes]], rate: int) -> tuple[Pcm, float]:
    """Consecutive PCM16 chunks, each with the time of its first sample, as one array and the
    time of its first sample (the median over the chunks, so one late callback does not move
    the whole stream)."""
    if not chunks:
        return np.zeros(0, np.int16), 0.0
    arrays = [np.frombuffer(pcm, dtype="<i2") for _, pcm in chunks]
    before = np.cumsum([0] + [len(a) for a in arrays[:-1]])
    origins = np.array([at for at, _ in chunks]) - before / rate
    return np.concatenate(arrays).astype(np.int16), float(np.median(origins))


def resample(samples: Pcm, from_rate: int, to_rate: int) -> Pcm:
    """The whole array at another rate (time-aligned: sample 0 stays at time 0)."""
    if from_rate == to_rate:
        return samples
    out = soxr.resample(samples.astype(np.float32), from_rate, to_rate)
    resampled: Pcm = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
    return resampled


@dataclass(frozen=True)
class Delay:
    seconds: float
    """How long after the speaker played a sound the microphone's timestamps have it."""
    significance: float
    """The correlation peak in robust standard deviations above the rest of the lags."""


def echo_delay(
    reference: Pcm,
    reference_start: float,
    captured: Pcm,
    captured_start: float,
    rate: int,
    *,
    band: tuple[float, float] = (100.0, 7000.0),
) -> Delay:
    """Where `captured` holds the echo of `reference` (both at `rate`, their first samples at
    the given times), between MIN_DELAY_S and MAX_DELAY_S. Cross-correlation with the phase
    transform (every frequency weighted alike), within `band`, where the signal has sound."""
    if not len(reference) or not len(captured):
        return Delay(0.0, 0.0)
    size = 1 << math.ceil(math.log2(len(reference) + len(captured)))
    ref_spectrum = np.fft.rfft(reference.astype(np.float64), size)
    cap_spectrum = np.fft.rfft(captured.astype(np.float64), size)
    cross = cap_spectrum * np.conj(ref_spectrum)
    magnitude = np.abs(cross)
    bins = np.fft.rfftfreq(size, 1 / rate)
    usable = (bins >= band[0]) & (bins <= min(band[1], 0.45 * rate))
    floor = 1e-6 * float(magnitude[usable].max()) if usable.any() else 0.0
    if floor <= 0:
        return Delay(0.0, 0.0)
    weighted = np.where(usable, cross / np.maximum(magnitude, floor), 0)
    correlation = np.fft.irfft(weighted, size)
    # captured[k + lag] pairs with reference[k]: the delay is lag / rate + the offset.
    offset = captured_start - reference_start
    lags = np.arange(
        math.floor((MIN_DELAY_S - offset) * rate), math.ceil((MAX_DELAY_S - offset) * rate) + 1
    )
    values = correlation[lags % size]
    peak = int(np.argmax(values))
    spread = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    significance = (float(values[peak]) - float(np.median(values))) / spread if spread > 0 else 0.0
    return Delay(float(lags[peak]) / rate + offset, significance)


def speech_frames(audio: Pcm, rate: int, aggressiveness: int) -> npt.NDArray[np.bool_]:
    """webrtcvad's decision for each whole 20 ms frame of `audio` (resampled to 16 kHz)."""
    listen = resample(audio, rate, LISTEN_RATE)
    vad = VoiceActivity(aggressiveness, LISTEN_RATE, _FRAME_MS)
    step = vad.frame_bytes // 2
    starts = range(0, len(listen) - step + 1, step)
    return np.array([vad.is_speech(listen[i : i + step].tobytes()) for i in starts], dtype=bool)


# --- one run, analysed ----------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """What one run recorded, every time on the daemon's clock (time.monotonic())."""

    played: Pcm
    """Everything handed to the speaker (silence, the signal, silence), at `played_rate`."""
    played_rate: int
    played_start: float
    """The DAC time of `played[0]`, as the echo canceller's reference has it."""
    signal: tuple[float, float]
    """DAC times when the test signal started and ended."""
    captured: Pcm
    """What the microphone captured, at `capture_rate`."""
    cleaned: Pcm
    """What the front end heard of it: `captured` with the echo taken out (or not)."""
    capture_rate: int
    captured_start: float
    """The ADC time of `captured[0]`, as the capture stamps it."""
    decisions: Sequence[tuple[float, bool]] = ()
    """The daemon's speech decision for each 20 ms frame, with the frame's capture time."""
    turn_starts: Sequence[float] = ()
    """Capture times at which the daemon's speech gate opened a turn."""
    wakes: Sequence[float] = ()
    """Capture times of wake-word detections."""
    aggressiveness: int = 2
    echo_cancellation: bool = True


Verdict = Literal["safe", "not_safe", "no_echo"]


@dataclass(frozen=True)
class EchoReport:
    signal_seconds: float
    delay_ms: float | None
    """None when no echo was heard."""
    significance: float
    noise_dbfs: float
    """The room before the signal."""
    played_dbfs: float
    echo_dbfs: float
    """The captured signal (echo and noise) before cancellation, over the converged part."""
    echo_relative_db: float
    """`echo_dbfs` against what the speaker played over the same stretch."""
    cleaned_dbfs: float
    reduction_db: float
    vad_raw_share: float
    """Share of the echo's 20 ms frames, once the canceller has adapted, that webrtcvad calls
    speech before cancellation..."""
    vad_cleaned_share: float
    """...and after it."""
    decision_share: float
    """Share the daemon decided were speech (VAD plus the level floor while the speaker plays)."""
    false_starts: int
    """Turns the daemon opened over the echo once its canceller had adapted (and in the
    canceller's tail after it): each would have been a barge-in."""
    false_starts_adapting: int
    """Turns it opened in the first ADAPTING_S of the echo, while the canceller adapted."""
    false_start_offsets: tuple[float, ...]
    """When each turn opened, in seconds from the start of the signal."""
    false_wakes: int
    clipped_share: float
    aggressiveness: int
    echo_cancellation: bool
    verdict: Verdict
    verdict_line: str
    notes: tuple[str, ...] = field(default=())

    @property
    def heard(self) -> bool:
        return self.delay_ms is not None

    @property
    def clipping(self) -> bool:
        return self.clipped_share > CLIP_SHARE


def _window(start_time: float, rate: int, span: tuple[float, float], length: int) -> slice:
    lo = max(0, round((span[0] - start_time) * rate))
    hi = min(length, round((span[1] - start_time) * rate))
    return slice(lo, max(lo, hi))


def analyse(rec: Recording) -> EchoReport:
    """The measurements of one run (see the module's docstring)."""
    rate = rec.capture_rate
    played = resample(rec.played, rec.played_rate, rate)
    signal_start, signal_end = rec.signal
    signal_s = signal_end - signal_start
    # The reference over the signal and a little after: what AEC3 had to find in the capture.
    reference = played[_window(rec.played_start, rate, (signal_start, signal_end), len(played))]
    delay = echo_delay(reference, signal_start, rec.captured, rec.captured_start, rate)
    heard = delay.significance >= ECHO_SIGNIFICANCE
    lag = delay.seconds if heard else 0.0
    n = len(rec.captured)
    echo_span = (signal_start + lag, signal_end + lag)
    converged = (echo_span[1] - CONVERGED_SHARE * signal_s, echo_span[1])
    adapting = ADAPTING_S if rec.echo_cancellation else 0.0
    adapted = (echo_span[0] + adapting, echo_span[1])
    echo_window = _window(rec.captured_start, rate, echo_span, n)
    adapted_window = _window(rec.captured_start, rate, adapted, n)
    level_window = _window(rec.captured_start, rate, converged, n)
    noise_window = _window(rec.captured_start, rate, (rec.captured_start, signal_start), n)
    # Skip the stream's first 100 ms: devices often start with a click or a ramp.
    noise = rec.captured[noise_window][rate // 10 :]

    played_dbfs = level_dbfs(
        played[
            _window(rec.played_start, rate, (converged[0] - lag, converged[1] - lag), len(played))
        ]
    )
    echo_dbfs = level_dbfs(rec.captured[level_window])
    cleaned_dbfs = level_dbfs(rec.cleaned[level_window])
    noise_dbfs = level_dbfs(noise)
    raw_vad = speech_frames(rec.captured[adapted_window], rate, rec.aggressiveness)
    cleaned_vad = speech_frames(rec.cleaned[adapted_window], rate, rec.aggressiveness)
    # The daemon's decisions and turns: over the echo and the canceller's tail after it, where
    # the daemon holds speech to the stricter rules (and where a barge-in would cut an answer).
    decisions = [d for at, d in rec.decisions if adapted[0] <= at < adapted[1]]
    after_start = [at for at in rec.turn_starts if at >= signal_start]
    while_adapting = [at for at in after_start if at < adapted[0]]
    wakes = [at for at in rec.wakes if at >= signal_start]
    report = EchoReport(
        signal_seconds=signal_s,
        delay_ms=1000 * delay.seconds if heard else None,
        significance=delay.significance,
        noise_dbfs=noise_dbfs,
        played_dbfs=played_dbfs,
        echo_dbfs=echo_dbfs,
        echo_relative_db=echo_dbfs - played_dbfs,
        cleaned_dbfs=cleaned_dbfs,
        reduction_db=echo_dbfs - cleaned_dbfs,
        vad_raw_share=float(raw_vad.mean()) if raw_vad.size else 0.0,
        vad_cleaned_share=float(cleaned_vad.mean()) if cleaned_vad.size else 0.0,
        decision_share=sum(decisions) / len(decisions) if decisions else 0.0,
        false_starts=len(after_start) - len(while_adapting),
        false_starts_adapting=len(while_adapting),
        false_start_offsets=tuple(at - signal_start for at in after_start),
        false_wakes=len(wakes),
        clipped_share=clipped_share(rec.captured[echo_window]),
        aggressiveness=rec.aggressiveness,
        echo_cancellation=rec.echo_cancellation,
        verdict="no_echo",
        verdict_line="",
    )
    kind, line, notes = verdict(report)
    return dataclasses.replace(report, verdict=kind, verdict_line=line, notes=notes)


def verdict(report: EchoReport) -> tuple[Verdict, str, tuple[str, ...]]:
    """(kind, the one line, notes) for a report's numbers."""
    notes: list[str] = []
    if report.clipping:
        notes.append(
            f"the microphone clips ({100 * report.clipped_share:.2f} % of samples at full "
            "scale): its gain is too high; lower it (alsamixer, F4 for capture) and run this again"
        )
    if not report.heard:
        notes.append(
            "the microphone did not hear the speaker: the speaker may be muted or turned down, "
            "or audio.output_device / audio.input_device may be the wrong device"
        )
        line = "no echo heard: is the speaker on and audible? (check the volume and output_device)"
        return "no_echo", line, tuple(notes)
    if report.echo_dbfs - report.noise_dbfs < BARELY_HEARD_DB:
        notes.append(
            f"the echo is barely louder than the room's noise ({report.noise_dbfs:.0f} dBFS): "
            "the reduction cannot be measured well"
        )
    if not report.echo_cancellation:
        notes.append("echo cancellation is off in this config ([audio] echo_cancellation = false)")
    adapted_s = report.signal_seconds - (ADAPTING_S if report.echo_cancellation else 0.0)
    if report.false_starts_adapting:
        notes.append(
            f"{_starts(report.false_starts_adapting)} in the first {ADAPTING_S:g} s, while the "
            "echo canceller was adapting: the first answer after talkbox starts (or reloads "
            "its config) may cut itself off; later answers find the canceller adapted"
        )
    reduced = f"echo reduced by {report.reduction_db:.0f} dB"
    problems = []
    if report.false_starts:
        after = " after the canceller adapted" if report.echo_cancellation else ""
        problems.append(f"{_starts(report.false_starts)} in {_s(adapted_s)} of playback{after}")
    elif report.decision_share > SAFE_DECISION_SHARE:
        problems.append(
            f"{100 * report.decision_share:.0f} % of the echo's frames taken for speech, "
            "close to opening a turn"
        )
    if report.clipping:
        problems.append("the microphone clips")
    if not report.echo_cancellation:
        problems.append("echo cancellation is off")
    if problems:
        if report.echo_cancellation and not report.clipping:
            problems.append(reduced)
        return (
            "not_safe",
            f'speech barge-in: not safe here ({"; ".join(problems)}) — set barge_in = "wake"',
            tuple(notes),
        )
    if report.false_starts_adapting:
        return (
            "safe",
            f"speech barge-in: safe here once the echo canceller has adapted ({reduced}, no "
            f"false starts in the {_s(adapted_s)} of playback after its first "
            f"{ADAPTING_S:g} s; {report.false_starts_adapting} in them)",
            tuple(notes),
        )
    return (
        "safe",
        f"speech barge-in: safe here ({reduced}, no false starts in "
        f"{_s(report.signal_seconds)} of playback)",
        tuple(notes),
    )


def _s(seconds: float) -> str:
    return f"{round(seconds, 1):g} s"


def _starts(count: int) -> str:
    return f"{count} false start{'' if count == 1 else 's'}"
