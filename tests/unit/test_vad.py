"""VoiceActivity (webrtcvad) and the pure SpeechGate endpointer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.speech import Pcm, concat, pink_noise, silence, speak, speech_bounds
from talkbox.audio.vad import (
    GateEvent,
    GateSpeechAudio,
    GateSpeechEnded,
    GateSpeechLikely,
    GateSpeechStarted,
    SpeechGate,
    VoiceActivity,
)

FRAME_MS = 20
UPLOAD_FRAME_BYTES = 960  # 20 ms of 24 kHz PCM16


def numbered_frame(index: int) -> bytes:
    """A 960-byte frame whose content says which frame it is, to check what comes out."""
    return index.to_bytes(4, "little") * (UPLOAD_FRAME_BYTES // 4)


def frame_index(frame: bytes) -> int:
    return int.from_bytes(frame[:4], "little")


def frames_of(audio: bytes) -> list[int]:
    assert len(audio) % UPLOAD_FRAME_BYTES == 0
    return [frame_index(audio[i : i + UPLOAD_FRAME_BYTES])
            for i in range(0, len(audio), UPLOAD_FRAME_BYTES)]


def make_gate(**overrides: int) -> SpeechGate:
    params = dict(frame_ms=FRAME_MS, start_frames=3, silence_ms=200, prefix_padding_ms=100,
                  max_turn_ms=2000)
    params.update(overrides)
    return SpeechGate(**params)


def run_gate(gate: SpeechGate, voiced: list[bool]) -> list[tuple[int, GateEvent]]:
    """Feed numbered frames; return (index of the frame fed, event) pairs."""
    out = []
    for index, is_speech in enumerate(voiced):
        out += [(index, event) for event in gate.feed(numbered_frame(index), is_speech)]
    return out


def segments(events: list[tuple[int, GateEvent]]) -> list[tuple[list[int], str | None]]:
    """The frame indices of each turn, and its end reason (None if still open)."""
    turns: list[tuple[list[int], str | None]] = []
    for _, event in events:
        if isinstance(event, GateSpeechStarted):
            assert not turns or turns[-1][1] is not None, "started twice without an end"
            turns.append((frames_of(event.preroll), None))
        elif isinstance(event, GateSpeechAudio):
            assert turns and turns[-1][1] is None, "audio outside a turn"
            turns[-1][0].extend(frames_of(event.pcm))
        else:
            assert turns and turns[-1][1] is None, "ended without a start"
            turns[-1] = (turns[-1][0], event.reason)
    return turns


def pattern(text: str) -> list[bool]:
    """'#' is a voiced frame, '.' an unvoiced one (spaces ignored)."""
    return [c == "#" for c in text if c in "#."]


# --- VoiceActivity -----------------------------------------------------------------------


def test_vad_rejects_settings_webrtcvad_cannot_run() -> None:
    with pytest.raises(ValueError, match="aggressiveness"):
        VoiceActivity(4)
    with pytest.raises(ValueError, match="rates"):
        VoiceActivity(2, sample_rate=24000)
    with pytest.raises(ValueError, match="frames"):
        VoiceActivity(2, frame_ms=25)
    with pytest.raises(ValueError, match="640 bytes"):
        VoiceActivity(2).is_speech(b"\0" * 320)


def vad_decisions(vad: VoiceActivity, pcm: Pcm) -> list[bool]:
    step = vad.frame_bytes // 2
    return [vad.is_speech(pcm[i : i + step].tobytes()) for i in range(0, len(pcm) - step + 1, step)]


@pytest.mark.parametrize("aggressiveness", [0, 2, 3])
def test_vad_hears_speech_and_not_a_quiet_room(aggressiveness: int) -> None:
    clip = speak("What is the weather like tomorrow", pad=(0.0, 0.0))
    # Quiet pink noise (about -54 dBFS RMS), as in a room. webrtcvad calls the first
    # ~100 ms of a new noise floor speech while it adapts; judge it after that.
    room = pink_noise(4.0, volume=0.01)
    assert np.mean(vad_decisions(VoiceActivity(aggressiveness), clip)) > 0.8
    assert np.mean(vad_decisions(VoiceActivity(aggressiveness), room)[25:]) < 0.02


# --- SpeechGate on synthetic decisions ---------------------------------------------------


def test_gate_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError):
        make_gate(start_frames=0)
    with pytest.raises(ValueError):
        make_gate(start_frames=6, start_window_frames=5)
    with pytest.raises(ValueError):
        make_gate(silence_ms=0)
    with pytest.raises(ValueError, match="max_turn_ms"):
        make_gate(max_turn_ms=100)


def test_clicks_do_not_open_the_gate() -> None:
    gate = make_gate()
    events = run_gate(gate, pattern("..#.... #..... ##..... .#....#.... ...."))
    assert events == []
    assert not gate.in_speech


def test_start_carries_padding_and_every_voiced_frame_of_the_opening_run() -> None:
    # Frames 0-9 unvoiced, then voiced 10, 11, (12 unvoiced), 13: 3 of the last 5 at 13.
    gate = make_gate(prefix_padding_ms=100)  # 5 frames of padding
    events = run_gate(gate, pattern(".......... ##.# ##"))
    opened_at, started = events[0]
    assert opened_at == 13
    assert isinstance(started, GateSpeechStarted)
    assert frames_of(started.preroll) == list(range(5, 14))
    assert [(i, type(e)) for i, e in events[1:]] == [(14, GateSpeechAudio), (15, GateSpeechAudio)]
    assert gate.in_speech


def test_padding_is_cut_short_at_the_start_of_the_stream() -> None:
    events = run_gate(make_gate(prefix_padding_ms=300), pattern(".###"))
    started = events[0][1]
    assert isinstance(started, GateSpeechStarted)
    assert frames_of(started.preroll) == [0, 1, 2, 3]


def run_gate_over_echo(gate: SpeechGate, voiced: list[bool], maybe: list[bool] | None = None,
                       start: tuple[int, int] | None = None) -> list[tuple[int, GateEvent]]:
    """`run_gate` while the speaker plays; `maybe`: the looser decisions (`maybe_speech`);
    `start`: every frame's `start_over_echo`."""
    out = []
    for index, is_speech in enumerate(voiced):
        maybe_speech = None if maybe is None else maybe[index]
        events = gate.feed(numbered_frame(index), is_speech, over_echo=True,
                           maybe_speech=maybe_speech, start_over_echo=start)
        out += [(index, event) for event in events]
    return out


