"""The front end on real audio: resampling, VAD, speech gate and the gated wake word together."""

from __future__ import annotations

import numpy as np
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
    ECHO_SPEECH_FLOOR_DBFS,
    TRACE_FRAMES,
    WORD_RUN_PEAK_DBFS,
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
    GateSpeechLikely,
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


class _ScriptedCanceller:
    """Stands in for the echo canceller (whose own tests are tests/unit/test_echo_cancel.py
    and test_near_end.py): hands the audio on as it is, with the speaker playing, and says it
    let echo through (`leaked`) or heard a person over it (`near_end`) in the chunks asked."""

    def __init__(self, leaked_chunks: set[int], near_end_chunks: set[int],
                 warming_up: bool, finding_the_echo: bool = False, reply: bool = True) -> None:
        self.leaked_chunks = leaked_chunks
        self.near_end_chunks = near_end_chunks
        self.chunks = 0
        self.last_chunk_may_echo = True
        self.last_chunk_may_echo_reply = reply  # the answer's echo, or only a chime's
        self.last_chunk_near_end = False
        self.last_chunk_leaked = False
        self.warming_up = warming_up
        self.finding_the_echo = finding_the_echo

    def process(self, captured: bytes, capture_time: float) -> bytes:
        self.last_chunk_leaked = self.chunks in self.leaked_chunks
        self.last_chunk_near_end = self.chunks in self.near_end_chunks
        self.chunks += 1
        return captured


RATE = 16000  # of the capture in the tests over echo
CHUNK_BYTES = RATE * 40 // 1000 * 2  # the capture's 40 ms periods


def front_end_over_echo(canceller: _ScriptedCanceller) -> FrontEnd:
    """A 16 kHz front end whose canceller says the speaker plays, as `canceller` scripts it."""
    gate = SpeechGate(frame_ms=20, start_frames=3, silence_ms=500, prefix_padding_ms=300,
                      max_turn_ms=30000, over_echo_start=(4, 10))
    return FrontEnd(RATE, VoiceActivity(2), gate, None, echo=canceller)  # type: ignore[arg-type]


def feed_over_echo(frontend: FrontEnd, pcm: bytes) -> list[list[FrontEndEvent]]:
    """`pcm` in capture periods, each stamped where it falls; the events of each."""
    return [frontend.process(pcm[start : start + CHUNK_BYTES], capture_time=frontend.audio_time)
            for start in range(0, len(pcm), CHUNK_BYTES)]


def over_echo(leaked: set[int] = frozenset(), near_end: set[int] = frozenset(),
              warming_up: bool = False) -> tuple[list[list[FrontEndEvent]], int]:
    """A request said over the answer's (already cancelled) echo: the events of each capture
    chunk (40 ms), and the index of the chunk in which the request begins."""
    _, chunks, begins = over_echo_front_end(leaked, near_end, warming_up)
    return chunks, begins


def over_echo_front_end(
    leaked: set[int] = frozenset(), near_end: set[int] = frozenset(), warming_up: bool = False
) -> tuple[FrontEnd, list[list[FrontEndEvent]], int]:
    """`over_echo`, and the front end it ran."""
    clip = concat(silence(1.0, RATE), speak("tell me something else", rate=RATE, pad=(0.0, 0.5)))
    frontend = front_end_over_echo(_ScriptedCanceller(set(leaked), set(near_end), warming_up))
    return frontend, feed_over_echo(frontend, clip.tobytes()), 1000 // 40


def first_chunk_with(kind: type, chunks: list[list[FrontEndEvent]]) -> int | None:
    return next((i for i, events in enumerate(chunks) if any(isinstance(e, kind) for e in events)),
                None)


def test_over_echo_a_likely_voice_is_said_before_the_turn_opens() -> None:
    chunks, begins = over_echo()
    likely = first_chunk_with(GateSpeechLikely, chunks)
    started = first_chunk_with(GateSpeechStarted, chunks)
    assert likely is not None and started is not None
    # A voice that goes on is voiced frame after frame: 3 of 5 is one frame before 4 of 10,
    # often in the same chunk. (Over a real echo, the frames between are what it saves.)
    assert begins <= likely <= started
    in_order = [type(e) for chunk in chunks for e in chunk
                if isinstance(e, GateSpeechLikely | GateSpeechStarted)]
    assert in_order == [GateSpeechLikely, GateSpeechStarted]


