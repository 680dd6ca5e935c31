"""`talkbox echo-test` as a real process on a sound card made of files, in a room made of numpy.

The speaker is a playback FIFO drained in real time (`FifoDrainer`: what it drains is what
the room hears, and when); the microphone a capture FIFO fed in real time, one 40 ms period
at a time, by `EchoLoop`: each sample is what the speaker played 80 ms before it, through a
short reverberation, 10 dB down, over room noise at -65 dBFS. The loop runs on
time.monotonic(), the clock the command stamps its audio with, so the room's delay is exact
on that clock. (support.room is the full simulated room, with drift, clipping and stalls; this
minimal one was written beside it, before it was merged, and is all this test needs.)

What the command reports on top of that delay is its devices' error: the output and input
latencies PortAudio reports against when the FIFOs really took and gave the audio. Measured
in each run (see test_the_echo_test_measures_the_room_and_calls_it_safe): the speaker's
stamps come 32-38 ms before the drain takes the sound, the microphone's 40 ms before its
sound was written, so the loop adds -8 to -2 ms and the command reports about 78 ms.
"""

from __future__ import annotations

import array
import fcntl
import json
import termios
from collections import deque
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soxr

from support.alsa import AlsaSandbox, FifoDrainer, FifoFeeder, alsa_sandbox, playback_pcm
from support.cli import CliRun, RunningTalkbox, environment
from talkbox.audio.echo_test import SAFE_DECISION_SHARE, make_signal

MIC_RATE = 16000
SPEAKER_RATE = 24000
MIC_PERIOD = MIC_RATE * 40 // 1000  # the capture's own 40 ms buffers: one FIFO write each
ROOM_DELAY_MS = 80
ROOM_GAIN_DB = -10.0
ROOM_NOISE_DBFS = -65.0
ECHO_SECONDS = 8.0
DELAY_TOLERANCE_MS = 25
ENV_NOT_INHERITED = ("TALKBOX_API_KEY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")

pytestmark = pytest.mark.audio