def test_over_echo_a_turn_needs_the_longer_run_and_its_preroll_reaches_further_back() -> None:
    def gate() -> SpeechGate:
        return make_gate(prefix_padding_ms=100, over_echo_start=(4, 10),
                         over_echo_padding_ms=300)
    # 3 of 5 opens a turn normally, not over echo; 4 voiced frames within 10 do.
    voiced = pattern("....................  #.#.#  ...#")
    assert run_gate(gate(), voiced)[0][0] == 24
    events = run_gate_over_echo(gate(), voiced)
    # Where 3 of 5 would have opened one, the gate says a turn is likely (the answer pauses).
    assert [(at, type(event)) for at, event in events[:1]] == [(24, GateSpeechLikely)]
    opened_at, started = events[1]
    assert opened_at == 28
    assert isinstance(started, GateSpeechStarted)
    # 15 frames (300 ms) before the run's first voiced frame (20), not 5.
    assert frames_of(started.preroll) == list(range(5, 29))


def test_over_echo_a_likely_turn_is_said_once_a_run_and_never_without_echo() -> None:
    gate = make_gate(over_echo_start=(4, 10))
    # Two short runs of voice, apart: each would open a turn without echo, neither does over
    # it (3 voiced frames in the last 10, at most); the second is said again.
    voiced = pattern("...###........###...")
    events = run_gate_over_echo(gate, voiced)
    assert [(at, type(event)) for at, event in events] == [
        (5, GateSpeechLikely), (16, GateSpeechLikely)]
    # The same runs without echo open turns; nothing is said to be likely.
    plain = run_gate(make_gate(over_echo_start=(4, 10)), voiced)
    assert not [event for _, event in plain if isinstance(event, GateSpeechLikely)]
    assert isinstance(plain[0][1], GateSpeechStarted)


def likely_at(marks: str) -> list[int]:
    """Where the gate says a turn is likely over echo, for frames marked `#` (voiced), `v`
    (voiced only by the looser decision, `maybe_speech`) or `.` (neither)."""
    events = run_gate_over_echo(make_gate(over_echo_start=(4, 10)),
                                [mark == "#" for mark in marks], [mark != "." for mark in marks])
    return [index for index, event in events if isinstance(event, GateSpeechLikely)]


def test_over_echo_a_likely_turn_counts_the_looser_decisions_but_two_must_be_voiced() -> None:
    # A short first word: a quiet onset, two loud frames, and the rest muted by AEC3.
    assert likely_at("....v##vvv..........") == [6]
    assert likely_at("....##v.............") == [6]
    # Only one loud frame, or none: echo that the VAD takes for speech, not a person.
    assert likely_at("....vv#vvv....vvvvv.") == []
    # Without the looser decisions, 3 of 5 voiced, as before.
    assert likely_at("....#.##............") == [7]


