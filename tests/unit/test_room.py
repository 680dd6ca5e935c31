"""The simulated room (support.room): the microphone hears the speaker, delayed, reverberated,
scaled, drifting, on the device clock, whatever the timing of the two threads that drive it.

Most tests drive the room synchronously with explicit device times, as `FifoDrainer` (a 5 ms
tick that reads what played since the last one) and `FifoFeeder` (a 40 ms period, asked at
its scheduled time) would; one drives the real drainer and feeder threads over real FIFOs.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import webrtcvad

from support.alsa import WIDE_CHANNELS, FifoDrainer, FifoFeeder
from support.room import (
    MIC_RATE,
    SPEAKER_RATE,
    EchoRoom,
    RoomSpec,
    clip16,
    from_first_sound,
    measure_delay,
    on_device_clock,
    person,
    rms_dbfs,
    speech_level_dbfs,
    to_rate,
)
from support.speech import Pcm, concat, silence, speak

Floats = npt.NDArray[np.float64]

T0 = 1000.0  # device time at which the speaker's stream and the microphone's both begin
TICK_S = 0.005  # FifoDrainer's tick
PERIOD = 640  # 40 ms microphone periods at 16 kHz, as the daemon captures
PERIOD_S = PERIOD / MIC_RATE


@dataclass
class Run:
    room: EchoRoom
    mic: Floats
    """The echo, from device time T0 on, in PCM16 units."""
    played: list[tuple[bytes, float]]
    mic_at: list[float]
    cpu_s: float
    """CPU time spent inside the room."""


def simulate(
    spec: RoomSpec,
    speaker: Pcm,
    seconds: float,
    *,
    drain_late: Callable[[float], float] | None = None,
    feed_late: Callable[[float], float] | None = None,
) -> Run:
    """Play `speaker` (24 kHz, from T0) for `seconds` and record the microphone's echo.

    Drain ticks come every 5 ms, each reading what played since the previous tick (as
    FifoDrainer's budget does); `drain_late(nominal)` makes a tick later (the first one stays
    on time, so every run's stream starts at exactly T0). Periods are asked for at their
    scheduled time, at a moment `feed_late(scheduled)` later. Events run in moment order.
    """
    room = EchoRoom(spec, wait_s=0)  # nobody else will deliver while we wait
    ticks = T0 + TICK_S * np.arange(1, round(seconds / TICK_S) + 1)
    if drain_late is not None:
        ticks[1:] += [drain_late(t) for t in ticks[1:]]
    events: list[tuple[float, int, float]] = [(t, 0, t) for t in np.sort(ticks)]
    for n in range(1, round(seconds / PERIOD_S) + 1):
        scheduled = T0 + n * room.period_s(PERIOD)  # on the microphone's own clock
        events.append((scheduled + (feed_late(scheduled) if feed_late else 0.0), 1, scheduled))
    events.sort()
    played: list[tuple[bytes, float]] = []
    mic: list[npt.NDArray[np.float32]] = []
    mic_at: list[float] = []
    drained = 0
    cpu = 0.0
    for _, kind, at in events:
        if kind == 0:
            upto = min(len(speaker), math.floor((at - T0) * SPEAKER_RATE + 1e-6))
            block = speaker[drained:upto].astype("<i2").tobytes() if upto > drained else b""
            drained = max(drained, upto)
            started = time.thread_time()
            room.played(block, at=at)
            cpu += time.thread_time() - started
            played.append((block, at))
        else:
            started = time.thread_time()
            mic.append(room.echo(PERIOD, at=at))
            cpu += time.thread_time() - started
            mic_at.append(at)
    return Run(room, np.concatenate(mic).astype(np.float64), played, mic_at, cpu)


def noise(seconds: float, dbfs: float = -20.0, seed: int = 1) -> Pcm:
    """White noise at 24 kHz: a sharp cross-correlation peak."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(round(seconds * SPEAKER_RATE)) * 32768 * 10 ** (dbfs / 20)
    pcm: Pcm = np.clip(np.rint(samples), -32768, 32767).astype(np.int16)
    return pcm


def reply_speech(seconds: float = 8.0) -> Pcm:
    """espeak-ng sentences at 24 kHz, at the room's reference speaker level (-20 dBFS)."""
    texts = (
        "The weather today is cloudy with a chance of light rain in the afternoon.",
        "Turn left at the church and the bakery is on your right hand side.",
        "Dinner will be ready at six, and there is soup for anyone who is hungry.",
    )
    voices = ("en-us", "en-gb", "en-us+f3")
    clip = concat(*(speak(t, voice=v, rate=SPEAKER_RATE, pad=(0.2, 0.3))
                    for t, v in zip(texts, voices, strict=True)))[: round(seconds * SPEAKER_RATE)]
    gain = 10 ** ((RoomSpec().speaker_dbfs - speech_level_dbfs(clip, SPEAKER_RATE)) / 20)
    pcm: Pcm = np.clip(np.rint(clip * gain), -32768, 32767).astype(np.int16)
    return pcm


def delay_at(reference16k: Floats, mic: Floats, start_s: float, window_s: float) -> float:
    """The echo's delay (s) measured on the stretch of reference from `start_s` on."""
    a, b = round(start_s * MIC_RATE), round((start_s + window_s) * MIC_RATE)
    margin = round(0.5 * MIC_RATE)
    return measure_delay(reference16k[a:b], mic[a:b + margin], MIC_RATE, max_lag_s=0.5)


# ----- delay


@pytest.mark.parametrize("delay_ms", [20, 120, 300])
def test_the_echo_arrives_delay_ms_after_the_drain_played_it(delay_ms: int) -> None:
    speaker = noise(2.0)
    run = simulate(RoomSpec(delay_ms=delay_ms, rt60_s=0.3, noise_dbfs=None), speaker, 3.0)
    measured = delay_at(to_rate(speaker, SPEAKER_RATE, MIC_RATE), run.mic, 0.0, 2.0)
    # The design's fixed offset is 0 on these time lines (support.room's docstring).
    assert measured * 1000 == pytest.approx(delay_ms, abs=1.0)
    assert run.room.underflows == 0 and run.room.late_blocks == 0 and run.room.mic_jumps == 0


def test_before_the_speaker_plays_the_microphone_hears_only_the_noise_floor() -> None:
    room = EchoRoom(RoomSpec(noise_dbfs=None), wait_s=0)
    assert not np.any(room.echo(PERIOD, at=T0))
    room.played(b"", at=T0 + 0.005)  # ticks that drained nothing
    room.played(b"", at=T0 + 0.010)
    assert not np.any(room.echo(PERIOD, at=T0 + 0.04))
    assert room.underflows == 0

    floor = EchoRoom(RoomSpec(noise_dbfs=-65.0), wait_s=0)
    heard = np.concatenate([floor.echo(PERIOD, at=T0 + n * PERIOD_S) for n in range(50)])
    pcm = np.frombuffer(clip16(heard), dtype="<i2")
    assert rms_dbfs(pcm) == pytest.approx(-65.0, abs=0.5)
    assert np.count_nonzero(pcm) > 0.9 * len(pcm)  # never digital silence


def test_a_pause_in_the_reply_is_a_pause_of_the_same_length_in_the_echo() -> None:
    spec = RoomSpec(delay_ms=60, rt60_s=0.1, noise_dbfs=None)
    first, second = noise(1.0, seed=2), noise(1.0, seed=3)
    speaker = concat(first, silence(0.7, SPEAKER_RATE), second)
    # The drain reads nothing during the pause (the daemon wrote nothing), then goes on.
    pause = (T0 + 1.0, T0 + 1.7)
    run = simulate(spec, speaker, 3.0)
    room = EchoRoom(spec, wait_s=0)
    for pcm, at in run.played:
        room.played(b"" if pause[0] < at <= pause[1] else pcm, at=at)
    mic = np.concatenate([room.echo(PERIOD, at=at) for at in run.mic_at]).astype(np.float64)
    reference = to_rate(speaker, SPEAKER_RATE, MIC_RATE)
    assert delay_at(reference, mic, 0.0, 1.0) * 1000 == pytest.approx(60, abs=1.0)
    assert delay_at(reference, mic, 1.7, 1.0) * 1000 == pytest.approx(60, abs=1.0)
    assert room.underflows == 0 and room.late_blocks == 0


# ----- level, reverberation, clipping


@pytest.mark.parametrize("echo_gain_db", [-12.0, 0.0, 6.0])
def test_a_reply_at_the_reference_level_is_heard_echo_gain_db_from_a_person(
    echo_gain_db: float,
) -> None:
    spec = RoomSpec(delay_ms=100, rt60_s=0.3, echo_gain_db=echo_gain_db, noise_dbfs=None)
    reply = reply_speech(6.0)
    run = simulate(spec, reply, 7.0)
    echo = run.mic[round(0.1 * MIC_RATE):]
    # Broadband: the room's gain (speaker PCM to microphone PCM) is exactly spec.gain_db.
    energy_gain_db = (rms_dbfs(echo) + 10 * math.log10(len(echo) / MIC_RATE)) - (
        rms_dbfs(reply) + 10 * math.log10(len(reply) / SPEAKER_RATE))
    assert energy_gain_db == pytest.approx(spec.gain_db, abs=1.0)
    # And as speech: relative to a person at person_dbfs.
    relative = speech_level_dbfs(echo, MIC_RATE) - spec.person_dbfs
    assert relative == pytest.approx(echo_gain_db, abs=1.0)


def reverberation_time(echo: Floats, rate: int) -> float:
    """RT60 from the energy decay curve (Schroeder) of an impulse's echo, fitted -10..-40 dB."""
    start = int(np.argmax(np.abs(echo)))
    energy = echo[start:] ** 2
    decay = np.cumsum(energy[::-1])[::-1]
    decay_db = 10 * np.log10(decay / decay[0] + 1e-30)
    fit = (decay_db <= -10) & (decay_db >= -40)
    slope, _ = np.polyfit(np.flatnonzero(fit) / rate, decay_db[fit], 1)
    return float(-60 / slope)


@pytest.mark.parametrize("rt60_s", [0.1, 0.3, 0.6])
def test_the_reverberant_tail_decays_60_db_in_rt60_s(rt60_s: float) -> None:
    click = np.zeros(SPEAKER_RATE, dtype=np.int16)
    click[SPEAKER_RATE // 10] = 16000
    run = simulate(RoomSpec(delay_ms=50, rt60_s=rt60_s, noise_dbfs=None), click, 1.0 + rt60_s)
    assert reverberation_time(run.mic, MIC_RATE) == pytest.approx(rt60_s, rel=0.1)
    # The direct sound is the strongest single arrival (cross-correlation finds the delay).
    assert int(np.argmax(np.abs(run.mic))) == pytest.approx(0.15 * MIC_RATE, abs=2)


def third_harmonic_db(echo: Floats, fundamental_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(echo * np.hanning(len(echo))))
    bin_hz = MIC_RATE / len(echo)

    def peak(f: float) -> float:
        k = round(f / bin_hz)
        return float(spectrum[k - 3:k + 4].max())

    return 20 * math.log10(peak(3 * fundamental_hz) / peak(fundamental_hz))


def test_a_cheap_speaker_soft_clips_loud_audio() -> None:
    t = np.arange(2 * SPEAKER_RATE) / SPEAKER_RATE
    loud = np.rint(28000 * np.sin(2 * np.pi * 500 * t)).astype(np.int16)
    heard = {}
    for drive in (0.0, 3.0):
        run = simulate(RoomSpec(delay_ms=50, rt60_s=0.1, drive=drive, noise_dbfs=None), loud, 2.0)
        heard[drive] = third_harmonic_db(run.mic[MIC_RATE // 2: 3 * MIC_RATE // 2], 500)
    assert heard[0.0] < -60
    assert heard[3.0] > -30


# ----- clocks and threads


def test_clock_drift_moves_the_echo_by_drift_ppm_microseconds_a_second() -> None:
    speaker = noise(60.0, seed=4)
    reference = to_rate(speaker, SPEAKER_RATE, MIC_RATE)
    change_ms = {}
    for ppm in (100.0, 0.0, -100.0):
        run = simulate(RoomSpec(delay_ms=120, rt60_s=0.1, drift_ppm=ppm, noise_dbfs=None),
                       speaker, 60.5)
        early = delay_at(reference, run.mic, 1.0, 4.0)
        late = delay_at(reference, run.mic, 55.0, 4.0)
        assert early * 1000 == pytest.approx(120 + ppm * 1e-3 * 3.0, abs=0.2)
        change_ms[ppm] = (late - early) * 1000
        assert run.room.underflows == 0
    # 54 s between the windows' centres: 5.4 ms at 100 ppm.
    assert change_ms[100.0] == pytest.approx(5.4, abs=0.2)
    assert change_ms[0.0] == pytest.approx(0.0, abs=0.05)
    assert change_ms[-100.0] == pytest.approx(-5.4, abs=0.2)


def test_jittery_threads_lose_and_repeat_no_echo() -> None:
    spec = RoomSpec(delay_ms=20, rt60_s=0.3, drift_ppm=50, noise_dbfs=None)  # the tightest delay
    speaker = noise(4.0, seed=5)
    on_time = simulate(spec, speaker, 4.0)
    rng = np.random.default_rng(6)
    # Ticks up to 10 ms late (so they also come out of order and in bursts), periods asked
    # for up to 30 ms late; FifoDrainer's blocks then vary from 0 to 15 ms.
    jittery = simulate(spec, speaker, 4.0, drain_late=lambda _: rng.uniform(0, 0.010),
                       feed_late=lambda _: rng.uniform(0, 0.030))
    sizes = {len(pcm) for pcm, _ in jittery.played[:800]}
    assert min(sizes) == 0 and max(sizes) > 300  # the jitter did happen
    assert jittery.room.underflows == 0
    assert jittery.room.late_blocks == 0 and jittery.room.mic_jumps == 0
    # Sample for sample the echo of the run on time: nothing dropped, repeated or shifted.
    np.testing.assert_allclose(jittery.mic, on_time.mic, atol=1e-3)


def test_a_stalled_drain_drops_echo_counted_and_keeps_the_timing() -> None:
    spec = RoomSpec(delay_ms=20, rt60_s=0.3, noise_dbfs=None)
    speaker = noise(4.0, seed=7)
    on_time = simulate(spec, speaker, 4.0)

    def stall(nominal: float) -> float:  # the drain thread sleeps 60 ms, twice
        for start in (T0 + 1.0, T0 + 2.5):
            if start <= nominal < start + 0.06:
                return start + 0.06 - nominal
        return 0.0

    stalled = simulate(spec, speaker, 4.0, drain_late=stall)
    assert stalled.room.underflows > 0
    differs = ~np.all(np.isclose(stalled.mic, on_time.mic, atol=1e-3).reshape(-1, PERIOD), axis=1)
    # Exactly the periods that ran dry differ; before and after, the same echo at the same time.
    assert np.count_nonzero(differs) == stalled.room.underflows
    assert set(np.flatnonzero(differs)) <= set(range(25, 28)) | set(range(62, 65))
    assert stalled.room.late_blocks == 0 and stalled.room.mic_jumps == 0


def widen(pcm: bytes) -> bytes:
    """PCM16 mono as a playback_pcm() device writes it: S32_LE stereo (FifoDrainer narrows)."""
    mono = np.frombuffer(pcm, dtype="<i2").astype("<i4") << 16
    return np.repeat(mono, WIDE_CHANNELS).astype("<i4").tobytes()


def test_the_real_drainer_and_feeder_threads_carry_the_echo(tmp_path: Path) -> None:
    spec = RoomSpec(delay_ms=30, rt60_s=0.2, noise_dbfs=None)
    room = EchoRoom(spec, keep=True)
    speaker_fifo, mic_fifo = tmp_path / "speaker", tmp_path / "mic"
    os.mkfifo(speaker_fifo)
    os.mkfifo(mic_fifo)
    drainer = FifoDrainer(speaker_fifo, rate=SPEAKER_RATE, room=room)
    feeder = FifoFeeder(mic_fifo, b"", rate=MIC_RATE, period_frames=PERIOD, room=room)
    reply = noise(1.0, seed=8).tobytes() + noise(1.0, seed=9).tobytes()
    heard = bytearray()
    stop = threading.Event()

    def play() -> None:  # 20 ms periods, as PortAudio writes them; a pause after 1 s
        with open(speaker_fifo, "wb", buffering=0) as out:
            for offset in range(0, len(reply), 960):
                if offset == len(reply) // 2:
                    time.sleep(0.5)
                out.write(widen(reply[offset:offset + 960]))

    def capture() -> None:
        fd = os.open(mic_fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            while not stop.wait(0.01):
                with contextlib.suppress(BlockingIOError):
                    heard.extend(os.read(fd, 65536))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=play), threading.Thread(target=capture)]
    drainer.start()
    feeder.start()
    for thread in threads:
        thread.start()
    threads[0].join(timeout=10)
    time.sleep(0.4)
    stop.set()
    threads[1].join(timeout=5)
    feeder.stop()
    drainer.stop()

    assert room.underflows == 0 and room.late_blocks == 0 and room.mic_jumps == 0
    # What the FIFO carried is the room's echo, period by period.
    written = b"".join(clip16(out) for _, out in room.echo_log)
    assert len(heard) >= len(written) - 2 * PERIOD * 2 and written.startswith(bytes(heard))
    # The same echo as an ideal room that had all of the speaker at once: no jitter left.
    ideal = EchoRoom(spec, wait_s=0)
    ideal.backlog_s = math.inf
    for at, pcm in room.played_log:
        ideal.played(pcm, at=at)
    for at, out in room.echo_log:
        np.testing.assert_allclose(out, ideal.echo(PERIOD, at=at), atol=1e-3)
    # And 30 ms late, after the pause too, on the device clock.
    speaker_start, speaker = on_device_clock(room.played_log, SPEAKER_RATE)
    mic_start, mic = on_device_clock(room.echo_log, MIC_RATE)
    mic = mic[round((speaker_start - mic_start) * MIC_RATE):]
    reference = to_rate(speaker, SPEAKER_RATE, MIC_RATE)
    assert delay_at(reference, mic, 0.0, 0.9) * 1000 == pytest.approx(30, abs=1.0)
    assert delay_at(reference, mic, 1.55, 0.9) * 1000 == pytest.approx(30, abs=1.0)


# ----- what later tests rely on


def test_webrtcvad_calls_the_echo_of_a_reply_speech() -> None:
    spec = RoomSpec(delay_ms=120, rt60_s=0.3, echo_gain_db=0.0)  # with the noise floor
    reply = reply_speech(8.0)
    run = simulate(spec, reply, 8.2)
    reference = to_rate(reply, SPEAKER_RATE, MIC_RATE)
    vad = webrtcvad.Vad(2)
    frame = MIC_RATE // 50
    shift = round(0.12 * MIC_RATE)
    pcm = clip16(run.mic)
    speaking, called = 0, 0
    level = speech_level_dbfs(reference, MIC_RATE)
    for start in range(0, len(reference) - frame, frame):
        # Frames in which the reply was speaking (within 20 dB of its level), as heard.
        if rms_dbfs(reference[start:start + frame]) < level - 20:
            continue
        speaking += 1
        at = (start + shift) * 2
        called += vad.is_speech(pcm[at:at + 2 * frame], MIC_RATE)
    assert speaking > 200
    assert called / speaking > 0.9

    quiet = simulate(spec, silence(8.0, SPEAKER_RATE), 8.0)  # the noise floor alone
    frames = [clip16(quiet.mic[i:i + frame]) for i in range(0, len(quiet.mic) - frame, frame)]
    assert sum(vad.is_speech(f, MIC_RATE) for f in frames) / len(frames) < 0.05


def test_the_room_costs_little_cpu() -> None:
    # The longest tail, drift and clipping: the dearest room the tests will build.
    spec = RoomSpec(delay_ms=120, rt60_s=0.6, drift_ppm=100, drive=2.0)
    seconds = 20.0
    run = simulate(spec, noise(seconds, seed=10), seconds)
    share = run.cpu_s / seconds
    print(f"room CPU: {share:.2%} of a core")
    assert share < 0.05


def test_measure_delay_and_levels_on_known_signals() -> None:
    x = noise(1.0, seed=11).astype(np.float64)
    late = np.concatenate([np.zeros(37), x])[: len(x)]
    assert measure_delay(x, late, 1000) == pytest.approx(0.037, abs=1e-4)
    assert measure_delay(late, x, 1000) == pytest.approx(-0.037, abs=1e-4)
    t = np.arange(MIC_RATE) / MIC_RATE
    sine = 32768 * 10 ** (-20 / 20) * math.sqrt(2) * np.sin(2 * np.pi * 440 * t)
    assert rms_dbfs(sine) == pytest.approx(-20.0, abs=0.01)
    # Speech level ignores pauses: the same sine with as much silence again keeps its level.
    assert speech_level_dbfs(np.concatenate([sine, np.zeros(MIC_RATE)])) == pytest.approx(
        -20.0, abs=0.1)
    assert rms_dbfs(np.concatenate([sine, np.zeros(MIC_RATE)])) == pytest.approx(-23.0, abs=0.1)
    assert speech_level_dbfs(np.zeros(MIC_RATE)) == -math.inf


def test_a_person_starts_at_their_first_sound() -> None:
    # espeak-ng leads some phrases with silence; "start of speech" is the first sound.
    tone = (3000 * np.sin(np.arange(1600) * 0.3)).astype(np.int16)
    led = np.concatenate((np.zeros(800, np.int16), np.full(80, 5, np.int16), tone))
    assert np.array_equal(from_first_sound(led), tone)  # 50 ms of silence and a -76 dBFS hiss
    assert np.array_equal(from_first_sound(tone), tone)
    silent = np.zeros(800, np.int16)
    assert np.array_equal(from_first_sound(silent), silent)
    quiet_start = person("tell me something else", "en-us+f3", 170)
    window = 80
    assert np.mean(quiet_start[:window].astype(np.float64) ** 2) >= 32768.0**2 * 1e-6
