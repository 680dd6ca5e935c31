"""Resampler: identity, lengths, chunking that changes nothing, and fidelity (SNR)."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from talkbox.audio.resample import PromptResampler, Resampler

RATE_PAIRS = [(24000, 48000), (48000, 24000), (16000, 24000), (48000, 16000), (24000, 44100),
              (44100, 16000)]


def pcm16(samples: npt.NDArray[np.float64]) -> bytes:
    return np.rint(samples).astype("<i2").tobytes()


def samples_of(pcm: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def tapered_sine(frequency: float, rate: int, seconds: float, amplitude: float) -> bytes:
    """A sine with 20 ms raised-cosine ends, so the edges add no broadband transient."""
    n = round(rate * seconds)
    t = np.arange(n) / rate
    taper = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.02 * rate))
    window = 0.5 - 0.5 * np.cos(np.pi * taper)
    return pcm16(amplitude * window * np.sin(2 * np.pi * frequency * t))


def snr_db(reference: npt.NDArray[np.float64], test: npt.NDArray[np.float64]) -> float:
    noise = test - reference
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum(noise**2), 1e-12)))


def test_equal_rates_are_an_identity_without_soxr() -> None:
    resampler = Resampler(16000, 16000)
    pcm = pcm16(np.arange(-500, 500) * 30.0)
    assert resampler.is_identity
    assert resampler.process(pcm) == pcm
    assert resampler.flush() == b""


def test_odd_length_chunks_and_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="odd length"):
        Resampler(24000, 48000).process(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="odd length"):
        Resampler(24000, 24000).process(b"\x00")
    with pytest.raises(ValueError, match="positive"):
        Resampler(0, 48000)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_output_length_follows_the_rate_ratio(in_rate: int, out_rate: int) -> None:
    seconds = 0.73
    pcm = tapered_sine(440.0, in_rate, seconds, 8000.0)
    resampler = Resampler(in_rate, out_rate)
    out = b"".join(resampler.process(pcm[i:i + 640]) for i in range(0, len(pcm), 640))
    out += resampler.flush()
    expected = len(pcm) // 2 * out_rate / in_rate
    assert abs(len(out) // 2 - expected) <= 1


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4800), max_size=12))
def test_any_chunking_gives_the_same_samples_as_one_shot(cuts: list[int]) -> None:
    pcm = tapered_sine(1234.5, 24000, 0.2, 20000.0)
    one_shot = Resampler(24000, 44100)
    expected = one_shot.process(pcm) + one_shot.flush()

    chunked = Resampler(24000, 44100)
    edges = [0, *sorted(2 * c for c in cuts), len(pcm)]
    out = b"".join(chunked.process(pcm[a:b]) for a, b in itertools.pairwise(edges))
    assert out + chunked.flush() == expected


def test_flush_and_reset_start_the_next_signal_afresh() -> None:
    first = tapered_sine(300.0, 24000, 0.1, 9000.0)
    second = tapered_sine(700.0, 24000, 0.1, 9000.0)
    fresh = Resampler(24000, 48000)
    expected = fresh.process(second) + fresh.flush()

    after_flush = Resampler(24000, 48000)
    after_flush.process(first)
    after_flush.flush()
    assert after_flush.process(second) + after_flush.flush() == expected

    after_reset = Resampler(24000, 48000)
    after_reset.process(first)  # part of this is still inside the filter...
    after_reset.reset()  # ...and must not leak into the next signal
    assert after_reset.process(second) + after_reset.flush() == expected


@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 48000), (16000, 44100)])
def test_up_and_down_again_keeps_a_sine_above_60_db_snr(in_rate: int, out_rate: int) -> None:
    pcm = tapered_sine(1000.0, in_rate, 0.5, 16000.0)
    up = Resampler(in_rate, out_rate)
    high = up.process(pcm) + up.flush()
    down = Resampler(out_rate, in_rate)
    back = samples_of(down.process(high) + down.flush())
    original = samples_of(pcm)
    assert len(back) == len(original)
    assert snr_db(original, back) > 60


def test_overshoot_is_clipped_not_wrapped() -> None:
    # A full-scale square wave rings past full scale when resampled; int16 must saturate.
    rate = 24000
    square = np.where(np.sin(2 * np.pi * 200 * np.arange(rate // 4) / rate) >= 0, 32767, -32768)
    resampler = Resampler(rate, 48000)
    out = samples_of(resampler.process(pcm16(square.astype(np.float64))) + resampler.flush())
    assert out.max() == 32767
    assert out.min() == -32768
    # In the middle of each half period the sign must match the input's: no wrap-around.
    half = 48000 // 400
    centres = np.arange(half // 2, len(out) - half, half)
    expected_sign = np.where((centres // half) % 2 == 0, 1, -1)
    assert np.all(np.sign(out[centres]) == expected_sign)


# --- PromptResampler: the echo canceller's reference, which must not be held back -----------

REFERENCE_RATE_PAIRS = [(24000, 16000), (48000, 16000), (44100, 16000), (22050, 16000),
                        (16000, 48000), (24000, 24000)]


def tones_below(top_hz: float, rate: int, seconds: float) -> npt.NDArray[np.float64]:
    """Twenty tones between 100 Hz and `top_hz` at random phases, peaking at half scale."""
    rng = np.random.default_rng(1)
    t = np.arange(round(rate * seconds)) / rate
    frequencies = rng.uniform(100, top_hz, 20)
    signal = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in frequencies)
    return np.asarray(signal) / np.max(np.abs(signal)) * 16000


@pytest.mark.parametrize(("in_rate", "out_rate"), REFERENCE_RATE_PAIRS)
def test_the_prompt_resampler_holds_back_about_a_millisecond(in_rate: int, out_rate: int) -> None:
    pcm = pcm16(tones_below(3000, in_rate, 1.0))
    resampler = PromptResampler(in_rate, out_rate)
    block = in_rate // 50 * 2  # 20 ms periods, as the speaker hands them over
    fed = out = 0
    worst_held_ms = 0.0
    for start in range(0, len(pcm), block):
        piece = pcm[start : start + block]
        fed += len(piece) // 2
        out += len(resampler.process(piece)) // 2
        worst_held_ms = max(worst_held_ms, (fed * out_rate / in_rate - out) * 1000 / out_rate)
    # soxr's Resampler held back up to 37 ms here (41 ms from 44.1 kHz).
    assert worst_held_ms <= 1.2


@pytest.mark.parametrize(("in_rate", "out_rate"), REFERENCE_RATE_PAIRS)
def test_the_prompt_resampler_matches_soxr_where_speech_is(in_rate: int, out_rate: int) -> None:
    signal = tones_below(6000, in_rate, 1.0)
    resampler = PromptResampler(in_rate, out_rate)
    pcm = pcm16(signal)
    out = b"".join(resampler.process(pcm[i : i + 1000]) for i in range(0, len(pcm), 1000))
    expected = soxr.resample(signal / 32768, in_rate, out_rate, quality="VHQ") * 32768
    got = samples_of(out)
    # Sample for sample, with no delay: soxr's output also starts at the input's first sample.
    n = min(len(got), len(expected)) - 100
    assert n > 0.9 * out_rate
    assert snr_db(expected[100:n], got[100:n]) > 70


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4800), max_size=12))
def test_the_prompt_resampler_gives_the_same_samples_for_any_chunking(cuts: list[int]) -> None:
    pcm = pcm16(tones_below(5000, 24000, 0.2))
    edges = [0, *sorted(2 * c for c in cuts), len(pcm)]
    one_shot = PromptResampler(24000, 16000).process(pcm)
    chunked = PromptResampler(24000, 16000)
    assert b"".join(chunked.process(pcm[a:b]) for a, b in itertools.pairwise(edges)) == one_shot


def test_the_prompt_resampler_starts_afresh_after_reset_and_refuses_odd_chunks() -> None:
    first = tapered_sine(300.0, 24000, 0.1, 9000.0)
    second = tapered_sine(700.0, 24000, 0.1, 9000.0)
    expected = PromptResampler(24000, 16000).process(second)
    reused = PromptResampler(24000, 16000)
    reused.process(first)
    reused.reset()
    assert reused.process(second) == expected
    with pytest.raises(ValueError, match="odd length"):
        reused.process(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="positive"):
        PromptResampler(24000, 0)
