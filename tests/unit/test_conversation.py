"""Every transition of the conversation state machine, including stale and out-of-order events."""

from __future__ import annotations

import pytest

from support.machine_driver import FRAME, RATE, Driver, ms, of, sent
from talkbox.core.conversation import (
    HOLD_SECONDS,
    MAX_REPLY_PARTS,
    TIMER_FOLLOW_UP,
    TIMER_HOLD,
    TIMER_MAX_CONVERSATION,
    TIMER_RESPONSE,
    MachineConfig,
)
from talkbox.core.events import (
    AppendAudio,
    AudioCommitted,
    AudioDelta,
    CancelResponse,
    ClearAudio,
    CommitAudio,
    CreateResponse,
    InputTranscript,
    ResponseCreated,
    ResponseDone,
    ServerError,
    ServerSpeechStarted,
    ServerSpeechStopped,
    TranscriptDone,
    TruncateItem,
)
from talkbox.core.failures import Failure
from talkbox.core.inputs import (
    Action,
    CancelTimer,
    CloseConnection,
    ConfigApplied,
    ConfigChanged,
    ConnectionFailed,
    ConversationEnded,
    EndOfReply,
    FlushPlayback,
    HoldPlayback,
    MicSpeechAudio,
    MicSpeechEnded,
    MicSpeechLikely,
    MicSpeechStarted,
    MuteChanged,
    Notice,
    OpenConnection,
    PlayAudio,
    PlaybackDrained,
    PlayChime,
    ResumePlayback,
    Send,
    ServerEventReceived,
    SessionReady,
    SetWakeEnabled,
    Snapshot,
    StartTimer,
    State,
    StateChanged,
    StopRequested,
    TimerFired,
    Transcript,
    TurnFinished,
    WakeRefused,
    WakeWord,
)
from talkbox.core.retry import MAX_DELAY_SECONDS, Backoff


def message_of(ended: ConversationEnded) -> str:
    return "" if ended.failure is None else ended.failure.message


def ended_with(actions: list[Action]) -> str:
    """The failure message the conversation ended with in these actions ("" when it ended well)."""
    [ended] = of(ConversationEnded, actions)
    return message_of(ended)


def appended_bytes(actions: list[Action]) -> bytes:
    return b"".join(e.pcm for e in sent(actions) if isinstance(e, AppendAudio))


# --- waking and connecting -------------------------------------------------------------------


def test_wake_from_idle_opens_a_connection_and_chimes() -> None:
    d = Driver()
    actions = d(WakeWord("hey_jarvis"))
    assert StateChanged(State.CONNECTING, "wake word hey_jarvis") in actions
    assert OpenConnection(1) in actions
    assert PlayChime("wake") in actions
    assert TIMER_MAX_CONVERSATION in d.timers
    assert sent(actions) == []


def test_session_ready_without_speech_listens_and_waits_for_follow_up() -> None:
    d = Driver()
    d(WakeWord())
    actions = d.ready()
    assert StateChanged(State.LISTENING, "session ready") in actions
    assert TIMER_FOLLOW_UP in d.timers


def test_one_breath_command_is_kept_while_connecting_and_sent_whole() -> None:
    d = Driver(silence_duration_ms=500, min_command_ms=250)
    d(MicSpeechStarted(preroll=FRAME))  # "hey jarvis" begins; idle: nothing kept
    recent = b"\x01\x00" * 12000  # the last 0.5 s before detection
    d(WakeWord("hey_jarvis", recent_audio=recent))
    command = [bytes([i % 251, 0]) * 480 for i in range(60)]  # 1.2 s of distinct frames
    early: list[Action] = []
    for frame in command:
        early += d(MicSpeechAudio(frame))
    early += d(MicSpeechEnded(), advance=1.2)
    assert sent(early) == [], "nothing can be sent before the session is ready"
    actions = d.ready()
    assert appended_bytes(actions) == recent + b"".join(command)
    events = sent(actions)
    assert isinstance(events[-2], CommitAudio) and isinstance(events[-1], CreateResponse)
    assert d.m.state is State.RESPONDING
    assert TIMER_RESPONSE in d.timers


def test_command_still_being_spoken_when_ready_streams_on() -> None:
    d = Driver()
    d(MicSpeechStarted(preroll=FRAME))
    d(WakeWord(recent_audio=FRAME))
    for _ in range(50):
        d(MicSpeechAudio(FRAME))  # 1 s: long enough to be a command
    actions = d.ready()
    assert len(appended_bytes(actions)) == 51 * len(FRAME)
    assert not of(StartTimer, actions), "the user is still talking: no follow-up timer"
    more = d(MicSpeechAudio(FRAME))
    assert sent(more) == [AppendAudio(FRAME)]
    end = d(MicSpeechEnded())
    assert [type(e) for e in sent(end)] == [CommitAudio, CreateResponse]


def test_wake_phrase_alone_is_not_sent_as_a_turn() -> None:
    d = Driver(silence_duration_ms=500, min_command_ms=250)
    d(MicSpeechStarted(preroll=FRAME))
    d(WakeWord(recent_audio=ms(300)))
    d.ready()
    tail: list[Action] = []
    for _ in range(25):  # 500 ms of hangover after "jarvis": shorter than the threshold
        tail += d(MicSpeechAudio(FRAME))
    tail += d(MicSpeechEnded())
    events = sent(tail)
    assert events[:-1] == [AppendAudio(FRAME)] * 25, "streamed at once, without waiting"
    assert events[-1] == ClearAudio(), "the wake phrase's tail is taken back, not committed"
    assert TIMER_FOLLOW_UP in d.timers
    # The command that follows after a pause is a normal turn.
    turn = d.speak(1000)
    assert len(appended_bytes(turn)) == 1000 * RATE // 1000 * 2
    assert isinstance(sent(turn)[-1], CreateResponse)