def test_over_echo_a_word_the_caller_heard_is_likely_once_and_never_without_echo() -> None:
    def likely_with_words(marks: str, over_echo: bool = True) -> list[int]:
        # `w`: voiced by the looser decision, and the caller heard a word end there.
        gate = make_gate(over_echo_start=(4, 10))
        said = []
        for index, mark in enumerate(marks):
            events = gate.feed(numbered_frame(index), mark == "#", over_echo=over_echo,
                               maybe_speech=mark != ".", voice_heard=mark == "w")
            said += [index for event in events if isinstance(event, GateSpeechLikely)]
        return said
    # No frame loud enough for the plain rule: the word alone makes it likely, once a run.
    assert likely_with_words("...vvvvwww..........") == [7]
    assert likely_with_words("...vvvvw....vvvvw...") == [7, 16]
    assert likely_with_words("...vvvvvvv..........") == []
    # The speaker is not playing: a word means nothing (a turn opens as always).
    assert likely_with_words("...vvvvwww..........", over_echo=False) == []


def test_a_run_that_opens_the_turn_at_once_is_not_said_to_be_likely_too() -> None:
    gate = make_gate(over_echo_start=(3, 5))
    events = run_gate_over_echo(gate, pattern("..###"))
    assert [type(event) for _, event in events] == [GateSpeechStarted]


def test_over_echo_preroll_never_exceeds_the_longest_turn() -> None:
    gate = make_gate(prefix_padding_ms=0, max_turn_ms=400, over_echo_start=(4, 10),
                     over_echo_padding_ms=1000)
    events = run_gate_over_echo(gate, pattern("." * 40 + "####"))
    started = events[-1][1]
    assert isinstance(started, GateSpeechStarted)
    assert len(frames_of(started.preroll)) <= 20
    assert frames_of(started.preroll)[-1] == 43


def test_turn_ends_after_silence_with_the_hangover_sent_as_audio() -> None:
    gate = make_gate(silence_ms=200, prefix_padding_ms=0)  # 10 silent frames end a turn
    # A 9-frame pause inside the turn does not end it; the 10th silent frame does.
    voiced = pattern("### ##### ......... ### .......... ....")
    events = run_gate(gate, voiced)
    turns = segments(events)
    assert turns == [(list(range(0, 30)), "silence")]
    end_frame, ended = events[-1]
    assert ended == GateSpeechEnded("silence")
    assert end_frame == 29
    assert not gate.in_speech


def test_max_length_ends_a_long_turn_and_the_next_turn_loses_nothing() -> None:
    gate = make_gate(max_turn_ms=400, prefix_padding_ms=0)  # 20 frames at most per turn
    turns = segments(run_gate(gate, [True] * 50))
    assert [reason for _, reason in turns] == ["max_length", "max_length", None]
    assert [len(frames) for frames, _ in turns] == [20, 20, 10]
    assert [i for frames, _ in turns for i in frames] == list(range(50))


def test_reset_closes_the_turn_and_forgets_the_preroll() -> None:
    gate = make_gate()
    run_gate(gate, pattern("....####"))
    assert gate.in_speech
    gate.reset()
    assert not gate.in_speech
    # The two voiced frames before the reset must not count toward the next start.
    assert gate.feed(numbered_frame(100), True) == []
    assert gate.feed(numbered_frame(101), True) == []
    started = gate.feed(numbered_frame(102), True)
    assert isinstance(started[0], GateSpeechStarted)
    assert frames_of(started[0].preroll) == [100, 101, 102]


@settings(max_examples=300, deadline=None)
@given(
    voiced=st.lists(st.booleans(), max_size=300),
    start_frames=st.integers(1, 4),
    extra_window=st.integers(0, 3),
    silence_frames=st.integers(1, 15),
    padding_frames=st.integers(0, 10),
    max_frames=st.integers(20, 80),
)
def test_gate_invariants(voiced: list[bool], start_frames: int, extra_window: int,
                         silence_frames: int, padding_frames: int, max_frames: int) -> None:
    window = start_frames + extra_window
    gate = SpeechGate(FRAME_MS, start_frames, silence_frames * FRAME_MS,
                      padding_frames * FRAME_MS, max_frames * FRAME_MS,
                      start_window_frames=window)
    events = run_gate(gate, voiced)
    turns = segments(events)
    covered: set[int] = set()
    previous_end = -1
    for frames, reason in turns:
        # Each turn is a contiguous run of input frames, after the previous turn.
        assert frames == list(range(frames[0], frames[0] + len(frames)))
        assert frames[0] > previous_end
        previous_end = frames[-1]
        covered.update(frames)
        assert len(frames) <= max_frames
        if reason == "silence":
            tail = voiced[frames[-1] - silence_frames + 1 : frames[-1] + 1]
            assert len(tail) == silence_frames and not any(tail)
        elif reason == "max_length":
            assert len(frames) == max_frames
    # Every voiced frame in a window that meets the start rule is inside a turn.
    for end in range(len(voiced)):
        recent = range(max(0, end - window + 1), end + 1)
        if voiced[end] and sum(voiced[i] for i in recent) >= start_frames:
            assert {i for i in recent if voiced[i]} <= covered
    # A turn only opens on a voiced frame that meets the start rule.
    for index, event in events:
        if isinstance(event, GateSpeechStarted):
            recent = range(max(0, index - window + 1), index + 1)
            assert voiced[index] and sum(voiced[i] for i in recent) >= start_frames


