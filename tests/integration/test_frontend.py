"""The front end on real audio: resampling, VAD, speech gate and the gated wake word together."""

from __future__ import annotations

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
from support.wake_clips import SPEEDS, VOICES, on_chunk_grid, with_room_noise
from talkbox.audio.frontend import (
    FrontEnd,
    FrontEndEvent,
    VadFrame,
    WakeDetected,
    WakeScores,
)
from talkbox.audio.resample import Resampler
from talkbox.audio.vad import (
    GateSpeechAudio,
    GateSpeechEnded,
    GateSpeechStarted,
    SpeechGate,
    VoiceActivity,
)
from talkbox.audio.wake import GatedWakeDetector, WakeWordDetector

UPLOAD_FRAME_BYTES = 960


def make_frontend(
    input_rate: int,
    *,
    models: tuple[str, ...] = ("hey_jarvis",),
    monitor: bool = False,
    refractory_seconds: float = 2.0,
) -> FrontEnd:
    detector = WakeWordDetector(list(models), 0.5, {}, refractory_seconds)
    gate = SpeechGate(
        frame_ms=20, start_frames=3, silence_ms=500, prefix_padding_ms=300, max_turn_ms=30000
    )
    return FrontEnd(
        input_rate, VoiceActivity(2), gate, GatedWakeDetector(detector), monitor=monitor
    )


def feed(frontend: FrontEnd, pcm: Pcm, chunk_bytes: int = 4096) -> list[FrontEndEvent]:
    data = pcm.tobytes()
    events: list[FrontEndEvent] = []
    for start in range(0, len(data), chunk_bytes):
        events += frontend.process(data[start : start + chunk_bytes])
    return events + frontend.flush()


def turns_of(events: list[FrontEndEvent]) -> list[tuple[bytes, str]]:
    """The audio and end reason of each finished turn."""
    turns: list[tuple[bytes, str]] = []
    audio = bytearray()
    for event in events:
        if isinstance(event, GateSpeechStarted):
            audio = bytearray(event.preroll)
        elif isinstance(event, GateSpeechAudio):
            audio += event.pcm
        elif isinstance(event, GateSpeechEnded):
            turns.append((bytes(audio), event.reason))
    return turns


@pytest.mark.parametrize("input_rate", [16000, 48000])
def test_every_wake_phrase_fires_once_through_the_front_end(input_rate: int) -> None:
    # Each clip as the wake tests use it (1 s before, 1.5 s after), starting on the 80 ms
    # chunk grid like there: scores of fast synthetic voices depend on that phase.
    parts, spans, offset = [], [], 0.0
    for voice in VOICES:
        for speed in SPEEDS:
            clip = on_chunk_grid(
                speak("hey jarvis", voice=voice, speed=speed, rate=input_rate, pad=(1.0, 1.5)),
                input_rate,
            )
            start, end = speech_bounds(clip, input_rate)
            spans.append((offset + start, offset + end))
            # Some gaps longer than the gated detector's lookback plus hangover.
            extra = silence(3.2 if speed == 160 else 0.0, input_rate)
            parts += [clip, extra]
            offset += (len(clip) + len(extra)) / input_rate
    events = feed(make_frontend(input_rate, monitor=True), concat(*parts))
    fired = [e for e in events if isinstance(e, WakeDetected)]
    assert [e.model for e in fired] == ["hey_jarvis"] * len(spans)
    for event, (start, end) in zip(fired, spans, strict=True):
        assert start < event.audio_time <= end + 0.5


def test_a_minute_of_ordinary_speech_at_48k_wakes_nothing_and_uploads_only_speech() -> None:
    audio = ordinary_speech_stretch(48000, seconds=60.0)
    frontend = make_frontend(48000, models=("hey_jarvis", "alexa"))
    events = feed(frontend, audio)
    assert not [e for e in events if isinstance(e, WakeDetected)]
    turns = turns_of(events)
    assert len(turns) >= 5
    # Every turn's audio is a slice of the 24 kHz stream, frame-aligned, in order; chunked
    # resampling gives the same samples as resampling the whole file at once.
    resampler = Resampler(48000, 24000)
    upload = resampler.process(audio.tobytes()) + resampler.flush()
    position = 0
    for turn_audio, _ in turns:
        found = upload.find(turn_audio, position)
        assert found >= position and found % UPLOAD_FRAME_BYTES == 0
        position = found + len(turn_audio)
    uploaded = sum(len(a) for a, _ in turns) / len(upload)
    assert 0.3 < uploaded < 0.95  # the pauses stay home
    assert frontend.audio_time == pytest.approx(60.0)


