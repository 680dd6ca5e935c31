"""The echo test's measurements on arrays: a known delay, a known level, no echo, clipping;
and what it says when it cannot open a device.

A run is made up here the way talkbox/echo_test.py records one: what the speaker was handed
(with the DAC time of its first sample), what the microphone captured and what the front end
heard of it (each with the ADC time of its first sample), and the daemon's decisions and
turns on the same clock. The real thing, on a sound card of files, is
tests/integration/test_cli_echo_test.py.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyaudio
import pytest

from talkbox.audio.echo_test import (
    ADAPTING_S,
    SILENT_DBFS,
    SWEEP_S,
    TEST_SIGNAL_DBFS,
    Recording,
    analyse,
    echo_delay,
    join_stream,
    level_dbfs,
    make_signal,
    resample,
    speech_frames,
)
from talkbox.config import Config
from talkbox.echo_test import EchoTestRun, as_dict, format_run, open_device
from talkbox.errors import AudioDeviceError

SPEAKER_RATE = 24000
MIC_RATE = 16000
T0 = 500.0  # the clock's time when the speaker's stream began
LEAD_S, TAIL_S = 0.8, 1.2
FRAME_S = 0.02


def noise(length: int, dbfs: float, seed: int = 5) -> npt.NDArray[np.float64]:
    return np.random.default_rng(seed).normal(0.0, 32768 * 10 ** (dbfs / 20), length)


def room(
    *,
    seconds: float = 6.0,
    delay_s: float = 0.12,
    gain_db: float = -12.0,
    residual_db: float = -40.0,
    noise_dbfs: float = -90.0,
    capture_offset_s: float = 0.0125,
    turn_offsets: tuple[float, ...] = (),
    voiced_offsets: tuple[tuple[float, float], ...] = (),
    echo_cancellation: bool = True,
) -> Recording:
    """A run in a room that delays the speaker by `delay_s` and scales it by `gain_db`; the
    canceller leaves `residual_db` of the echo. `turn_offsets`: when the daemon opened turns,
    from the signal's start; `voiced_offsets`: stretches it called speech."""
    signal = make_signal(SPEAKER_RATE, seconds)
    played = np.concatenate(
        [np.zeros(round(LEAD_S * SPEAKER_RATE), np.int16), signal,
         np.zeros(round(TAIL_S * SPEAKER_RATE), np.int16)]
    )  # fmt: skip
    at_mic_rate = resample(played, SPEAKER_RATE, MIC_RATE).astype(np.float64)
    # Capture sample j was at the ADC at captured_start + j / MIC_RATE: it heard the speaker
    # delay_s before that.
    captured_start = T0 + capture_offset_s
    shift = round((capture_offset_s - delay_s) * MIC_RATE)
    assert abs(shift - (capture_offset_s - delay_s) * MIC_RATE) < 1e-6, "keep it whole samples"
    heard = np.zeros(len(at_mic_rate))
    source = np.arange(len(heard)) + shift
    inside = (source >= 0) & (source < len(at_mic_rate))
    heard[inside] = at_mic_rate[source[inside]]
    echo = heard * 10 ** (gain_db / 20)
    room_noise = noise(len(echo), noise_dbfs)
    captured = np.clip(np.rint(echo + room_noise), -32768, 32767).astype(np.int16)
    residual = echo * 10 ** (residual_db / 20) if echo_cancellation else echo
    cleaned = np.clip(np.rint(residual + room_noise), -32768, 32767).astype(np.int16)
    signal_start = T0 + LEAD_S
    frames = np.arange(int(len(captured) / MIC_RATE / FRAME_S)) * FRAME_S + captured_start
    decisions = [
        (float(at), any(signal_start + lo <= at < signal_start + hi for lo, hi in voiced_offsets))
        for at in frames
    ]
    return Recording(
        played=played,
        played_rate=SPEAKER_RATE,
        played_start=T0,
        signal=(signal_start, signal_start + seconds),
        captured=captured,
        cleaned=cleaned,
        capture_rate=MIC_RATE,
        captured_start=captured_start,
        decisions=decisions,
        turn_starts=[signal_start + offset for offset in turn_offsets],
        echo_cancellation=echo_cancellation,
    )


# --- the test signal ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_the_signal_is_speech_like_at_minus_20_dbfs_then_a_sweep(rate: int) -> None:
    signal = make_signal(rate, 6.0)
    assert len(signal) == 6 * rate
    assert level_dbfs(signal) == pytest.approx(TEST_SIGNAL_DBFS, abs=0.2)
    assert np.abs(signal).max() < 32000  # far from clipping any DAC
    sweep_at = round((6.0 - SWEEP_S) * rate)
    # webrtcvad calls the speech-like part speech, as it does a voice.
    assert speech_frames(signal[:sweep_at], rate, 2).mean() > 0.8
    # Nothing above 7 kHz: a microphone at 16 kHz hears all of it.
    spectrum = np.abs(np.fft.rfft(signal.astype(np.float64))) ** 2
    bins = np.fft.rfftfreq(len(signal), 1 / rate)
    assert spectrum[bins > 7200].sum() < 1e-4 * spectrum.sum()
    assert np.array_equal(signal, make_signal(rate, 6.0))  # the same every time