# --- SpeechGate on real speech through webrtcvad -----------------------------------------


def test_segments_on_speech_silence_speech_match_the_ground_truth() -> None:
    first_text = "Good morning, could you turn on the kitchen light please."
    second_text = "What is the weather like tomorrow."
    gap_s, lead_s, tail_s = 1.5, 1.0, 1.0
    padding_ms, silence_ms = 300, 500

    def layout(rate: int) -> tuple[Pcm, list[tuple[float, float]]]:
        first = speak(first_text, rate=rate, pad=(0.0, 0.0))
        second = speak(second_text, voice="en-gb", rate=rate, pad=(0.0, 0.0))
        pcm = concat(silence(lead_s, rate), first, silence(gap_s, rate), second,
                     silence(tail_s, rate))
        offsets = (lead_s, lead_s + len(first) / rate + gap_s)
        truth = []
        for clip, offset in zip((first, second), offsets, strict=True):
            start, end = speech_bounds(clip, rate)
            truth.append((offset + start, offset + end))
        return pcm, truth

    # The VAD hears 16 kHz; the gate carries the 24 kHz rendering of the same speech.
    audio16, truth = layout(16000)
    audio24, truth24 = layout(24000)
    assert np.allclose(truth, truth24, atol=0.011)
    vad = VoiceActivity(2)
    gate = SpeechGate(FRAME_MS, start_frames=3, silence_ms=silence_ms,
                      prefix_padding_ms=padding_ms, max_turn_ms=30000)
    voiced = vad_decisions(vad, audio16)
    events = []
    for index, is_speech in enumerate(voiced):
        frame24 = audio24[index * 480 : (index + 1) * 480].tobytes()
        events += [(index, e) for e in gate.feed(frame24, is_speech)]

    # (first frame, last frame, audio, end reason) of each turn
    turns: list[tuple[int, int, bytes, str]] = []
    audio, first = bytearray(), 0
    for index, event in events:
        if isinstance(event, GateSpeechStarted):
            audio = bytearray(event.preroll)
            first = index + 1 - len(event.preroll) // 960
        elif isinstance(event, GateSpeechAudio):
            audio += event.pcm
        else:
            turns.append((first, index, bytes(audio), event.reason))
    assert [reason for *_, reason in turns] == ["silence", "silence"]

    frame_s = FRAME_MS / 1000
    # webrtcvad keeps saying "speech" for up to ~150 ms after the sound stops (measured
    # 70-150 ms on espeak): the VAD's own hangover, on top of the gate's.
    vad_tail_s = 0.2
    raw24 = audio24.tobytes()
    for (truth_start, truth_end), (first, last, turn_audio, _) in zip(truth, turns, strict=True):
        segment_start, segment_end = first * frame_s, (last + 1) * frame_s
        assert abs(segment_start - (truth_start - padding_ms / 1000)) <= frame_s + 1e-9
        expected_end = truth_end + silence_ms / 1000
        assert expected_end - frame_s - 1e-9 <= segment_end <= expected_end + vad_tail_s
        # The turn's audio is exactly the input over its span: nothing dropped or repeated.
        assert turn_audio == raw24[first * 960 : (last + 1) * 960]


def test_over_echo_a_frame_may_ask_for_a_longer_run_within_the_window() -> None:
    # (A new echo canceller's: frontend.WARMING_UP_START.)
    voiced = pattern("....#####.......######....")
    events = run_gate_over_echo(make_gate(over_echo_start=(4, 10)), voiced, start=(6, 10))
    # The sixth frame of the second run.
    assert [index for index, event in events if isinstance(event, GateSpeechStarted)] == [21]
    assert run_gate_over_echo(make_gate(over_echo_start=(4, 10)), voiced)[1][0] == 7
    with pytest.raises(ValueError, match="window"):
        make_gate(over_echo_start=(4, 10)).feed(b"", True, over_echo=True,
                                                start_over_echo=(6, 12))