def test_events_do_not_depend_on_how_capture_is_chunked() -> None:
    audio = with_room_noise(
        speak("hey jarvis, turn on the light", rate=48000, pad=(0.5, 0.8)), 48000
    )
    by_size = {
        size: feed(make_frontend(48000, monitor=True), audio, size) for size in (7, 333, 9600)
    }
    reference = by_size[9600]
    assert any(isinstance(e, WakeDetected) for e in reference)
    assert by_size[7] == reference
    assert by_size[333] == reference


def test_speak_through_one_turn_holds_the_wake_word_and_the_request() -> None:
    rate = 48000
    clip = speak("hey jarvis, what time is it", rate=rate, pad=(1.0, 1.5))
    truth_start, truth_end = speech_bounds(clip, rate)
    events = feed(make_frontend(rate), with_room_noise(clip, rate))
    (wake_index,) = [i for i, e in enumerate(events) if isinstance(e, WakeDetected)]
    # (webrtcvad flags the first ~80 ms of a new noise floor, so the stream may open with
    # a short turn of its own; the turn that matters is the one around the wake word.)
    start_index = max(
        i for i, e in enumerate(events[:wake_index]) if isinstance(e, GateSpeechStarted)
    )
    end_index = next(
        i for i in range(wake_index, len(events)) if isinstance(events[i], GateSpeechEnded)
    )
    turn = events[start_index : end_index + 1]
    assert not any(isinstance(e, GateSpeechEnded) for e in turn[:-1])
    assert any(isinstance(e, GateSpeechAudio) for e in events[wake_index:end_index])  # the request
    ((audio, reason),) = turns_of(turn)
    assert reason == "silence"
    # The turn spans the whole utterance: padding before it, the end-of-turn silence after.
    duration = len(audio) / 2 / 24000
    assert duration >= (truth_end - truth_start) + 0.3 + 0.5 - 0.02


def test_wake_can_be_switched_off_and_on() -> None:
    rate = 48000
    clip = with_room_noise(speak("hey jarvis", rate=rate, pad=(1.0, 1.5)), rate)
    frontend = make_frontend(rate)
    assert frontend.wake is not None
    frontend.wake_enabled = False
    events = feed(frontend, clip)
    assert not [e for e in events if isinstance(e, WakeDetected)]
    assert frontend.wake.detector.last_scores_time is None  # no inference at all
    assert any(isinstance(e, GateSpeechStarted) for e in events)  # the gate still works
    frontend.wake_enabled = True
    events = feed(frontend, clip)
    fired = [e for e in events if isinstance(e, WakeDetected)]
    assert len(fired) == 1
    # The wake clock counted the disabled stretch too.
    assert fired[0].audio_time > len(clip) / rate


def test_monitor_reports_vad_per_frame_and_scores_only_where_inferred() -> None:
    rate = 16000
    audio = concat(
        pink_noise(6.0, rate, volume=0.01),
        with_room_noise(speak("hey jarvis", rate=rate, pad=(0.0, 1.0)), rate),
    )
    events = feed(make_frontend(rate, monitor=True), audio)
    vad_frames = [e for e in events if isinstance(e, VadFrame)]
    assert len(vad_frames) == len(audio) // 320
    assert [e.audio_time for e in vad_frames[:3]] == pytest.approx([0.02, 0.04, 0.06])
    scores = [e for e in events if isinstance(e, WakeScores)]
    assert 0 < len(scores) < len(audio) // 1280
    assert max(e.scores["hey_jarvis"] for e in scores) > 0.5
    quiet = make_frontend(rate)
    assert not [e for e in feed(quiet, audio) if isinstance(e, VadFrame | WakeScores)]


def test_front_end_needs_a_16k_vad_and_matching_frames() -> None:
    gate = SpeechGate(
        frame_ms=20, start_frames=3, silence_ms=500, prefix_padding_ms=300, max_turn_ms=30000
    )
    with pytest.raises(ValueError, match="16000"):
        FrontEnd(48000, VoiceActivity(2, sample_rate=32000), gate, None)
    with pytest.raises(ValueError, match="frame length"):
        FrontEnd(48000, VoiceActivity(2, frame_ms=30), gate, None)
    frontend = FrontEnd(44100, VoiceActivity(2), gate, None)
    with pytest.raises(ValueError, match="no wake-word detector"):
        frontend.wake_enabled = True
    assert frontend.process(b"\0" * 8821) == []  # 100 ms and an odd byte of silence
    assert frontend.audio_time == pytest.approx(4410 / 44100)