def test_levels_are_dbfs_and_silence_has_a_floor() -> None:
    t = np.arange(16000) / 16000
    half_scale_sine = (16384 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    assert level_dbfs(half_scale_sine) == pytest.approx(-9.03, abs=0.05)  # -6 dB, sine -3 dB
    assert level_dbfs(np.zeros(100, np.int16)) == SILENT_DBFS
    assert level_dbfs(np.zeros(0, np.int16)) == SILENT_DBFS


def test_a_stream_starts_where_most_of_its_chunks_say() -> None:
    chunks = [(T0 + 0.04 * k + (0.03 if k == 2 else 0.0), bytes(1280)) for k in range(9)]
    samples, start = join_stream(chunks, MIC_RATE)
    assert len(samples) == 9 * 640
    assert start == pytest.approx(T0)  # one late callback does not move the stream


# --- the delay ----------------------------------------------------------------------------------


@pytest.mark.parametrize("delay_s", [0.0125, 0.08, 0.3375, -0.05])
def test_the_delay_is_found_on_the_clock_of_the_stamps(delay_s: float) -> None:
    rec = room(delay_s=delay_s, seconds=4.0)
    reference = resample(rec.played, SPEAKER_RATE, MIC_RATE)
    delay = echo_delay(reference, rec.played_start, rec.captured, rec.captured_start, MIC_RATE)
    assert delay.seconds == pytest.approx(delay_s, abs=0.001)
    assert delay.significance > 100


def test_an_echo_in_reverberation_and_noise_is_found_by_its_direct_sound() -> None:
    rec = room(delay_s=0.15, gain_db=-20.0, noise_dbfs=-45.0, seconds=4.0)
    rng = np.random.default_rng(9)
    taps = 4000  # 250 ms of reflections, 20 dB under the direct sound
    response = rng.standard_normal(taps) * np.exp(-6.9 * np.arange(taps) / taps) * 0.1
    response[0] = 1.0
    reverberant = np.convolve(rec.captured.astype(np.float64), response)[: len(rec.captured)]
    delay = echo_delay(
        resample(rec.played, SPEAKER_RATE, MIC_RATE), rec.played_start,
        reverberant.astype(np.int16), rec.captured_start, MIC_RATE,
    )  # fmt: skip
    assert delay.seconds == pytest.approx(0.15, abs=0.001)


def test_noise_alone_is_no_echo() -> None:
    rec = room(gain_db=-200.0, noise_dbfs=-50.0, seconds=4.0)
    reference = resample(rec.played, SPEAKER_RATE, MIC_RATE)
    delay = echo_delay(reference, rec.played_start, rec.captured, rec.captured_start, MIC_RATE)
    assert delay.significance < 8
    silent = np.zeros_like(rec.captured)
    assert echo_delay(reference, T0, silent, T0, MIC_RATE).significance == 0.0


# --- a run analysed -----------------------------------------------------------------------------


def test_a_run_reports_delay_levels_and_reduction() -> None:
    report = analyse(room(delay_s=0.12, gain_db=-12.0, residual_db=-40.0, noise_dbfs=-90.0))
    assert report.delay_ms == pytest.approx(120, abs=1)
    assert report.played_dbfs == pytest.approx(-20, abs=0.5)
    assert report.echo_dbfs == pytest.approx(-32, abs=0.5)
    assert report.echo_relative_db == pytest.approx(-12, abs=0.3)
    assert report.cleaned_dbfs == pytest.approx(-72, abs=1)
    assert report.reduction_db == pytest.approx(40, abs=1)
    assert report.noise_dbfs == pytest.approx(-90, abs=0.5)
    assert report.vad_raw_share > 0.7
    assert report.clipped_share == 0
    assert report.verdict == "safe"
    assert report.verdict_line == (
        "speech barge-in: safe here (echo reduced by 40 dB, no false starts in 6 s of playback)"
    )
    assert report.notes == ()


def test_no_echo_says_to_check_the_speaker() -> None:
    report = analyse(room(gain_db=-200.0, noise_dbfs=-60.0))
    assert report.delay_ms is None
    assert report.verdict == "no_echo"
    assert report.verdict_line == (
        "no echo heard: is the speaker on and audible? (check the volume and output_device)"
    )
    assert "the speaker may be muted" in report.notes[0]


def test_a_clipping_microphone_is_not_safe_and_told_to_lower_its_gain() -> None:
    report = analyse(room(gain_db=+14.0, residual_db=-30.0))
    assert report.clipped_share > 0.01
    assert report.verdict == "not_safe"
    assert report.verdict_line == (
        'speech barge-in: not safe here (the microphone clips) — set barge_in = "wake"'
    )
    assert any("gain is too high" in note for note in report.notes)


def test_turns_opened_over_the_adapted_echo_make_it_not_safe() -> None:
    report = analyse(room(turn_offsets=(3.1, 4.5), voiced_offsets=((3.0, 3.2), (4.4, 4.6))))
    assert report.false_starts == 2 and report.false_starts_adapting == 0
    assert report.false_start_offsets == pytest.approx((3.1, 4.5))
    assert report.verdict == "not_safe"
    assert report.verdict_line == (
        "speech barge-in: not safe here (2 false starts in 3.5 s of playback after the "
        'canceller adapted; echo reduced by 40 dB) — set barge_in = "wake"'
    )


def test_a_turn_opened_while_the_canceller_adapted_is_told_apart() -> None:
    report = analyse(room(turn_offsets=(0.9,), voiced_offsets=((0.7, 0.9),)))
    assert report.false_starts == 0 and report.false_starts_adapting == 1
    assert report.verdict == "safe"
    assert report.verdict_line.startswith(
        "speech barge-in: safe here once the echo canceller has adapted (echo reduced by 40 dB"
    )
    assert any("the first answer after talkbox starts" in note for note in report.notes)


def test_speech_decided_often_over_the_echo_is_not_safe_even_without_a_turn() -> None:
    voiced = tuple((at, at + 0.04) for at in np.arange(ADAPTING_S + 0.2, 5.8, 0.2))
    report = analyse(room(voiced_offsets=voiced))
    assert report.decision_share > 0.1
    assert report.false_starts == 0
    assert report.verdict == "not_safe"
    assert "of the echo's frames taken for speech" in report.verdict_line


def test_without_echo_cancellation_the_echo_is_heard_as_speech() -> None:
    report = analyse(room(echo_cancellation=False, turn_offsets=(0.2,)))
    assert report.false_starts == 1 and report.false_starts_adapting == 0
    assert report.verdict == "not_safe"
    assert "echo cancellation is off" in report.verdict_line
    assert any("echo_cancellation = false" in note for note in report.notes)


# --- opening the devices ------------------------------------------------------------------------


def refused(code: int) -> Callable[[], None]:
    """A device's start() that fails as PortAudio's open does, with `code`."""

    def start() -> None:
        try:
            raise OSError(code, "Device unavailable")
        except OSError as exc:
            raise AudioDeviceError("input device 'mic': cannot open it") from exc

    return start


def test_a_busy_device_says_to_stop_the_daemon(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "no.sock")
    with pytest.raises(AudioDeviceError) as raised:
        open_device(refused(pyaudio.paDeviceUnavailable), "input", "mic", nowhere)
    assert str(raised.value) == (
        "input device 'mic' is busy (is talkbox running?): "
        "stop the daemon first: sudo systemctl stop talkbox"
    )


def test_any_device_error_while_the_daemon_runs_says_to_stop_it(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        with pytest.raises(AudioDeviceError) as raised:
            open_device(refused(pyaudio.paInvalidDevice), "input", "mic", str(path))
    assert str(raised.value).endswith(
        "(the daemon is running and may hold the sound card: "
        "stop the daemon first: sudo systemctl stop talkbox)"
    )
    # Without the daemon, the error is the device's own.
    with pytest.raises(AudioDeviceError) as raised:
        open_device(refused(pyaudio.paInvalidDevice), "input", "mic", str(tmp_path / "none"))
    assert str(raised.value) == "input device 'mic': cannot open it"


# --- what it prints -----------------------------------------------------------------------------


def test_the_report_reads_as_labelled_paragraphs_and_ends_with_the_verdict() -> None:
    report = analyse(room(turn_offsets=(0.9,), voiced_offsets=((0.7, 0.9),)))
    run = EchoTestRun(Config(), report, 0.02, 0.04, None, 0, T0 + LEAD_S)
    lines = format_run(run).splitlines()
    labels = [line[:13].strip() for line in lines[:-1] if not line.startswith(" ")]
    assert labels == [
        "speaker", "test sound", "room noise", "echo delay", "echo level", "voice", "daemon",
        "note",
    ]  # fmt: skip
    assert all(len(line) <= 100 for line in lines[:-1])
    assert lines[-1] == report.verdict_line
    text = " ".join(line.strip() for line in lines)
    assert "120 ms from speaker to microphone" in text
    assert "(output 20 ms, input 40 ms)" in text
    assert "barge-in: 0 (and 1 in the canceller's first 2.5 s)" in text
    numbers = as_dict(run)
    assert numbers["delay_ms"] == pytest.approx(120, abs=1)
    assert numbers["false_starts"] == 0 and numbers["false_starts_adapting"] == 1
    assert numbers["verdict"] == "safe" and numbers["canceller"] is None