class EchoLoop(FifoFeeder):
    """The microphone of a room: each sample it writes is what the speaker played `delay_s`
    before it, through `response` (at the mic's rate), plus noise.

    Both ends run on steady clocks, as a sound card's converters do: the microphone's samples
    are spaced by its rate from when the first period was written, and the speaker's drained
    samples by theirs, from an origin fixed by when the drainer took them (re-fixed only when
    the drain really lost time, say while the player was not yet writing). Per-read times
    would jitter by the drainer's ticks, and an echo path that moves by a millisecond from
    one read to the next is not a room any canceller could learn."""

    def __init__(
        self,
        fifo: Path,
        speaker: FifoDrainer,
        *,
        delay_s: float,
        gain_db: float,
        response: npt.NDArray[np.float64],
        noise_dbfs: float,
        speaker_rate: int = SPEAKER_RATE,
    ) -> None:
        super().__init__(fifo, b"", rate=MIC_RATE, period_frames=MIC_PERIOD)
        self.speaker = speaker
        self.speaker_rate = speaker_rate
        self.delay_s = delay_s
        self.response = response * 10 ** (gain_db / 20)
        self.noise_rms = 32768 * 10 ** (noise_dbfs / 20)
        self._rng = np.random.default_rng(7)
        # The speaker's stream at the mic's rate; sample i of it was played at
        # `_origin + (i + _dropped) / MIC_RATE`.
        self._seen = 0  # drainer records taken
        self._drained = 0  # speaker-rate samples taken
        self._to_mic_rate = soxr.ResampleStream(speaker_rate, MIC_RATE, 1, dtype="float64")
        self._played = np.zeros(0)
        self._dropped = 0
        self._origin: float | None = None
        self._recent_origins: deque[float] = deque(maxlen=100)

    def _write_when_room(self, chunk: bytes) -> bool:
        # A sound card's microphone does not wait for its reader: what nobody took in time
        # is lost (an overrun). Queued in the FIFO instead, it would reach the command late,
        # in a burst, while the command was still loading (its stamps then say so, and the
        # echo canceller would be paired with the wrong stretch of the speaker).
        queued = array.array("i", [0])
        fcntl.ioctl(self._fd, termios.FIONREAD, queued)
        if queued[0] >= 2 * self.period_bytes:
            return True
        return super()._write_when_room(chunk)

    def _next_period(self) -> bytes:
        # Heard over the period before it is due (the feeder's schedule, not its wake-up), as
        # a card delivers a buffer it has filled.
        first = self.scheduled - MIC_PERIOD / MIC_RATE
        self._take_speaker()
        taps = len(self.response)
        played = np.zeros(MIC_PERIOD + taps - 1)
        if self._origin is not None:
            # The speaker's samples from `delay_s` (and the response's length) before.
            at = round((first - self.delay_s - self._origin) * MIC_RATE) - self._dropped
            index = np.arange(at - (taps - 1), at + MIC_PERIOD)
            inside = (index >= 0) & (index < len(self._played))
            played[inside] = self._played[index[inside]]
        echo = fft_convolve(played, self.response)[taps - 1 : taps - 1 + MIC_PERIOD]
        heard = echo + self._rng.normal(0.0, self.noise_rms, MIC_PERIOD)
        return np.clip(np.rint(heard), -32768, 32767).astype("<i2").tobytes()

    def _take_speaker(self) -> None:
        records = self.speaker.records[self._seen :]  # appended by the drainer's thread
        self._seen += len(records)
        pieces = [self._played]
        for drained_at, pcm in records:
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
            self._drained += len(samples)
            pieces.append(self._to_mic_rate.resample_chunk(samples))
            # A read takes what the DAC played since the last one, ending now.
            self._recent_origins.append(drained_at - self._drained / self.speaker_rate)
        self._played = np.concatenate(pieces)
        if len(self._recent_origins) >= 20:
            origin = float(np.median(self._recent_origins))
            if self._origin is None or abs(origin - self._origin) > 0.003:
                self._origin = origin
        keep = 2 * MIC_RATE  # the delay and the response, with room to spare
        if len(self._played) > keep:
            self._dropped += len(self._played) - keep
            self._played = self._played[-keep:]