def test_wake_phrase_alone_said_while_connecting_is_dropped_before_sending() -> None:
    d = Driver(silence_duration_ms=500, min_command_ms=250)
    d(MicSpeechStarted(preroll=FRAME))
    d(WakeWord(recent_audio=ms(300)))
    for _ in range(25):
        d(MicSpeechAudio(FRAME))
    d(MicSpeechEnded())
    assert sent(d.ready()) == [], "nothing of the wake phrase is sent"


def test_with_server_detection_the_wake_segment_is_held_until_it_is_a_command() -> None:
    d = Driver(detection="server_vad", silence_duration_ms=500, min_command_ms=250)
    d(MicSpeechStarted(preroll=FRAME))
    d(WakeWord(recent_audio=ms(300)))
    d.ready()
    held: list[Action] = []
    for _ in range(37):  # 740 ms: still below 500 + 250 ms
        held += d(MicSpeechAudio(FRAME))
    assert sent(held) == [], "the service would take the tail alone for a turn"
    released = d(MicSpeechAudio(FRAME))  # 760 ms: a command
    assert len(appended_bytes(released)) == len(ms(300)) + 38 * len(FRAME)
    assert sent(d(MicSpeechAudio(FRAME))) == [AppendAudio(FRAME)], "then streamed"


def test_ctl_wake_without_speech_waits_for_the_next_segment() -> None:
    d = Driver()
    d(WakeWord("ctl"))
    d.ready()
    turn = d.speak(600)
    assert isinstance(sent(turn)[0], AppendAudio)
    assert [type(e) for e in sent(turn)[-2:]] == [CommitAudio, CreateResponse]


def test_audio_is_never_uploaded_while_idle() -> None:
    d = Driver()
    assert d.speak(2000) == []


def test_connection_failure_while_connecting_chimes_error_and_returns_to_idle() -> None:
    d = Driver()
    d(WakeWord())
    actions = d(ConnectionFailed(1, Failure("dropped", "dropped")))
    assert PlayChime("error") in actions
    assert CloseConnection(1) in actions
    assert d.m.state is State.IDLE
    assert of(ConversationEnded, actions)[0].failure == Failure("dropped", "dropped")
    assert d.timers == {}


def test_stale_events_from_an_old_conversation_are_ignored() -> None:
    d = Driver()
    d(WakeWord())
    d(ConnectionFailed(1, Failure("dropped", "x")))
    d(WakeWord(), advance=MAX_DELAY_SECONDS)  # conversation 2, once the backoff has passed
    assert d(ConnectionFailed(1, Failure("dropped", "late"))) == []
    assert d(ServerEventReceived(1, ResponseCreated("r"))) == []
    assert d.m.state is State.CONNECTING


def test_session_ready_after_the_conversation_ended_is_closed() -> None:
    d = Driver()
    d(WakeWord())
    d(StopRequested())
    actions = d(SessionReady(1))
    assert actions == [CloseConnection(1)]
    assert d.m.state is State.IDLE


# --- responding ------------------------------------------------------------------------------


def test_reply_audio_plays_and_listening_resumes_after_it_drains() -> None:
    d = Driver()
    d.start_listening()
    d.speak(800)
    d.server(ResponseCreated("r1"))
    play = d.server(AudioDelta("r1", "i1", 0, bytes(9600)))
    assert play == [PlayAudio(bytes(9600))]
    done = d.server(ResponseDone("r1", "completed"))
    assert d.m.state is State.RESPONDING, "still playing: wait for the speaker"
    assert EndOfReply() in done
    assert of(TurnFinished, done)[0].status == "completed"
    assert TIMER_RESPONSE not in d.timers
    assert d(PlaybackDrained(played_samples=100)) == [], "a stale drain is ignored"
    back = d(PlaybackDrained(played_samples=d.m.enqueued_samples))
    assert StateChanged(State.LISTENING, "answer played") in back
    assert TIMER_FOLLOW_UP in d.timers


def test_turn_latency_is_reported_from_end_of_speech_to_first_audio() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)  # speech ends at d.now
    d.server(ResponseCreated("r1"))
    d(ServerEventReceived(1, AudioDelta("r1", "i1", 0, bytes(100))), advance=0.25)
    done = d.server(ResponseDone("r1", "completed"))
    latency = of(TurnFinished, done)[0].end_of_speech_to_first_audio_ms
    assert latency == pytest.approx(250.0)


def test_response_done_with_nothing_playing_goes_straight_to_listening() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.server(ResponseCreated("r1"))
    actions = d.server(ResponseDone("r1", "completed"))
    assert d.m.state is State.LISTENING
    assert TIMER_FOLLOW_UP in d.timers
    assert of(StateChanged, actions)


def test_follow_up_silence_closes_with_the_done_chime() -> None:
    d = Driver()
    d.start_listening()
    actions = d.fire(TIMER_FOLLOW_UP)
    assert PlayChime("done") in actions
    assert CloseConnection(1) in actions
    assert FlushPlayback() not in actions
    assert d.m.state is State.IDLE
    assert of(ConversationEnded, actions) == [ConversationEnded(1)]


