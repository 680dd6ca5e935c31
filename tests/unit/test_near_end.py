"""The double-talk detector on synthetic signals: echo alone is never a person; a voice 6 dB
below the echo is heard within a few blocks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from talkbox.audio.near_end import NearEndDetector

RATE = 16000
CHUNK = 640  # the capture's 40 ms periods


def _syllables(
    rng: np.random.Generator, seconds: float, pitch_hz: float
) -> npt.NDArray[np.float64]:
    """Speech-like: a buzz with formant-ish colour, switched on and off in 100-300 ms bursts."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    pitch = pitch_hz * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    buzz = sum(np.sin(k * phase) / k for k in range(1, 20))
    noise = rng.standard_normal(n) * 0.3
    colour = np.convolve(buzz + noise, np.hanning(9), mode="same")
    envelope = np.zeros(n)
    at = 0
    while at < n:
        length = int(rng.uniform(0.1, 0.3) * RATE)
        envelope[at : at + length] = np.hanning(length)[: max(0, min(length, n - at))]
        at += length + int(rng.uniform(0.03, 0.15) * RATE)
    signal = colour * envelope
    return np.asarray(signal / np.sqrt(np.mean(signal**2)), dtype=np.float64)


def _room(far: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """The echo: 120 ms late, a 0.3 s reverberant tail."""
    delay = int(0.12 * RATE)
    length = int(0.3 * RATE)
    tail = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.05 * RATE))
    tail[0] = 3.0
    response = np.concatenate((np.zeros(delay), tail / np.sqrt(np.sum(tail**2))))
    return np.convolve(far, response)[: len(far)]


def _run(
    voice_at_s: float | None,
    seconds: float = 20.0,
    *,
    leak_s: tuple[float, float] | None = None,
    voice_passes: bool = False,
    passed_late_s: float = 0.0,
) -> tuple[list[float], list[float]]:
    """Times (s) of the chunks the detector called near end, and of those it called a leak.

    AEC3's output, as the detector is told it: silence (all echo removed, and the person muted
    as in double talk), or with `voice_passes` the person alone (`passed_late_s` later, as
    AEC3's noise suppressor hands it out); within `leak_s` the whole microphone (AEC3 let the
    echo through)."""
    rng = np.random.default_rng(7)
    far = _syllables(rng, seconds, 120.0) * 6000.0  # about -15 dBFS: a loud speaker
    mic = _room(far, rng) + rng.standard_normal(len(far)) * 20.0  # a noise floor near -64 dBFS
    voice_part = np.zeros(len(mic))
    if voice_at_s is not None:
        voice = _syllables(rng, 2.0, 210.0) * np.sqrt(np.mean(mic**2)) / 2  # 6 dB below
        start = int(voice_at_s * RATE)
        voice_part[start : start + len(voice)] = voice[: len(mic) - start]
        mic += voice_part
    late = int(passed_late_s * RATE)
    cleaned = np.zeros(len(mic))
    if voice_passes:
        cleaned[late:] = voice_part[: len(mic) - late]
    if leak_s is not None:
        span = slice(int(leak_s[0] * RATE), int(leak_s[1] * RATE))
        cleaned[span] = mic[span]
    detector = NearEndDetector(RATE)
    heard, leaked = [], []
    for at in range(0, len(far) - CHUNK + 1, CHUNK):
        near_pcm, far_pcm, cleaned_pcm = (
            np.clip(np.rint(signal[at : at + CHUNK]), -32768, 32767).astype(np.int16)
            for signal in (mic, far, cleaned)
        )
        if detector.feed(near_pcm, far_pcm, cleaned_pcm):
            heard.append(at / RATE)
        if detector.leaked:
            leaked.append(at / RATE)
    assert detector.ready, "the detector never learnt the room"
    return heard, leaked


def test_echo_alone_is_never_a_person() -> None:
    assert _run(voice_at_s=None) == ([], [])


def test_a_voice_over_the_echo_is_heard_within_a_few_blocks() -> None:
    heard, leaked = _run(voice_at_s=15.0)
    assert heard, "the voice over the echo was not heard"
    assert 15.0 <= heard[0] <= 15.0 + 0.3, heard[:5]
    assert leaked == []


def test_echo_that_aec3_lets_through_is_a_leak_as_soon_as_it_does() -> None:
    heard, leaked = _run(voice_at_s=None, leak_s=(15.0, 15.2))
    assert heard == []
    assert leaked, "the echo AEC3 let through was not called a leak"
    # Within a chunk of where it began (the detector's resampling holds back ~2 ms), and
    # over by a chunk after it ended.
    assert 15.0 - 0.04 <= leaked[0] <= 15.0 + 0.04, leaked
    assert leaked[-1] <= 15.2 + 0.04, leaked


def test_a_person_that_aec3_lets_through_is_not_a_leak() -> None:
    _, leaked = _run(voice_at_s=15.0, voice_passes=True)
    assert leaked == []


def test_a_person_that_aec3_hands_out_late_is_not_a_leak() -> None:
    # AEC3 with its noise suppressor hands a sound out about 10 ms after it came in: at the
    # end of each syllable its output still holds what the microphone held a block before.
    _, leaked = _run(voice_at_s=15.0, voice_passes=True, passed_late_s=0.012)
    assert leaked == []