def fft_convolve(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    size = 1 << (len(a) + len(b) - 2).bit_length()
    full: npt.NDArray[np.float64] = np.fft.irfft(np.fft.rfft(a, size) * np.fft.rfft(b, size), size)
    return full[: len(a) + len(b) - 1]


def room_response(rt60_s: float = 0.2, seed: int = 3) -> npt.NDArray[np.float64]:
    """The direct sound, then a decaying tail of reflections 25 dB under it."""
    taps = round(rt60_s * MIC_RATE)
    rng = np.random.default_rng(seed)
    response = rng.standard_normal(taps) * np.exp(-6.9 * np.arange(taps) / taps) * 0.05
    response[0] = 1.0
    return response


def echo_test(
    sandbox: AlsaSandbox, *, gain_db: float, seconds: float, output_device: str = "speaker",
    speaker_rate: int = SPEAKER_RATE,
) -> tuple[CliRun, float]:
    """Run `talkbox echo-test --json` in the room, the speaker's card running at
    `speaker_rate`; (the run, when the drainer first heard the signal)."""
    drainer = FifoDrainer(sandbox.playback_path, rate=speaker_rate)
    loop = EchoLoop(
        sandbox.capture_path, drainer, delay_s=ROOM_DELAY_MS / 1000, gain_db=gain_db,
        response=room_response(), noise_dbfs=ROOM_NOISE_DBFS, speaker_rate=speaker_rate,
    )  # fmt: skip
    drainer.start()
    loop.start()
    env = environment(ENV_NOT_INHERITED, base=sandbox.env)
    running = RunningTalkbox(
        "echo-test", "--json", "--seconds", str(seconds),
        "--input-device", "mic", "--output-device", output_device, env=env,
    )  # fmt: skip
    try:
        run = running.finish()
    finally:
        if running.process.poll() is None:
            running.kill()
        loop.stop()
        drainer.stop()
    return run, first_sound(drainer, speaker_rate)


def first_sound(drainer: FifoDrainer, rate: int) -> float:
    """When the drain took the first sample that was not silence (NaN: it never did)."""
    for drained_at, pcm in drainer.records:
        samples = np.frombuffer(pcm, dtype="<i2")
        loud = np.flatnonzero(samples)
        if len(loud):
            return drained_at - (len(samples) - 1 - loud[0]) / rate
    return float("nan")


def test_the_echo_test_measures_the_room_and_calls_it_safe(tmp_path: Path) -> None:
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True, playback_fifo=True) as sandbox:
        run, drained_at = echo_test(sandbox, gain_db=ROOM_GAIN_DB, seconds=ECHO_SECONDS)

    assert run.exit_code == 0, run.stderr
    result = json.loads(run.stdout)
    # The loop's own latency: the errors of the two stamps the command pairs, on this card.
    # The speaker's: the drain took the signal's first sound this long after the DAC time the
    # echo canceller's reference gave it (measured: 32-38 ms, the FIFO and ALSA's buffer
    # behind the 20 ms output latency PortAudio reports). The microphone's: the capture FIFO
    # hands each period over the moment it is written, so the input latency PortAudio
    # reports (40 ms) is time that never passed, and the capture's stamps are that early.
    signal_sounds_at = result["signal_dac_time"] + first_sound_offset(ECHO_SECONDS)
    output_error_ms = 1000 * (drained_at - signal_sounds_at)
    input_error_ms = -result["input_latency_ms"]
    loop_ms = output_error_ms + input_error_ms  # measured: -8 to -2 ms
    print(
        f"loop latency {loop_ms:.1f} ms (output stamps {output_error_ms:+.1f} ms, input "
        f"{input_error_ms:+.1f} ms)"
    )
    # The stamps' errors move with the machine's load (seen: the loop from -43 to -2 ms); the
    # delay itself is measured on the signals and comes out near the room's.
    assert abs(result["delay_ms"] - ROOM_DELAY_MS) <= DELAY_TOLERANCE_MS + abs(loop_ms), result
    # -20 dBFS played, 10 dB down (the reverberation adds a little), over the room's noise.
    assert result["played_dbfs"] == pytest.approx(-20, abs=1)
    assert result["echo_relative_db"] == pytest.approx(ROOM_GAIN_DB, abs=1.5)
    assert result["noise_dbfs"] == pytest.approx(ROOM_NOISE_DBFS, abs=1.5)
    assert result["reduction_db"] > 20
    # webrtcvad takes the echo for speech; once the canceller adapted, the daemon opened no
    # turn (while it adapts, a burst of echo opens one in about one run of 6 to 8 here: the
    # report says so, in a note; see ADAPTING_S).
    assert result["vad_raw_share"] > 0.7
    assert result["vad_cleaned_share"] < 0.15
    # On a loaded machine a false start is seen now and then (issue 13 is open on it), and in
    # about one run of 15 to 20 more than SAFE_DECISION_SHARE of the echo's frames are taken
    # for speech (0-0.015 is usual). The verdict must then say which rule it
    # broke; the share must stay far below the raw echo's.
    assert result["false_starts"] <= 1, result
    assert result["false_starts_adapting"] <= 1, result
    assert result["decision_share"] <= 0.1, result
    if result["false_starts"]:
        assert result["verdict"] == "not_safe"
        assert result["verdict_line"].startswith("speech barge-in: not safe here (1 false start")
    elif result["decision_share"] > SAFE_DECISION_SHARE:
        assert result["verdict"] == "not_safe"
        assert result["verdict_line"].startswith("speech barge-in: not safe here (")
        assert "of the echo's frames taken for speech" in result["verdict_line"]
    else:
        assert result["verdict"] == "safe"
        assert result["verdict_line"].startswith("speech barge-in: safe here ")
        assert "echo reduced by " in result["verdict_line"]
    assert result["canceller"]["short_reference_samples"] == 0