def test_follow_up_question_cancels_the_follow_up_timer() -> None:
    d = Driver()
    d.start_listening()
    actions = d(MicSpeechStarted(preroll=FRAME))
    assert CancelTimer(TIMER_FOLLOW_UP) in actions
    assert TIMER_FOLLOW_UP not in d.timers


def test_deltas_of_unknown_or_finished_responses_are_dropped() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    assert d.server(AudioDelta("nobody", "i", 0, bytes(10))) == []
    d.respond("r1")
    d.server(ResponseDone("r1", "completed"))
    assert d.server(AudioDelta("r1", "i1", 0, bytes(10))) == []
    assert d.server(ResponseDone("r1", "completed")) == []


def test_failed_response_ends_with_the_error_chime() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.server(ResponseCreated("r1"))
    actions = d.server(ResponseDone("r1", "failed", error_code="server_error"))
    assert PlayChime("error") in actions
    assert "server_error" in ended_with(actions)
    assert d.m.state is State.IDLE


def test_an_odd_length_delta_is_dropped_alone_and_noticed_once_per_response() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.server(ResponseCreated("r1"))
    notice = Notice(
        "warning",
        "dropped an audio delta of 3 bytes from the service: not whole 16-bit samples "
        "(any more in this answer are dropped without a log line)",
    )
    assert d.server(AudioDelta("r1", "i1", 0, bytes(3))) == [notice]
    assert d.server(AudioDelta("r1", "i1", 0, bytes(7))) == [], "once per answer"
    play = d.server(AudioDelta("r1", "i1", 0, bytes(960)))
    assert play == [PlayAudio(bytes(960))], "the deltas after a bad one still play"
    assert d.m.enqueued_samples == 480
    assert d.m.state is State.RESPONDING
    d.server(ResponseDone("r1", "completed"))
    d(PlaybackDrained(played_samples=d.m.enqueued_samples))
    d.speak(500)
    d.server(ResponseCreated("r2"))
    assert of(Notice, d.server(AudioDelta("r2", "i2", 0, bytes(5)))) == [
        Notice("warning", notice.text.replace("3 bytes", "5 bytes"))
    ], "a new answer notices again"


def test_a_reply_longer_than_the_cap_ends_as_a_failed_response() -> None:
    d = Driver(max_reply_seconds=2.0)
    d.start_listening()
    d.speak(500)
    d.server(ResponseCreated("r1"))
    assert d.server(AudioDelta("r1", "i1", 0, ms(1500))) == [PlayAudio(ms(1500))]
    assert d.server(AudioDelta("r1", "i1", 0, ms(500))) == [PlayAudio(ms(500))], "2 s is fine"
    actions = d.server(AudioDelta("r1", "i1", 0, ms(20)))
    assert not of(PlayAudio, actions), "the delta past the cap is never queued"
    assert FlushPlayback() in actions
    assert PlayChime("error") in actions
    [ended] = of(ConversationEnded, actions)
    assert ended.failure is not None
    assert ended.failure.message == (
        "the service's answer ran past 2 s of audio, longer than any real answer; "
        "talkbox stopped it"
    )
    assert d.m.state is State.IDLE


def test_the_reply_cap_counts_each_response_afresh() -> None:
    d = Driver(max_reply_seconds=2.0)
    d.start_listening()
    for turn in range(3):
        d.speak(500)
        d.server(ResponseCreated(f"r{turn}"))
        assert of(PlayAudio, d.server(AudioDelta(f"r{turn}", f"i{turn}", 0, ms(1500))))
        d.server(ResponseDone(f"r{turn}", "completed"))
        d(PlaybackDrained(played_samples=d.m.enqueued_samples))
        assert d.m.state is State.LISTENING


def test_a_reply_in_too_many_audio_parts_ends_as_a_failed_response() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.server(ResponseCreated("r1"))
    for part in range(MAX_REPLY_PARTS):
        assert of(PlayAudio, d.server(AudioDelta("r1", f"i{part}", 0, bytes(2))))
    assert of(PlayAudio, d.server(AudioDelta("r1", f"i{part}", 0, bytes(2)))), "same part"
    actions = d.server(AudioDelta("r1", "one-too-many", 0, bytes(2)))
    assert not of(PlayAudio, actions)
    [ended] = of(ConversationEnded, actions)
    assert f"more than {MAX_REPLY_PARTS} audio parts" in message_of(ended)
    assert d.m.state is State.IDLE


def test_response_timeout_ends_with_an_error() -> None:
    d = Driver(response_timeout_seconds=12)
    d.start_listening()
    d.speak(500)
    actions = d.fire(TIMER_RESPONSE)
    assert "did not answer within 12 s" in ended_with(actions)
    assert d.m.state is State.IDLE


def test_a_long_answer_is_not_cut_by_the_response_timeout_but_a_stalled_one_is() -> None:
    d = Driver(response_timeout_seconds=30)
    d.start_listening()
    d.speak(500)
    d.server(ResponseCreated("r1"))
    d(ServerEventReceived(d.m.conversation, AudioDelta("r1", "i1", 0, ms(100))), advance=20)
    d(ServerEventReceived(d.m.conversation, AudioDelta("r1", "i1", 0, ms(100))), advance=8)
    d.now += 2  # 30 s after the end of the turn, 2 s after the latest audio
    rearmed = d.fire(TIMER_RESPONSE)
    assert not of(ConversationEnded, rearmed)
    assert [a.seconds for a in of(StartTimer, rearmed)] == [pytest.approx(28)]
    assert d.m.state is State.RESPONDING
    d.now += 28
    assert "stopped answering for 30 s" in ended_with(d.fire(TIMER_RESPONSE))
    assert d.m.state is State.IDLE


