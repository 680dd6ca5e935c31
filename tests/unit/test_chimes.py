"""Chimes: right length at any rate, within volume, distinct in pitch, and without clicks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from talkbox.audio.chimes import ChimeKind, chime

RATES = [8000, 16000, 22050, 24000, 44100, 48000]
KINDS: list[ChimeKind] = ["wake", "done", "error", "alarm"]
E5, B5, A3, C6 = 659.25, 987.77, 220.0, 1046.5
# Each chime's highest partial: B5's octave; the buzz's fifth harmonic; the beep's third.
HIGHEST_PARTIAL_HZ = {"wake": 2 * B5, "done": 2 * B5, "error": 5 * A3, "alarm": 3 * C6}


def samples(pcm: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def dominant_hz(signal: npt.NDArray[np.float64], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)), n=1 << 17))
    return float(np.argmax(spectrum) * rate / (1 << 17))


def sounding_regions(signal: npt.NDArray[np.float64], rate: int) -> list[tuple[int, int]]:
    """(start, end) sample ranges where the 5 ms RMS is above 5 % of the peak."""
    window = max(1, rate // 200)
    frames = len(signal) // window
    rms = np.sqrt(np.mean(signal[: frames * window].reshape(frames, window) ** 2, axis=1))
    loud = rms > 0.05 * np.max(np.abs(signal))
    regions: list[tuple[int, int]] = []
    for index, is_loud in enumerate(loud):
        if is_loud and (index == 0 or not loud[index - 1]):
            regions.append((index * window, (index + 1) * window))
        elif is_loud:
            regions[-1] = (regions[-1][0], (index + 1) * window)
    return regions


@pytest.mark.parametrize("kind", KINDS)
def test_duration_is_the_same_at_every_rate(kind: ChimeKind) -> None:
    durations = {rate: len(chime(kind, rate, 0.5)) / 2 / rate for rate in RATES}
    # Short enough not to be in the way; the alarm (repeated every 1.5 s) is meant to be.
    assert 0.15 <= durations[48000] <= (1.0 if kind == "alarm" else 0.5)
    for rate, seconds in durations.items():
        assert abs(seconds - durations[48000]) <= 2 / rate, rate


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("volume", [0.05, 0.6, 1.0])
@pytest.mark.parametrize("kind", KINDS)
def test_peak_is_the_requested_volume(kind: ChimeKind, rate: int, volume: float) -> None:
    signal = samples(chime(kind, rate, volume))
    peak = np.max(np.abs(signal))
    assert peak <= volume * 32767 + 0.5
    assert peak >= volume * 32767 - 1


def test_volume_zero_is_silence_and_bad_arguments_are_refused() -> None:
    assert not np.any(samples(chime("wake", 16000, 0.0)))
    with pytest.raises(ValueError, match="volume"):
        chime("wake", 16000, 1.5)
    with pytest.raises(ValueError, match="volume"):
        chime("wake", 16000, -0.1)
    with pytest.raises(ValueError, match="unknown chime"):
        chime("hello", 16000, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate"):
        chime("done", 0, 0.5)


@pytest.mark.parametrize("rate", RATES)
def test_wake_rises_done_falls_error_buzzes_low_twice(rate: int) -> None:
    notes = {}
    for kind in KINDS:
        signal = samples(chime(kind, rate, 0.8))
        regions = sounding_regions(signal, rate)
        assert len(regions) == (4 if kind == "alarm" else 2), (kind, regions)
        notes[kind] = [dominant_hz(signal[a:b], rate) for a, b in regions]

    def near(measured: float, expected: float) -> bool:
        return abs(measured - expected) <= 0.02 * expected

    assert near(notes["wake"][0], E5) and near(notes["wake"][1], B5)  # rising fifth
    assert near(notes["done"][0], B5) and near(notes["done"][1], E5)  # falling fifth
    assert near(notes["error"][0], A3) and near(notes["error"][1], A3)  # low, twice
    assert all(near(note, C6) for note in notes["alarm"])  # higher than all, four times


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("kind", KINDS)
def test_no_clicks_at_the_edges_or_anywhere(kind: ChimeKind, rate: int) -> None:
    signal = samples(chime(kind, rate, 1.0))
    peak = np.max(np.abs(signal))
    edge = max(1, rate // 1000)  # 1 ms
    # Starts and ends from silence, not at some arbitrary phase.
    assert signal[0] == 0 and signal[-1] == 0
    assert np.max(np.abs(signal[:edge])) <= 0.05 * peak
    assert np.max(np.abs(signal[-edge:])) <= 0.05 * peak
    # A click anywhere (a jump or a kink) spreads energy far above the highest partial;
    # smooth envelopes keep it at the int16 noise floor (~-95 dB; hard note edges: ~-35 dB).
    # No analysis window: it would hide clicks at the very edges.
    power = np.abs(np.fft.rfft(signal)) ** 2
    frequencies = np.fft.rfftfreq(len(signal), 1 / rate)
    far_above = power[frequencies > 1.5 * HIGHEST_PARTIAL_HZ[kind]].sum()
    assert far_above < 1e-7 * power.sum()  # -70 dB (nothing at all where no bin is that high)


def test_chimes_are_pure() -> None:
    assert chime("error", 44100, 0.3) == chime("error", 44100, 0.3)
    assert chime("wake", 24000, 0.3) != chime("done", 24000, 0.3)
