"""Wake word with the real openWakeWord models on espeak-ng speech; gated vs always-on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.speech import (
    Pcm,
    concat,
    ordinary_speech_stretch,
    pink_noise,
    silence,
    speak,
    speech_bounds,
)
from support.wake_clips import SPEEDS, VOICES, with_room_noise
from talkbox.audio.vad import VoiceActivity
from talkbox.audio.wake import (
    CHUNK_SAMPLES,
    Detection,
    GatedWakeDetector,
    WakeWordDetector,
    available_models,
    resolve_model,
)
from talkbox.errors import ConfigError

RATE = 16000
SHIPPED_WORDS = {"alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "okay_nabu"}


def run_always_on(detector: WakeWordDetector, pcm: Pcm) -> list[Detection]:
    detections = []
    for start in range(0, len(pcm) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
        detections += detector.process(pcm[start : start + CHUNK_SAMPLES])
    return detections


def max_scores(detector: WakeWordDetector, pcm: Pcm) -> dict[str, float]:
    best: dict[str, float] = {}
    for start in range(0, len(pcm) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
        detector.process(pcm[start : start + CHUNK_SAMPLES])
        for label, score in detector.last_scores.items():
            best[label] = max(best.get(label, 0.0), score)
    return best


def run_gated(
    gated: GatedWakeDetector, pcm: Pcm, vad: VoiceActivity
) -> tuple[list[Detection], dict[float, dict[str, float]]]:
    """Feed 20 ms frames with real VAD decisions; return detections and every scored chunk."""
    detections: list[Detection] = []
    scored: dict[float, dict[str, float]] = {}
    frame = vad.frame_bytes // 2
    for start in range(0, len(pcm) - frame + 1, frame):
        chunk = pcm[start : start + frame].tobytes()
        before = gated.detector.last_scores_time
        detections += gated.feed(chunk, vad.is_speech(chunk))
        after = gated.detector.last_scores_time
        if after is not None and after != before:
            scored[round(after, 6)] = dict(gated.detector.last_scores)
    return detections, scored


def scores_per_chunk(detector: WakeWordDetector, pcm: Pcm) -> dict[float, dict[str, float]]:
    scored = {}
    for start in range(0, len(pcm) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
        detector.process(pcm[start : start + CHUNK_SAMPLES])
        scored[round(detector.audio_time, 6)] = dict(detector.last_scores)
    return scored


@pytest.fixture(scope="module")
def wake_phrases_with_pauses() -> Pcm:
    """'hey jarvis' in every voice over quiet room noise. The pauses are shorter and longer
    than the gated detector's hangover plus lookback (4 s), so it resumes both from a
    state it left a moment ago and after audio it has thrown away."""
    parts = [silence(1.0)]
    for voice, pause in zip(VOICES, (2.5, 6.0, 3.5, 5.0), strict=True):
        parts += [speak("hey jarvis", voice=voice, pad=(0.0, 0.0)), silence(pause)]
    phrases = concat(*parts)
    return with_room_noise(phrases, RATE)


@pytest.fixture(scope="module")
def no_wake_stretch() -> Pcm:
    return ordinary_speech_stretch(RATE, seconds=60.0)


# --- models ------------------------------------------------------------------------------


def test_available_models_are_the_shipped_words() -> None:
    models = available_models()
    assert set(models) == SHIPPED_WORDS
    assert all(path.is_file() and path.suffix == ".tflite" for path in models.values())


def test_resolve_model_takes_names_and_paths(tmp_path: Path) -> None:
    assert resolve_model("hey_jarvis") == available_models()["hey_jarvis"]
    assert resolve_model("Hey Jarvis") == available_models()["hey_jarvis"]
    custom = tmp_path / "computer.tflite"
    shutil.copy(available_models()["hey_jarvis"], custom)
    assert resolve_model(str(custom)) == custom


def test_unknown_model_error_names_the_key_and_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_model("hey_computer")
    message = str(caught.value)
    assert "wake.models" in message and "hey_computer" in message
    for name in SHIPPED_WORDS:
        assert name in message


def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"wake\.models.*does not exist"):
        resolve_model(str(tmp_path / "nope.tflite"))
    with pytest.raises(ConfigError, match=r"not a \.tflite"):
        resolve_model(str(tmp_path / "model.onnx"))


def test_threshold_for_a_model_not_listed_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"wake\.thresholds"):
        WakeWordDetector(["hey_jarvis"], 0.5, {"alexa": 0.7}, 2.0)


def test_the_detector_keeps_the_configs_model_rules() -> None:
    # Built in code, the detector refuses what the config file would refuse, in its words.
    with pytest.raises(ConfigError) as caught:
        WakeWordDetector(["hey_jarvis", "Hey Jarvis"], 0.5, {"alexa": 0.7}, 2.0)
    assert caught.value.problems == [
        'wake.models[1]: "Hey Jarvis" is listed twice (as "hey_jarvis" before)',
        'wake.thresholds.alexa: "alexa" is not in wake.models; thresholds can only override '
        "models listed there",
    ]
    with pytest.raises(ConfigError, match=r"wake\.models: must list at least one"):
        WakeWordDetector([], 0.5, {}, 2.0)


def test_custom_model_path_is_named_after_its_file(tmp_path: Path) -> None:
    custom = tmp_path / "computer.tflite"
    shutil.copy(available_models()["hey_jarvis"], custom)
    detector = WakeWordDetector([str(custom)], 0.5, {str(custom): 0.6}, 2.0)
    assert detector.threshold_for("computer") == 0.6
    found = run_always_on(detector, speak("hey jarvis"))
    assert [d.model for d in found] == ["computer"]


def test_scores_equal_stock_openwakeword_on_the_same_audio() -> None:
    # Our detector trims a buffer inside openWakeWord, gives it feature interpreters sized
    # for one chunk and primes it with silence; once both have heard a score's full context
    # (2 s), every score must be the stock one.
    import openwakeword

    models_dir = available_models()["hey_jarvis"].parent
    stock = openwakeword.Model(
        wakeword_models=[str(available_models()["hey_jarvis"])],
        inference_framework="tflite",
        melspec_model_path=str(models_dir / "melspectrogram.tflite"),
        embedding_model_path=str(models_dir / "embedding_model.tflite"),
    )
    ours = WakeWordDetector(["hey_jarvis"], 0.5, {}, 2.0)
    audio = concat(
        pink_noise(2.5, volume=0.01),
        speak("hey jarvis, what time is it"),
        speak("hey jarvis", voice="en-gb"),
    )
    context = ours.context_chunks
    compared = 0
    for index, start in enumerate(range(0, len(audio) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES)):
        chunk = audio[start : start + CHUNK_SAMPLES]
        expected = float(stock.predict(chunk)["hey_jarvis"])
        ours.process(chunk)
        if index >= context:
            assert ours.last_scores["hey_jarvis"] == expected
            compared += 1
    assert compared > 50


# --- detection ---------------------------------------------------------------------------


@pytest.mark.parametrize("speed", SPEEDS)
@pytest.mark.parametrize("voice", VOICES)
def test_hey_jarvis_fires_exactly_once(voice: str, speed: int) -> None:
    clip = speak("hey jarvis", voice=voice, speed=speed, pad=(1.0, 1.5))
    detector = WakeWordDetector(["hey_jarvis"], 0.5, {}, 2.0)
    found = run_always_on(detector, clip)
    assert [d.model for d in found] == ["hey_jarvis"]
    # It fires during the words or just after them, not before and not long after.
    start, end = speech_bounds(clip, RATE)
    assert start < found[0].audio_time <= end + 0.5


def test_a_stream_that_starts_with_the_wake_word_is_heard() -> None:
    detector = WakeWordDetector(["hey_jarvis"], 0.5, {}, 2.0)
    found = run_always_on(detector, speak("hey jarvis", pad=(0.0, 1.0)))
    assert len(found) == 1


def test_no_wake_word_in_a_minute_of_ordinary_speech(no_wake_stretch: Pcm) -> None:
    detector = WakeWordDetector(["hey_jarvis", "alexa"], 0.5, {}, 2.0)
    assert run_always_on(detector, no_wake_stretch) == []


def test_several_models_at_once_each_fire_on_their_own_word() -> None:
    audio = concat(speak("hey jarvis", voice="en-gb"), speak("alexa", voice="en-gb"))
    detector = WakeWordDetector(["hey_jarvis", "alexa"], 0.5, {}, 2.0)
    found = run_always_on(detector, audio)
    assert [d.model for d in found] == ["hey_jarvis", "alexa"]
    assert found[0].audio_time < found[1].audio_time


def test_per_word_threshold_is_respected() -> None:
    audio = concat(speak("hey jarvis", voice="en-gb"), speak("alexa", voice="en-us"))
    peak = max_scores(WakeWordDetector(["hey_jarvis", "alexa"], 0.5, {}, 2.0), audio)
    assert peak["alexa"] > 0.5 and peak["hey_jarvis"] > 0.5
    # Just above alexa's best score: only alexa is silenced; just below: both fire.
    strict = WakeWordDetector(
        ["hey_jarvis", "alexa"], 0.5, {"alexa": min(1.0, peak["alexa"] + 1e-4)}, 2.0
    )
    assert [d.model for d in run_always_on(strict, audio)] == ["hey_jarvis"]
    lenient = WakeWordDetector(["hey_jarvis", "alexa"], 0.5, {"alexa": peak["alexa"] - 1e-4}, 2.0)
    assert [d.model for d in run_always_on(lenient, audio)] == ["hey_jarvis", "alexa"]
    # And the general threshold applies to words without their own.
    general = WakeWordDetector(
        ["hey_jarvis", "alexa"], min(1.0, peak["hey_jarvis"] + 1e-4), {"alexa": 0.5}, 2.0
    )
    assert [d.model for d in run_always_on(general, audio)] == ["alexa"]


def test_refractory_period_swallows_a_repeat_but_not_a_later_one() -> None:
    twice = concat(speak("hey jarvis", pad=(1.0, 0.2)), speak("hey jarvis", pad=(0.0, 1.0)))
    quick = run_always_on(WakeWordDetector(["hey_jarvis"], 0.5, {}, 5.0), twice)
    assert len(quick) == 1
    both = run_always_on(WakeWordDetector(["hey_jarvis"], 0.5, {}, 0.8), twice)
    assert len(both) == 2


def test_reset_forgets_detections_and_the_audio_heard() -> None:
    detector = WakeWordDetector(["hey_jarvis"], 0.5, {}, 60.0)
    clip = speak("hey jarvis", pad=(1.0, 0.0))
    assert len(run_always_on(detector, clip)) == 1
    assert run_always_on(detector, clip) == []  # refractory
    clock = detector.audio_time
    detector.reset()
    assert detector.audio_time == clock
    assert len(run_always_on(detector, clip)) == 1


# --- gated vs always-on ------------------------------------------------------------------


def assert_gated_equals_always_on(pcm: Pcm, models: list[str]) -> list[Detection]:
    always_on = WakeWordDetector(models, 0.5, {}, 2.0)
    gated = GatedWakeDetector(WakeWordDetector(models, 0.5, {}, 2.0))
    expected_scores = scores_per_chunk(always_on, pcm)
    expected = [d for d in run_always_on(WakeWordDetector(models, 0.5, {}, 2.0), pcm)]
    found, gated_scores = run_gated(gated, pcm, VoiceActivity(2))
    assert found == expected
    # Stronger than equal detections: every score the gated detector computed is the
    # always-on score of the same chunk, bit for bit.
    assert gated_scores
    for time, scores in gated_scores.items():
        assert scores == expected_scores[time]
    assert gated.audio_time == pytest.approx(len(pcm) // 320 * 320 / RATE)
    return found


def test_gated_detector_finds_the_same_wake_words(wake_phrases_with_pauses: Pcm) -> None:
    found = assert_gated_equals_always_on(wake_phrases_with_pauses, ["hey_jarvis"])
    assert len(found) == len(VOICES)


def test_gated_detector_matches_on_a_minute_without_wake_words(
    no_wake_stretch: Pcm,
) -> None:
    assert assert_gated_equals_always_on(no_wake_stretch, ["hey_jarvis", "alexa"]) == []


def test_gated_detector_skips_inference_while_quiet(wake_phrases_with_pauses: Pcm) -> None:
    gated = GatedWakeDetector(WakeWordDetector(["hey_jarvis"], 0.5, {}, 2.0))
    quiet = pink_noise(20.0, volume=0.01)
    _, scored = run_gated(gated, quiet, VoiceActivity(2))
    # Only webrtcvad's adaptation to the new noise floor (the first ~100 ms) wakes it.
    assert len(scored) <= 2 * gated.hangover_chunks
    assert not gated.active
    _, scored = run_gated(gated, wake_phrases_with_pauses, VoiceActivity(2))
    chunks = len(wake_phrases_with_pauses) // CHUNK_SAMPLES
    assert 0 < len(scored) < chunks


def test_gated_detector_after_skip_and_reset_hears_the_next_wake_word() -> None:
    gated = GatedWakeDetector(WakeWordDetector(["hey_jarvis"], 0.5, {}, 60.0))
    vad = VoiceActivity(2)
    clip = speak("hey jarvis", pad=(0.3, 1.0))
    assert len(run_gated(gated, clip, vad)[0]) == 1
    gated.skip(16000 * 5)  # five seconds the wake word did not listen to
    before = gated.audio_time
    found, _ = run_gated(gated, clip, vad)
    assert found == []  # still refractory: skip() keeps past detections
    assert gated.audio_time == pytest.approx(before + len(clip) // 320 * 320 / RATE)
    gated.reset()
    found, _ = run_gated(gated, clip, vad)
    assert len(found) == 1
    assert found[0].audio_time > before