def test_transcripts_are_reported() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.respond("r1")
    assert d.server(InputTranscript("u1", "what time is it")) == [
        Transcript("user", "what time is it")
    ]
    assert d.server(TranscriptDone("r1", "i1", "It is noon.")) == [
        Transcript("assistant", "It is noon.")
    ]


# --- barge-in --------------------------------------------------------------------------------


def test_wake_word_barge_in_stops_cancels_and_truncates_at_what_was_played() -> None:
    d = Driver(barge_in="wake")
    d.start_listening()
    d.speak(500)
    d.respond("r1", "i1", samples=48000)  # 2 s received
    actions = d(WakeWord(played_samples=12000))  # 0.5 s heard
    assert actions[0] == FlushPlayback()
    assert sent(actions)[:2] == [CancelResponse("r1"), TruncateItem("i1", 0, 500)]
    assert d.m.state is State.LISTENING
    assert d.server(AudioDelta("r1", "i1", 0, bytes(100))) == [], "late audio is never played"
    assert d.server(ResponseDone("r1", "cancelled", reason="client_cancelled")) == []
    assert d.m.state is State.LISTENING


def test_barge_in_after_response_done_truncates_without_cancelling() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.respond("r1", "i1", samples=24000)
    d.server(ResponseDone("r1", "completed"))
    actions = d(WakeWord(played_samples=6000))
    assert sent(actions)[0] == TruncateItem("i1", 0, 250)
    assert not any(isinstance(e, CancelResponse) for e in sent(actions))


def test_barge_in_after_everything_was_heard_sends_no_truncate() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.respond("r1", "i1", samples=24000)
    d.server(ResponseDone("r1", "completed"))
    actions = d(WakeWord(played_samples=24000))
    assert not any(isinstance(e, TruncateItem) for e in sent(actions))


def test_truncate_is_clamped_to_the_audio_received() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.respond("r1", "i1", samples=2400)  # 100 ms received
    # A device count that ran past what was received (latency bookkeeping): still clamped.
    machine_item = d.m.reply_items[0]
    machine_item.received_samples = 2400
    truncate = d.m._truncation(2399)
    assert truncate == TruncateItem("i1", 0, 99)


def test_barge_in_before_any_reply_was_heard_truncates_at_zero() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.respond("r1", "i1", samples=24000)
    actions = d(WakeWord(played_samples=0))
    assert TruncateItem("i1", 0, 0) in sent(actions)


def test_barge_in_during_a_second_reply_item_truncates_that_item() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.server(ResponseCreated("r1"))
    d.server(AudioDelta("r1", "a", 0, bytes(24000 * 2)))
    d.server(AudioDelta("r1", "b", 0, bytes(24000 * 2)))
    actions = d(WakeWord(played_samples=24000 + 12000))
    assert TruncateItem("b", 0, 500) in sent(actions)


def test_barge_in_off_ignores_the_wake_word_while_talking() -> None:
    d = Driver(barge_in="off")
    d.start_listening()
    d.speak(500)
    d.respond()
    assert d(WakeWord(played_samples=10)) == []
    assert d.m.state is State.RESPONDING


def test_speech_barge_in_with_local_detection_starts_a_new_turn() -> None:
    d = Driver(barge_in="speech")
    d.start_listening()
    d.speak(500)
    d.respond("r1", "i1", samples=24000)
    actions = d(MicSpeechStarted(preroll=FRAME, played_samples=2400))
    assert FlushPlayback() in actions
    assert sent(actions) == [CancelResponse("r1"), TruncateItem("i1", 0, 100), AppendAudio(FRAME)]
    assert d.m.state is State.LISTENING


def answering(**config: str) -> Driver:
    """A conversation whose answer (response r1, item i1, 1 s) is playing."""
    d = Driver(**config)
    d.start_listening()
    d.speak(500)
    if d.m.server_detects_turns:
        d.server(ServerSpeechStarted(0, "u1"))
        d.server(ServerSpeechStopped(500, "u1"))
    d.respond("r1", "i1", samples=24000)
    assert d.m.playing
    return d


def test_a_likely_voice_over_the_answer_pauses_it_and_the_turn_then_interrupts_it() -> None:
    d = answering(barge_in="speech")
    actions = d(MicSpeechLikely())
    assert of(HoldPlayback, actions) == [HoldPlayback()]
    assert of(StartTimer, actions) == [StartTimer(TIMER_HOLD, HOLD_SECONDS, d.timers[TIMER_HOLD])]
    assert sent(actions) == [], "nothing is cancelled on a maybe"
    assert d(MicSpeechLikely()) == [], "said again while paused: nothing more"
    actions = d(MicSpeechStarted(preroll=FRAME, played_samples=2400))
    assert FlushPlayback() in actions
    assert CancelTimer(TIMER_HOLD) in actions
    assert sent(actions) == [CancelResponse("r1"), TruncateItem("i1", 0, 100), AppendAudio(FRAME)]
    assert not d.m.held


