"""The echo canceller on its own: a speaker reference and a microphone, stamped as devices do.

The room here is plain numpy (a delay, a decaying impulse response, a gain): enough to check
the canceller's timing and its idle path. The real process in a room with reverberation,
clipping and two clocks is tests/e2e/test_echo_room_e2e.py.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
import soxr
import webrtcvad

from support.speech import ordinary_speech_stretch
from talkbox.audio.echo_cancel import (
    ECHO_TAIL_S,
    FINDING_ECHO_S,
    STAY_ON_S,
    WARM_UP_S,
    EchoCanceller,
    SpeakerReference,
)

MIC_RATE = 16000
SPEAKER_RATE = 24000
CHUNK = 640  # 40 ms capture periods
BLOCK = 480  # 20 ms playback periods at 24 kHz
T0 = 1000.0


def reply_audio(seconds: float) -> npt.NDArray[np.int16]:
    """Continuous speech at about -20 dBFS, as a long answer is."""
    speech = ordinary_speech_stretch(SPEAKER_RATE, seconds, noise_volume=0.0, pauses=(0.3, 0.5))
    samples = speech.astype(np.float64)
    samples *= 0.1 * 32768 / np.sqrt(np.mean(samples**2))
    return np.clip(samples, -32768, 32767).astype(np.int16)


def room_echo(played: npt.NDArray[np.int16], delay_ms: int, drift_ppm: float,
              seed: int = 1) -> npt.NDArray[np.float64]:
    """What the microphone hears of `played`: resampled on a clock `drift_ppm` off, delayed,
    reverberated (RT60 0.3 s) and 6 dB quieter."""
    rng = np.random.default_rng(seed)
    mic_rate = MIC_RATE * (1 + drift_ppm * 1e-6)
    heard = soxr.resample(played.astype(np.float32), SPEAKER_RATE, mic_rate).astype(np.float64)
    taps = int(0.3 * MIC_RATE)
    response = rng.standard_normal(taps) * np.exp(-6.9 * np.arange(taps) / taps) * 0.05
    response[0] = 1.0
    echo = np.convolve(heard, response)[: len(heard)] * 0.5
    return np.concatenate([np.zeros(delay_ms * MIC_RATE // 1000), echo])


def run(canceller: EchoCanceller, played: npt.NDArray[np.int16],
        mic: npt.NDArray[np.float64], drift_ppm: float = 0.0, *,
        lost: tuple[str, float, float] | None = None, reply_from_s: float = math.inf,
        flags: list[tuple[float, bool, bool, bool]] | None = None,
        ) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """Play and capture side by side on the two devices' clocks; (raw, cleaned) capture.

    `lost` = (side, at_s, seconds): from `at_s` on, that device goes on `seconds` later (an
    underrun, or a stall): the speaker's blocks are stamped that much later (`mic` must hold
    the silence it played meanwhile), or the microphone's chunks are, and hold what it heard
    that much later (what it missed meanwhile is skipped). The blocks from `reply_from_s` on
    are the answer's (before it, a chime's). `flags` gets, per captured chunk, (its time,
    cleaned, may echo, may echo the answer)."""
    side, lost_at_s, lost_s = lost or ("", math.inf, 0.0)
    reference = canceller.reference
    mic_period = CHUNK / (MIC_RATE * (1 + drift_ppm * 1e-6))
    raw, cleaned = [], []
    block = 0
    skipped = round(lost_s * MIC_RATE) if side == "microphone" else 0

    def late(at: float, device: str) -> float:
        return lost_s if side == device and at >= T0 + lost_at_s else 0.0

    for k in range((len(mic) - skipped) // CHUNK):
        captured_at = T0 + k * mic_period
        mic_late = late(captured_at, "microphone")
        # The speaker's blocks are handed over ahead of when they are heard.
        while True:
            plays_at = T0 + block * BLOCK / SPEAKER_RATE
            plays_at += late(plays_at, "speaker")
            if plays_at > captured_at + mic_late + 0.1:
                break
            pcm = played[block * BLOCK : (block + 1) * BLOCK]
            pcm = np.concatenate([pcm, np.zeros(BLOCK - len(pcm), np.int16)])
            reference.played(pcm.tobytes(), plays_at, bool(pcm.any()),
                             reply=block * BLOCK >= reply_from_s * SPEAKER_RATE)
            block += 1
        start = k * CHUNK + (skipped if mic_late else 0)
        chunk = np.clip(mic[start : start + CHUNK], -32768, 32767).astype(np.int16)
        raw.append(chunk)
        cleaned.append(np.frombuffer(canceller.process(chunk.tobytes(), captured_at + mic_late),
                                     np.int16))
        if flags is not None:
            flags.append((captured_at - T0, canceller.last_chunk_cleaned,
                          canceller.last_chunk_may_echo, canceller.last_chunk_may_echo_reply))
    return np.concatenate(raw), np.concatenate(cleaned)


def level_db(samples: npt.NDArray[np.int16]) -> float:
    return float(10 * np.log10(np.mean(samples.astype(np.float64) ** 2) + 1e-9))


def voiced_share(samples: npt.NDArray[np.int16]) -> float:
    vad = webrtcvad.Vad(2)
    frames = samples[: len(samples) // 320 * 320].reshape(-1, 320)
    return float(np.mean([vad.is_speech(f.tobytes(), MIC_RATE) for f in frames]))


def new_canceller() -> EchoCanceller:
    reference = SpeakerReference()
    reference.rate = SPEAKER_RATE
    return EchoCanceller(reference, MIC_RATE)


def flags_over_time(canceller: EchoCanceller, played: npt.NDArray[np.int16],
                    reply_from_s: float = math.inf) -> list[tuple[float, bool, bool, bool]]:
    """`run` with a silent microphone: per captured chunk, (its time, cleaned, may echo, may
    echo the answer)."""
    flags: list[tuple[float, bool, bool, bool]] = []
    silence = np.zeros(len(played) * MIC_RATE // SPEAKER_RATE)
    run(canceller, played, silence, reply_from_s=reply_from_s, flags=flags)
    return flags


@pytest.mark.parametrize(("delay_ms", "drift_ppm"), [(20, 0.0), (150, 0.0), (300, 100.0),
                                                     (60, -300.0)])
def test_the_echo_of_a_long_answer_is_taken_out(delay_ms: int, drift_ppm: float) -> None:
    played = reply_audio(24.0)
    canceller = new_canceller()
    raw, cleaned = run(canceller, played, room_echo(played, delay_ms, drift_ppm), drift_ppm)
    settled = 4 * MIC_RATE  # AEC3 converges within a few seconds
    reduction = level_db(raw[settled:]) - level_db(cleaned[settled:])
    assert reduction > 30, reduction
    assert voiced_share(raw[settled:]) > 0.7
    assert voiced_share(cleaned[settled:]) < 0.15
    assert canceller.stats.short_reference_samples == 0
    assert canceller.stats.chunks_passed <= MIC_RATE // CHUNK  # the answer's first second: silence
    if abs(drift_ppm) >= 300:  # (100 ppm moves it 2.4 ms in 24 s: within the clocks' slack)
        # Steered towards the clocks' drift a sample at a time, never a jump.
        assert canceller.stats.steered_samples > 0 and canceller.stats.resyncs == 1


def test_idle_capture_passes_untouched_and_aec_does_not_run() -> None:
    canceller = new_canceller()
    silence = np.zeros(10 * SPEAKER_RATE, np.int16)
    room_noise = np.random.default_rng(2).normal(0, 30, 10 * MIC_RATE)
    raw, cleaned = run(canceller, silence, room_noise)
    assert np.array_equal(raw, cleaned)
    assert canceller.stats.chunks_cleaned == 0


def test_it_runs_from_the_first_sound_and_stays_on_well_after_the_echo_has_ended() -> None:
    canceller = new_canceller()
    seconds = 15.0
    played = np.zeros(int(seconds * SPEAKER_RATE), np.int16)
    sound_at, sound_s = 2.0, 1.0
    start = int(sound_at * SPEAKER_RATE)
    speech = reply_audio(3.0)[SPEAKER_RATE:]  # past its leading second of silence
    played[start : start + int(sound_s * SPEAKER_RATE)] = speech[: int(sound_s * SPEAKER_RATE)]
    # The silence around the sound is handed over as silence, as the running stream does.
    flags = flags_over_time(canceller, played)
    cleaned_at = [at for at, cleaned, _, _ in flags if cleaned]
    echo_at = [at for at, _, may_echo, _ in flags if may_echo]
    assert cleaned_at, "the canceller never ran"
    # From when the sound is handed to the device (here 0.1 s before it is heard).
    assert sound_at - 0.15 <= cleaned_at[0] <= sound_at + 0.05
    assert echo_at[0] == cleaned_at[0]
    # The echo is over after its tail; AEC3 runs on, without a break, until STAY_ON_S.
    assert echo_at[-1] == pytest.approx(sound_at + sound_s + ECHO_TAIL_S, abs=0.06)
    assert cleaned_at[-1] == pytest.approx(sound_at + sound_s + STAY_ON_S, abs=0.06)
    assert len(cleaned_at) == round((cleaned_at[-1] - cleaned_at[0]) * MIC_RATE / CHUNK) + 1
    assert canceller.stats.resyncs == 1


def test_it_tells_the_answers_echo_from_a_chimes() -> None:
    # A chime at 1 s, the answer from 4 s to 6 s: which chunks may hold the answer's echo.
    canceller = new_canceller()
    sound = reply_audio(3.0)[SPEAKER_RATE:]
    seconds = 9.0
    played = np.zeros(int(seconds * SPEAKER_RATE), np.int16)
    played[SPEAKER_RATE : SPEAKER_RATE + SPEAKER_RATE // 2] = sound[: SPEAKER_RATE // 2]
    played[4 * SPEAKER_RATE : 6 * SPEAKER_RATE] = sound[: 2 * SPEAKER_RATE]
    flags = flags_over_time(canceller, played, reply_from_s=4.0)
    echo_at = [at for at, _, may_echo, _ in flags if may_echo]
    reply_at = [at for at, _, _, may_echo_reply in flags if may_echo_reply]
    assert echo_at[0] == pytest.approx(1.0, abs=0.15)  # the chime's echo...
    assert reply_at[0] == pytest.approx(4.0, abs=0.15)  # ...is not the answer's
    assert reply_at[-1] == pytest.approx(6.0 + ECHO_TAIL_S, abs=0.06)
    assert set(reply_at) <= set(echo_at)


def test_it_learns_the_room_from_seconds_of_sound_not_from_the_silence_around_it() -> None:
    # Two short sounds (a chime, the start of an answer) and the quiet after each: the chunks
    # near a sound are cleaned, but only the 1 s of sound counts towards the warm-up.
    speech = reply_audio(WARM_UP_S + 3)[SPEAKER_RATE:]  # past its leading second of silence
    half_s = SPEAKER_RATE // 2
    played = np.zeros(5 * SPEAKER_RATE, np.int16)
    played[:half_s] = speech[:half_s]
    played[2 * SPEAKER_RATE : 2 * SPEAKER_RATE + half_s] = speech[half_s : 2 * half_s]
    canceller = new_canceller()
    run(canceller, played, room_echo(played, 60, 0.0)[: 4 * MIC_RATE])
    assert canceller.stats.chunks_cleaned * CHUNK / MIC_RATE > 3.5
    assert 0.7 < canceller.stats.echo_s <= 1.1, canceller.stats
    assert canceller.warming_up and canceller.finding_the_echo
    # Then the answer plays on for the warm-up, and the room is learnt.
    played = np.concatenate([played[: 3 * SPEAKER_RATE], speech[2 * half_s :]])
    canceller = new_canceller()
    run(canceller, played, room_echo(played, 60, 0.0))
    assert canceller.stats.echo_s > WARM_UP_S, canceller.stats
    assert not canceller.warming_up and not canceller.finding_the_echo


def test_it_has_found_the_echo_only_once_it_takes_it_out() -> None:
    # 3 s of sound: time enough to find an echo that follows what was played, but what the
    # microphone hears here is another sound (as good as a reference far out of step).
    speech = reply_audio(8.0)[SPEAKER_RATE:]
    played = speech[: 3 * SPEAKER_RATE]
    found = new_canceller()
    run(found, played, room_echo(played, 120, 0.0))
    assert found.stats.echo_s > FINDING_ECHO_S + 1 and found.warming_up
    assert not found.finding_the_echo
    lost = new_canceller()
    run(lost, played, room_echo(speech[3 * SPEAKER_RATE : 6 * SPEAKER_RATE], 120, 0.0))
    assert lost.stats.echo_s > FINDING_ECHO_S + 1 and lost.finding_the_echo


@pytest.mark.parametrize("side", ["speaker", "microphone"])
def test_a_device_that_loses_time_does_not_leave_the_reference_out_of_step(side: str) -> None:
    # 60 ms lost 8 s into an answer: the echo that follows comes that much later (speaker),
    # or the microphone's chunks hold what it heard that much later. Taken for jitter, the
    # reference stayed 60 ms off (from a second after the gap, 30 dB of echo reduction instead
    # of 78 for the speaker, with 0.3 s of zeros for reference; 12 dB instead of 65 for the
    # microphone, steered back a sample a chunk).
    played = reply_audio(20.0)
    canceller = new_canceller()
    gap_at = round(8.0 * SPEAKER_RATE / BLOCK) * BLOCK  # (where a block begins)
    heard = played
    if side == "speaker":  # it played 60 ms of silence there
        heard = np.concatenate([played[:gap_at], np.zeros(round(0.06 * SPEAKER_RATE), np.int16),
                                played[gap_at:]])
    raw, cleaned = run(canceller, played, room_echo(heard, 60, 0.0), lost=(side, 8.0, 0.06))
    assert canceller.stats.gaps == 1, canceller.stats
    # (A few ms short while the gap is being found: four blocks.)
    assert canceller.stats.short_reference_samples < 0.005 * MIC_RATE, canceller.stats
    assert canceller.stats.resyncs == 1 and canceller.stats.steered_samples == 0
    after = slice(9 * MIC_RATE, None)
    assert level_db(raw[after]) - level_db(cleaned[after]) > 50