def first_sound_offset(seconds: float) -> float:
    """Where the test signal's first sample that is not silence is, in seconds."""
    signal = make_signal(SPEAKER_RATE, seconds)
    return float(np.flatnonzero(signal)[0]) / SPEAKER_RATE


def test_on_a_card_that_runs_at_another_rate_it_measures_what_was_played(
    tmp_path: Path,
) -> None:
    """A speaker behind plug whose card runs at 48 kHz only (as dmix does): the signal is
    made at output_rate (24 kHz) and played at 48 kHz, converted by talkbox; the report's
    levels and delay are measured on what the device was really handed."""
    directory = tmp_path / "alsa"
    fixed = {"speaker48k": playback_pcm(directory / "playback.raw", rate=48000)}
    with alsa_sandbox(directory, capture_fifo=True, playback_fifo=True, extra_pcms=fixed) as box:
        run, heard = echo_test(
            box, gain_db=ROOM_GAIN_DB, seconds=5.0, output_device="speaker48k", speaker_rate=48000
        )

    assert run.exit_code == 0, run.stderr
    result = json.loads(run.stdout)
    assert heard == heard, "the speaker did play"  # not NaN
    assert result["played_dbfs"] == pytest.approx(-20, abs=1)
    assert result["echo_relative_db"] == pytest.approx(ROOM_GAIN_DB, abs=1.5)
    assert result["delay_ms"] is not None
    assert abs(result["delay_ms"] - ROOM_DELAY_MS) <= 2 * DELAY_TOLERANCE_MS, result


def test_a_microphone_that_hears_nothing_of_the_speaker_says_so(tmp_path: Path) -> None:
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True, playback_fifo=True) as sandbox:
        run, heard = echo_test(sandbox, gain_db=-200.0, seconds=5.0)

    assert run.exit_code == 0, run.stderr
    result = json.loads(run.stdout)
    assert heard == heard, "the speaker did play"  # not NaN
    assert result["delay_ms"] is None
    assert result["verdict"] == "no_echo"
    assert result["verdict_line"] == (
        "no echo heard: is the speaker on and audible? (check the volume and output_device)"
    )
    assert any("speaker may be muted" in note for note in result["notes"])


def test_without_a_sound_card_it_says_so_as_talkbox_devices_does(tmp_path: Path) -> None:
    with alsa_sandbox(tmp_path / "alsa", sound_card=False) as sandbox:
        env = environment(ENV_NOT_INHERITED, base=sandbox.env)
        run = RunningTalkbox("echo-test", env=env).finish()

    assert run.exit_code == 1
    assert run.stdout == ""
    assert run.stderr.startswith(
        "talkbox: no sound card found: PortAudio lists no audio device\n"
        "check that `aplay -l` (speakers) and `arecord -l` (microphones) list the card"
    )


def test_a_missing_speaker_in_the_config_is_named(tmp_path: Path) -> None:
    config = tmp_path / "talkbox.toml"
    config.write_text('[audio]\ninput_device = "mic"\noutput_device = "HDMI"\n')
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True) as sandbox:
        env = environment(ENV_NOT_INHERITED, base=sandbox.env)
        feeder = FifoFeeder(sandbox.capture_path, b"", rate=MIC_RATE, period_frames=MIC_PERIOD)
        feeder.start()
        try:
            run = RunningTalkbox("echo-test", "--config", str(config), env=env).finish()
        finally:
            feeder.stop()

    assert run.exit_code == 1
    assert run.stdout == ""  # found out before asking the room to be quiet
    assert run.stderr.startswith(
        "talkbox: audio.output_device = 'HDMI' matches no output device; "
        "available output devices:\n"
    )