def test_a_likely_voice_that_opens_no_turn_lets_the_answer_play_on() -> None:
    d = answering(barge_in="speech")
    d(MicSpeechLikely())
    actions = d.fire(TIMER_HOLD)
    assert actions == [ResumePlayback()]
    assert d.m.state is State.RESPONDING
    # The next one pauses it again.
    assert of(HoldPlayback, d(MicSpeechLikely())) == [HoldPlayback()]


@pytest.mark.parametrize(
    ("barge_in", "detection"), [("wake", "local"), ("off", "local"), ("speech", "server_vad")]
)
def test_only_local_speech_barge_in_pauses_the_answer_for_a_likely_voice(
    barge_in: str, detection: str
) -> None:
    d = answering(barge_in=barge_in, detection=detection)
    assert d(MicSpeechLikely()) == []


def test_no_pause_when_no_answer_is_playing() -> None:
    d = Driver(barge_in="speech")
    d.start_listening()
    assert d(MicSpeechLikely()) == []
    d.speak(500)  # the answer is asked for, none has come yet
    assert d(MicSpeechLikely()) == []


def test_a_conversation_that_ends_quietly_while_paused_plays_out_what_is_queued() -> None:
    d = answering(barge_in="speech")
    d(MicSpeechLikely())
    # The session's time is up: the conversation ends without silencing the answer...
    actions = d(ConnectionFailed(1, Failure("session_expired", "60 minutes")))
    assert FlushPlayback() not in actions
    # ...so the pause ends too, before the done chime is queued behind the answer.
    assert actions.index(ResumePlayback()) < actions.index(PlayChime("done"))
    assert CancelTimer(TIMER_HOLD) in actions
    assert not d.m.held


def test_talking_on_before_the_answer_started_cancels_it_when_it_starts() -> None:
    # The turn ended (a pause) and the answer was asked for; the person goes on talking before
    # the service has started it. That answer is to a question half asked: never play it.
    d = Driver(barge_in="speech")
    d.start_listening()
    assert CreateResponse() in sent(d.speak(500))
    # It goes on talking: a barge-in with nothing playing yet; the rest gets its own answer.
    assert CreateResponse() in sent(d.speak(800))
    actions = d.server(ResponseCreated("r_stale"))
    assert sent(actions) == [CancelResponse("r_stale")]
    assert of(PlayAudio, d.server(AudioDelta("r_stale", "i1", 0, bytes(4800)))) == []
    d.server(ResponseDone("r_stale", status="cancelled"))
    d.server(ResponseCreated("r_next"))
    assert of(PlayAudio, d.server(AudioDelta("r_next", "i2", 0, bytes(4800)))) != []


def test_with_wake_barge_in_speech_during_the_reply_is_not_uploaded() -> None:
    d = Driver(barge_in="wake")
    d.start_listening()
    d.speak(500)
    d.respond()
    assert sent(d.speak(1000)) == []


def test_server_vad_speech_barge_in_lets_the_server_cancel() -> None:
    d = Driver(detection="server_vad", barge_in="speech")
    d.start_listening()
    d.speak(500)
    d.respond("r1", "i1", samples=24000)
    actions = d(ServerEventReceived(1, ServerSpeechStarted(900, "u2"), played_samples=7200))
    assert FlushPlayback() in actions
    assert sent(actions) == [TruncateItem("i1", 0, 300)], "no cancel: the server cancels itself"
    assert d.m.state is State.LISTENING


# --- stop phrases ----------------------------------------------------------------------------

DETECTIONS = ["local", "server_vad"]


def take_turn(d: Driver, item_id: str) -> list[Action]:
    """A spoken turn that the service commits as `item_id`, in the Driver's detection mode."""
    out = d.speak(600)
    if d.m.server_detects_turns:
        out += d.server(ServerSpeechStarted(0, item_id))
        out += d.server(ServerSpeechStopped(600, item_id))
    out += d.server(AudioCommitted(item_id))
    return out


def heard(d: Driver, item_id: str, transcript: str, played_samples: int = 0) -> list[Action]:
    """The service's transcript of the person's turn `item_id` arrives."""
    event = InputTranscript(item_id, transcript)
    return d(ServerEventReceived(d.m.conversation, event, played_samples))


def assert_ended_quietly(actions: list[Action]) -> None:
    """The conversation ended well, with the done chime, and asked for no answer."""
    assert of(ConversationEnded, actions) == [ConversationEnded(1)]
    assert PlayChime("done") in actions
    assert StateChanged(State.IDLE, "stop phrase heard") in actions
    assert not of(PlayAudio, actions)
    assert not [e for e in sent(actions) if isinstance(e, CreateResponse)]


@pytest.mark.parametrize("detection", DETECTIONS)
def test_a_stop_phrase_heard_while_the_answer_plays_silences_it_and_ends(detection: str) -> None:
    d = Driver(detection=detection)
    d.start_listening()
    take_turn(d, "u1")
    d.respond("r1", "i1", samples=48000)  # 2 s of answer received
    actions = heard(d, "u1", "Hey Jarvis, stop.", played_samples=7200)  # 0.3 s heard
    # Silenced as a barge-in does it: speaker first, then cancel and truncate at what was
    # heard, all before the connection closes (the shell sends them before it closes).
    assert actions[:2] == [Transcript("user", "Hey Jarvis, stop."), FlushPlayback()]
    assert sent(actions) == [CancelResponse("r1"), TruncateItem("i1", 0, 300)]
    last_send = max(i for i, a in enumerate(actions) if isinstance(a, Send))
    assert last_send < actions.index(CloseConnection(1))
    assert_ended_quietly(actions)
    assert d.m.state is State.IDLE and d.timers == {}
    # The rest of that answer is never played.
    assert d.server(AudioDelta("r1", "i1", 0, bytes(4800))) == []
    assert d.server(ResponseDone("r1", "cancelled")) == []