def request_no_louder_than(dbfs: float) -> bytes:
    """A request over the answer whose loudest 20 ms frame is at `dbfs`, after 1 s of quiet."""
    clip = speak("tell me something else", rate=RATE, pad=(0.0, 0.5)).astype(np.float64)
    frames = clip[: len(clip) // 320 * 320].reshape(-1, 320)
    loudest = float(np.sqrt(np.max(np.mean(frames**2, axis=1))))
    scaled = (clip * (32768 * 10 ** (dbfs / 20) / loudest)).astype(np.int16)
    return concat(silence(1.0, RATE), scaled).tobytes()


def test_a_word_under_the_floor_pauses_the_answer_if_one_frame_of_it_is_loud_enough() -> None:
    # A request that AEC3 let through no louder than WORD_RUN_PEAK_DBFS + 2 dB: under the
    # floor a turn needs, but a run of voiced frames, one of them that loud.
    def over_a_learnt_echo(peak_dbfs: float) -> list[list[FrontEndEvent]]:
        canceller = _ScriptedCanceller(set(), set(), warming_up=False)
        return feed_over_echo(front_end_over_echo(canceller), request_no_louder_than(peak_dbfs))
    assert ECHO_SPEECH_FLOOR_DBFS > WORD_RUN_PEAK_DBFS + 2
    louder = over_a_learnt_echo(WORD_RUN_PEAK_DBFS + 2)
    assert first_chunk_with(GateSpeechLikely, louder) is not None
    assert first_chunk_with(GateSpeechStarted, louder) is None
    # 2 dB under it: what AEC3 leaves of an echo, for all the front end knows.
    quieter = over_a_learnt_echo(WORD_RUN_PEAK_DBFS - 2)
    assert first_chunk_with(GateSpeechLikely, quieter) is None


def test_while_the_canceller_is_new_to_the_room_no_pause_is_asked_for() -> None:
    chunks, _ = over_echo(warming_up=True)
    assert first_chunk_with(GateSpeechLikely, chunks) is None
    assert first_chunk_with(GateSpeechStarted, chunks) is not None


def test_while_the_canceller_is_new_a_turn_over_its_echo_needs_a_voice_that_goes_on() -> None:
    request = request_no_louder_than(-38.0)
    chime_echo = _ScriptedCanceller(set(), set(), True, reply=False)  # the floor as learnt
    new = feed_over_echo(front_end_over_echo(chime_echo), request)
    learnt = feed_over_echo(front_end_over_echo(_ScriptedCanceller(set(), set(), False)), request)
    opened_new = first_chunk_with(GateSpeechStarted, new)
    opened_learnt = first_chunk_with(GateSpeechStarted, learnt)
    assert opened_new is not None and opened_learnt is not None
    assert opened_new > opened_learnt
    # Its loudest 80 ms four times, 240 ms apart, as what a new canceller leaves comes, over a
    # chime's echo (over the answer's the louder floor decides: the next test).
    frame = RATE * 20 // 1000 * 2
    voice = np.frombuffer(request_no_louder_than(-30.0), np.int16)
    frames = voice[: len(voice) // (frame // 2) * (frame // 2)].reshape(-1, frame // 2)
    levels = np.mean(frames.astype(np.float64) ** 2, axis=1)
    loudest = int(np.argmax([min(levels[i : i + 4]) for i in range(len(levels) - 4)]))
    burst = frames[loudest : loudest + 4].tobytes()
    bursts = bytes(RATE * 2) + (burst + bytes(12 * frame)) * 4
    new = feed_over_echo(front_end_over_echo(_ScriptedCanceller(set(), set(), True, reply=False)),
                         bursts)
    learnt = feed_over_echo(front_end_over_echo(_ScriptedCanceller(set(), set(), False)), bursts)
    assert first_chunk_with(GateSpeechStarted, new) is None
    assert first_chunk_with(GateSpeechStarted, learnt) is not None


def test_while_the_canceller_is_new_only_a_louder_voice_opens_a_turn_over_the_answer() -> None:
    # Over the answer's echo, a voice whose loudest frame is under WARMING_UP_FLOOR_DBFS is
    # what the new canceller leaves of it, for all it knows; over a chime's, it is a person.
    quieter, louder = request_no_louder_than(-38.5), request_no_louder_than(-30.0)
    answer = _ScriptedCanceller(set(), set(), True, reply=True)
    assert first_chunk_with(GateSpeechStarted,
                            feed_over_echo(front_end_over_echo(answer), quieter)) is None
    chime = _ScriptedCanceller(set(), set(), True, reply=False)
    assert first_chunk_with(GateSpeechStarted,
                            feed_over_echo(front_end_over_echo(chime), quieter)) is not None
    answer = _ScriptedCanceller(set(), set(), True, reply=True)
    assert first_chunk_with(GateSpeechStarted,
                            feed_over_echo(front_end_over_echo(answer), louder)) is not None


def test_while_the_canceller_has_not_found_the_echo_only_a_loud_voice_opens_a_turn() -> None:
    # Over the wake chime's echo (the request after it). Under -35 dBFS, above the learnt
    # room's floor, and going on: the echo, for all it knows.
    canceller = _ScriptedCanceller(set(), set(), True, finding_the_echo=True, reply=False)
    quieter = feed_over_echo(front_end_over_echo(canceller), request_no_louder_than(-38.0))
    assert first_chunk_with(GateSpeechStarted, quieter) is None
    canceller = _ScriptedCanceller(set(), set(), True, finding_the_echo=True, reply=False)
    louder = feed_over_echo(front_end_over_echo(canceller), request_no_louder_than(-20.0))
    assert first_chunk_with(GateSpeechStarted, louder) is not None


def test_over_the_answer_whose_echo_the_canceller_has_not_found_no_voice_opens_a_turn() -> None:
    # The answer's echo comes through as loud as this voice: nothing over it counts, but the
    # wake word is still listened for.
    request = request_no_louder_than(-20.0)
    unfound = _ScriptedCanceller(set(), set(), True, finding_the_echo=True, reply=True)
    frontend = front_end_over_echo(unfound)
    fed_to_wake: list[bool] = []
    frontend.wake = _WakeRecorder(fed_to_wake)  # type: ignore[assignment]
    frontend.wake_enabled = True
    chunks = feed_over_echo(frontend, request)
    assert first_chunk_with(GateSpeechStarted, chunks) is None
    assert first_chunk_with(GateSpeechLikely, chunks) is None
    assert sum(fed_to_wake) > 20  # the request's voiced frames, as without the rule
    # Once it has found the echo (its warm-up's second step), the same voice opens one.
    found = _ScriptedCanceller(set(), set(), True, finding_the_echo=False, reply=True)
    assert first_chunk_with(GateSpeechStarted,
                            feed_over_echo(front_end_over_echo(found), request)) is not None


class _WakeRecorder:
    """Stands in for the gated wake-word detector: records the voice decisions it is fed."""

    def __init__(self, fed: list[bool]) -> None:
        self.fed = fed
        self.detector = self

    last_scores_time = None

    def feed(self, frame: bytes, is_speech: bool) -> list[object]:
        self.fed.append(is_speech)
        return []


def test_where_the_canceller_let_echo_through_no_voice_opens_a_turn() -> None:
    # Every chunk of the request called a leak: none of its frames counts as a person's.
    everywhere, begins = over_echo(leaked=set(range(25, 125)))
    assert begins == 25
    assert first_chunk_with(GateSpeechLikely, everywhere) is None
    assert first_chunk_with(GateSpeechStarted, everywhere) is None
    # A leak in one chunk holds for LEAK_HOLD_FRAMES frames only: the request still opens a
    # turn, later than without it.
    plain, _ = over_echo()
    once, _ = over_echo(leaked={first_chunk_with(GateSpeechStarted, plain) or 0})
    assert first_chunk_with(GateSpeechStarted, once) is not None
    assert first_chunk_with(GateSpeechStarted, once) > first_chunk_with(GateSpeechStarted, plain)


def test_the_double_talk_detector_pauses_the_answer_sooner_and_a_leak_outweighs_it() -> None:
    plain, begins = over_echo()
    paused = first_chunk_with(GateSpeechLikely, plain)
    assert paused is not None and paused > begins
    # The detector heard the person from their first chunk on (AEC3 may mute them).
    heard = set(range(begins, paused))
    helped, _ = over_echo(near_end=heard)
    assert first_chunk_with(GateSpeechLikely, helped) in (begins, begins + 1)
    # The turn itself opens on what the VAD hears, as before.
    assert first_chunk_with(GateSpeechStarted, helped) == first_chunk_with(GateSpeechStarted, plain)
    both, _ = over_echo(near_end=heard, leaked=heard)
    paused_with_leaks = first_chunk_with(GateSpeechLikely, both)
    assert paused_with_leaks is None or paused_with_leaks >= paused


def test_the_double_talk_detector_alone_never_opens_a_turn() -> None:
    # AEC3 muted everything while the detector heard a person (or went wrong) for 2 s: the
    # answer pauses, and nothing is taken for a turn.
    canceller = _ScriptedCanceller(set(), set(range(25, 75)), warming_up=False)
    muted = feed_over_echo(front_end_over_echo(canceller), silence(4.0, RATE).tobytes())
    assert first_chunk_with(GateSpeechLikely, muted) in (25, 26)
    assert first_chunk_with(GateSpeechStarted, muted) is None


def test_a_turn_opened_over_echo_leaves_the_story_of_its_frames_for_the_debug_log() -> None:
    frontend, chunks, begins = over_echo_front_end()
    trace = frontend.opening_trace.split()
    # The request begins after a second of silence: the trace is full, silence first.
    assert len(trace) == TRACE_FRAMES
    assert trace[0] == "-100."
    # The frame that opened the turn counted, and so did 4 of the last 10 (OVER_ECHO_START).
    assert trace[-1].endswith("V")
    assert sum(token[-1] == "V" for token in trace[-10:]) >= 4
    # The detector's word and a leak are marked as such.
    helped, _, _ = over_echo_front_end(near_end={begins - 1})
    assert "n" in {token[-1] for token in helped.opening_trace.split()}
    opened = first_chunk_with(GateSpeechStarted, chunks)
    assert opened is not None
    leaking, _, _ = over_echo_front_end(leaked={opened})
    assert "x" in {token[-1] for token in leaking.opening_trace.split()}


def test_quiet_frames_may_pause_the_answer_only_where_the_echo_seldom_sounds_like_speech() -> None:
    frontend = front_end_over_echo(_ScriptedCanceller(set(), set(), warming_up=False))
    feed_over_echo(frontend, silence(5.0, RATE).tobytes())
    assert frontend.quiet_frames_may_pause
    # What AEC3 left of the echo, quiet (-55 dBFS, under the floor), but speech to the VAD.
    speech = ordinary_speech_stretch(RATE, 20.0, noise_volume=0.0, pauses=(0.05, 0.1, 0.05))
    level = np.sqrt(np.mean(speech.astype(np.float64) ** 2)) / 32768
    quiet = (speech * (10 ** (-55 / 20) / level)).astype(np.int16)
    feed_over_echo(frontend, quiet.tobytes())
    assert not frontend.quiet_frames_may_pause
    # Cleaned echo that the VAD leaves alone earns it back, within minutes.
    feed_over_echo(frontend, silence(120.0, RATE).tobytes())
    assert frontend.quiet_frames_may_pause


def test_a_person_who_often_talks_over_the_answer_keeps_the_looser_pause() -> None:
    # The frames before each turn are the person's: they are not the echo's share.
    frontend = front_end_over_echo(_ScriptedCanceller(set(), set(), warming_up=False))
    request = request_no_louder_than(-30.0)
    for _ in range(15):
        turns = feed_over_echo(frontend, request + silence(1.0, RATE).tobytes())
        assert first_chunk_with(GateSpeechStarted, turns) is not None
        assert first_chunk_with(GateSpeechEnded, turns) is not None
    assert frontend.quiet_frames_may_pause