@pytest.mark.parametrize("detection", DETECTIONS)
def test_a_stop_phrase_heard_before_the_answer_began_means_it_is_never_played(
    detection: str,
) -> None:
    d = Driver(detection=detection)
    d.start_listening()
    turn = take_turn(d, "u1")
    if detection == "local":
        assert CreateResponse() in sent(turn), "the device asked for the answer at once"
    assert d.m.state is State.RESPONDING
    actions = heard(d, "u1", "Stop.")
    assert FlushPlayback() in actions
    assert sent(actions) == [], "no response to cancel yet, nothing played to truncate"
    assert_ended_quietly(actions)
    # The service starts the answer anyway: not a sample of it is played.
    late = d.server(ResponseCreated("r1"))
    late += d.server(AudioDelta("r1", "i1", 0, bytes(24000)))
    late += d.server(ResponseDone("r1", "completed"))
    assert late == []
    assert d.m.state is State.IDLE


@pytest.mark.parametrize("detection", DETECTIONS)
def test_a_transcript_that_is_a_request_changes_nothing(detection: str) -> None:
    d = Driver(detection=detection)
    d.start_listening()
    take_turn(d, "u1")
    d.respond("r1", "i1", samples=24000)
    request = "How do I stop the washing machine?"
    assert heard(d, "u1", request, played_samples=2400) == [Transcript("user", request)]
    assert d.m.state is State.RESPONDING
    assert d.server(AudioDelta("r1", "i1", 0, bytes(4800))) == [PlayAudio(bytes(4800))]


@pytest.mark.parametrize("detection", DETECTIONS)
def test_the_transcript_of_an_older_turn_is_ignored(detection: str) -> None:
    d = Driver(detection=detection)
    d.start_listening()
    take_turn(d, "u1")
    d.respond("r1", "i1", samples=24000)
    d.server(ResponseDone("r1", "completed"))
    d(PlaybackDrained(d.m.enqueued_samples))
    assert d.m.state is State.LISTENING
    # A follow-up question begins before the first turn's transcript came.
    d(MicSpeechStarted(preroll=FRAME))
    assert heard(d, "u1", "Stop.") == [Transcript("user", "Stop.")], "the new turn is not over"
    d(MicSpeechAudio(FRAME * 30))
    d(MicSpeechEnded(), advance=0.6)
    if d.m.server_detects_turns:
        d.server(ServerSpeechStarted(1000, "u2"))
    assert heard(d, "u1", "Stop.") == [Transcript("user", "Stop.")]
    d.server(AudioCommitted("u2"))
    d.respond("r2", "i2", samples=24000)
    assert heard(d, "u1", "Stop.") == [Transcript("user", "Stop.")]
    assert d.m.state is State.RESPONDING
    assert d.server(AudioDelta("r2", "i2", 0, bytes(480))) == [PlayAudio(bytes(480))]
    # An item the service never said it committed is not the latest turn either.
    assert heard(d, "u9", "Stop.") == [Transcript("user", "Stop.")]


def test_with_server_detection_a_turn_the_service_heard_begin_makes_the_last_one_older() -> None:
    d = Driver(detection="server_vad")
    d.start_listening()
    d(MicSpeechStarted(preroll=FRAME))  # one long segment for the device...
    d(MicSpeechAudio(FRAME * 30))
    d.server(ServerSpeechStarted(0, "u1"))  # ...that the service takes as two turns
    d.server(ServerSpeechStopped(600, "u1"))
    d.server(AudioCommitted("u1"))
    d.server(ResponseCreated("r1"))
    d.server(ServerSpeechStarted(1200, "u2"))  # "stop ... actually, what about Paris?"
    assert heard(d, "u1", "Stop.") == [Transcript("user", "Stop.")]
    assert d.m.state is State.RESPONDING


def test_a_stop_phrase_after_a_wake_word_barge_in_ends_the_second_answer() -> None:
    d = Driver(barge_in="wake")
    d.start_listening()
    take_turn(d, "u1")
    d.respond("r1", "i1", samples=48000)
    d(MicSpeechStarted(preroll=FRAME, played_samples=12000))  # "hey jarvis, stop"
    barge = d(WakeWord("hey_jarvis", recent_audio=FRAME * 20, played_samples=12000))
    assert sent(barge)[:2] == [CancelResponse("r1"), TruncateItem("i1", 0, 500)]
    d(MicSpeechAudio(FRAME * 40))  # "stop" and the gate's trailing silence: a command
    end = d(MicSpeechEnded(), advance=0.8)
    assert sent(end)[-2:] == [CommitAudio(), CreateResponse()]
    d.server(AudioCommitted("u2"))
    d.respond("r2", "i2", samples=24000)
    actions = heard(d, "u2", "Hey Jarvis, stop.", played_samples=4800)
    assert sent(actions) == [CancelResponse("r2"), TruncateItem("i2", 0, 200)]
    assert_ended_quietly(actions)


def test_a_stop_phrase_after_the_answer_was_heard_still_ends_the_conversation() -> None:
    d = Driver()
    d.start_listening()
    take_turn(d, "u1")
    d.respond("r1", "i1", samples=2400)
    d.server(ResponseDone("r1", "completed"))
    d(PlaybackDrained(d.m.enqueued_samples))
    actions = heard(d, "u1", "Never mind.", played_samples=2400)
    assert sent(actions) == [], "nothing to cancel, everything was heard"
    assert_ended_quietly(actions)


# --- server turn detection -------------------------------------------------------------------


def test_server_vad_sends_trailing_silence_and_never_commits() -> None:
    d = Driver(detection="server_vad", silence_duration_ms=500)
    d.start_listening()
    actions = d.speak(600)
    events = sent(actions)
    assert not any(isinstance(e, (CommitAudio, CreateResponse)) for e in events)
    assert events[-1] == AppendAudio(ms(700)), "silence_duration_ms + margin of silence"
    assert d.m.state is State.LISTENING
    committed = d.server(AudioCommitted("u1"))
    assert d.m.state is State.RESPONDING
    assert of(StateChanged, committed)
    d.server(ResponseCreated("r1"))
    d.server(ResponseDone("r1", "completed"))
    assert d.m.state is State.LISTENING


def test_server_started_response_while_listening_moves_to_responding() -> None:
    d = Driver(detection="semantic_vad")
    d.start_listening()
    d.server(ResponseCreated("r9"))
    assert d.m.state is State.RESPONDING
    assert TIMER_FOLLOW_UP not in d.timers


# --- errors, limits, stop, mute --------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ServerError("response_cancel_not_active", "no active response"),
        ServerError("conversation_already_has_active_response", "busy"),
        ServerError("input_audio_buffer_commit_empty", "buffer too small"),
        ServerError(
            "", "Audio content of 900ms is already shorter than 1000ms", param="audio_end_ms"
        ),
    ],
)
def test_race_errors_are_harmless(error: ServerError) -> None:
    d = Driver()
    d.start_listening()
    code = error.code or error.error_type
    assert d.server(error) == [Notice("info", f"service: {code} ({error.message}), carrying on")]
    assert d.m.state is State.LISTENING


def test_other_server_errors_end_the_conversation_with_the_error_chime() -> None:
    d = Driver()
    d.start_listening()
    actions = d.server(ServerError("server_error", "The server had an error"))
    assert PlayChime("error") in actions
    [ended] = of(ConversationEnded, actions)
    assert ended.failure is not None
    assert "server_error" in ended.failure.message and ended.failure.server_code == "server_error"
    assert d.m.state is State.IDLE


def test_session_expiry_ends_cleanly() -> None:
    d = Driver()
    d.start_listening()
    actions = d(ConnectionFailed(1, Failure("session_expired", "60 minutes")))
    assert PlayChime("done") in actions
    assert of(ConversationEnded, actions)[0].failure is None
    d2 = Driver()
    d2.start_listening()
    actions = d2.server(ServerError("session_expired", "maximum duration"))
    assert PlayChime("done") in actions


def test_max_conversation_lets_the_answer_finish_then_closes() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.respond("r1", "i1", samples=2400)
    assert d.fire(TIMER_MAX_CONVERSATION) == []
    d.server(ResponseDone("r1", "completed"))
    actions = d(PlaybackDrained(played_samples=d.m.enqueued_samples))
    assert PlayChime("done") in actions
    assert d.m.state is State.IDLE


def test_max_conversation_while_listening_closes_at_once() -> None:
    d = Driver()
    d.start_listening()
    actions = d.fire(TIMER_MAX_CONVERSATION)
    assert CloseConnection(1) in actions
    assert d.m.state is State.IDLE


def test_a_cancelled_timer_firing_late_is_ignored() -> None:
    d = Driver()
    d.start_listening()
    token = d.timers[TIMER_FOLLOW_UP]
    d(MicSpeechStarted(preroll=FRAME))  # cancels the follow-up timer
    assert d(TimerFired(TIMER_FOLLOW_UP, token)) == []
    assert d.m.state is State.LISTENING


def test_stop_request_interrupts_everything() -> None:
    d = Driver()
    d.start_listening()
    d.speak(500)
    d.respond()
    actions = d(StopRequested("ctl stop"))
    assert actions[0] == FlushPlayback()
    assert CloseConnection(1) in actions
    assert d.m.state is State.IDLE
    assert d.timers == {}
    assert d(StopRequested()) == [], "stopping while idle does nothing"


def test_mute_ends_the_conversation_and_ignores_the_wake_word() -> None:
    d = Driver()
    d.start_listening()
    actions = d(MuteChanged(True))
    assert d.m.state is State.IDLE and CloseConnection(1) in actions
    assert d(WakeWord()) == []
    d(MuteChanged(False))
    assert OpenConnection(2) in d(WakeWord())


def test_muted_mid_turn_uploads_nothing_more() -> None:
    d = Driver()
    d.start_listening()
    d(MicSpeechStarted(preroll=FRAME))
    d(MuteChanged(True))
    assert d(MicSpeechAudio(FRAME)) == []


def test_too_short_a_turn_is_cleared_not_committed() -> None:
    d = Driver()
    d.start_listening()
    d(MicSpeechStarted(preroll=bytes(960)))  # 20 ms
    actions = d(MicSpeechEnded())
    assert sent(actions) == [ClearAudio()]
    assert d.m.state is State.LISTENING


# --- decisions that used to live in the daemon: backoff, reload, wake on/off, status ---------


def fail_connecting(d: Driver, failure: Failure | None = None) -> ConversationEnded:
    d(WakeWord())
    actions = d(ConnectionFailed(d.m.conversation, failure or Failure("connect", "refused")))
    [ended] = of(ConversationEnded, actions)
    return ended


def test_a_wake_word_during_the_backoff_after_a_failure_is_refused_with_the_error_chime() -> None:
    d = Driver()
    d.m.backoff = Backoff(rand=lambda: 1.0)  # delays of exactly 1, 2, 4 ... s
    ended = fail_connecting(d)
    assert ended.retry_in == 1.0
    actions = d(WakeWord(), advance=0.4)
    assert actions == [WakeRefused(pytest.approx(0.6), 1, "refused"), PlayChime("error")]
    assert d.m.state is State.IDLE
    assert OpenConnection(2) in d(WakeWord(), advance=0.6)  # the backoff has passed


def test_backoff_grows_with_each_failure_in_a_row_and_a_good_end_resets_it() -> None:
    d = Driver()
    d.m.backoff = Backoff(rand=lambda: 1.0)
    assert fail_connecting(d).retry_in == 1.0
    d.now += 1.0
    assert fail_connecting(d).retry_in == 2.0
    d.now += 2.0
    d.start_listening()
    assert ended_with(d(StopRequested("talkbox ctl stop"))) == ""
    assert d.m.backoff.consecutive_failures == 0
    assert of(OpenConnection, d(WakeWord())) == [OpenConnection(4)]


def test_a_failure_that_cannot_fix_itself_schedules_no_retry_and_refuses_no_wake() -> None:
    d = Driver()
    ended = fail_connecting(d, Failure("rejected", "HTTP 401", retryable=False))
    assert ended.retry_in is None
    assert of(OpenConnection, d(WakeWord())) == [OpenConnection(2)]


def test_the_server_code_decides_whether_an_error_event_is_retried() -> None:
    d = Driver()
    d.start_listening()
    [ended] = of(ConversationEnded, d.server(ServerError("invalid_api_key", "bad key")))
    assert ended.failure == Failure(
        "server_error", "service error invalid_api_key: bad key", "invalid_api_key", False
    )
    assert ended.retry_in is None
    d2 = Driver()
    d2.start_listening()
    [ended] = of(ConversationEnded, d2.server(ServerError("server_error", "oops")))
    assert ended.failure is not None and ended.failure.retryable
    assert ended.retry_in is not None


def test_a_reload_while_idle_applies_at_once_and_forgives_earlier_failures() -> None:
    d = Driver()
    fail_connecting(d)
    actions = d(ConfigChanged(MachineConfig(follow_up_seconds=3.0)))
    assert actions == [ConfigApplied(), SetWakeEnabled(True)]
    assert d.m.config.follow_up_seconds == 3.0
    assert of(OpenConnection, d(WakeWord())) == [OpenConnection(2)], "the fix is tried at once"


def test_a_reload_during_a_conversation_waits_for_its_end_and_keeps_mute_and_count() -> None:
    d = Driver()
    d.start_listening()
    assert of(ConfigApplied, d(ConfigChanged(MachineConfig(barge_in="off")))) == []
    assert d.m.config.barge_in == "wake"
    actions = d(ConnectionFailed(1, Failure("dropped", "gone")))
    # The failure is counted against the old settings first, then the new ones forgive it.
    ended = of(ConversationEnded, actions)[0]
    assert actions.index(ended) < actions.index(ConfigApplied())
    assert d.m.config.barge_in == "off"
    assert d.m.backoff.consecutive_failures == 0
    d(MuteChanged(True))
    d(ConfigChanged(MachineConfig()))
    assert d.m.muted and d.m.conversation == 1
    assert d.m.snapshot() == Snapshot(State.IDLE, True, 1, "gone")


def test_the_wake_word_detector_runs_only_when_a_wake_word_can_do_something() -> None:
    d = Driver()  # barge_in = "wake"
    assert d.m.wake_enabled
    assert SetWakeEnabled(False) in d(WakeWord())  # connecting
    assert of(SetWakeEnabled, d.ready()) == []  # listening: still off
    # Responding: a wake word may interrupt the answer.
    assert SetWakeEnabled(True) in d.speak(600)
    assert d.m.state is State.RESPONDING
    assert SetWakeEnabled(False) in d(MuteChanged(True))
    assert of(SetWakeEnabled, d(MuteChanged(False))) == [SetWakeEnabled(True)]


def test_without_barge_in_by_wake_word_the_detector_rests_while_responding() -> None:
    d = Driver(barge_in="off")
    d.start_listening()
    actions = d.speak(600)
    assert d.m.state is State.RESPONDING
    assert of(SetWakeEnabled, actions) == []
    assert not d.m.wake_enabled


def test_the_snapshot_counts_conversations_and_keeps_the_last_error() -> None:
    d = Driver()
    assert d.m.snapshot() == Snapshot(State.IDLE, False, 0, "")
    fail_connecting(d, Failure("rejected", "HTTP 404", retryable=False))
    d.start_listening()
    assert d.m.snapshot() == Snapshot(State.LISTENING, False, 1, "HTTP 404")
    d(StopRequested())
    assert d.m.snapshot() == Snapshot(State.IDLE, False, 2, "HTTP 404")


def test_a_stop_without_a_chime_ends_quietly() -> None:
    # Another speaker of the house took over (core/arbitration.py, Yielded).
    d = Driver()
    d.start_listening()
    ended = d(StopRequested("hall answers", chime=False))
    assert d.m.state is State.IDLE and not of(PlayChime, ended)
