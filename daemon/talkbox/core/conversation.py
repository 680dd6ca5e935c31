"""The conversation state machine: pure, synchronous, clock-free.

    IDLE --wake--> CONNECTING --session ready--> LISTENING --end of turn--> RESPONDING
      ^                |  failure                 ^   | follow-up silence       | response done
      |                v                          |   v                         | + playback drained
      +------- (chime) <--------------------------+---+<------------------------+

`ConversationMachine.step(input, now)` takes one input (see `inputs.py`) and the current
monotonic time and returns the actions to carry out, in order. It owns every piece of
conversation state: what is buffered, what was sent, which response is active, how much reply
audio the speaker was given. It also makes the decisions around conversations: whether a wake
word may connect after failures (the backoff), when a reloaded configuration takes over, when
the wake-word detector runs, and what status readers see (`snapshot`). Adapters hold none of
it, so every transition, including stale and out-of-order events, is a plain unit test.

A turn whose transcript is only a stop phrase ("stop", "never mind", `stop_phrases.py`)
silences its answer and ends the conversation; `_on_stop_phrase` says why it works that way.

A response may call functions: each call is run by the shell (`RunTool`, its result comes back
as `ToolFinished`), and once the response is done and every result has been sent the machine
asks for the answer; the state stays RESPONDING meanwhile. `end_conversation` is not run but
decided here: the conversation ends once the farewell has played.

Timers and alarms (`alarms.py`) are decided here too: the shell tells the machine what is
pending (`AlarmsChanged`) and the wall-clock time (`AlarmClockTick`, at the moment the machine
asked for with `ArmAlarmCheck`); the machine rings those due and has them removed
(`RemoveAlarms`). `_ring` says what a ring does to a conversation and how it stops.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, assert_never

from talkbox.audio_format import BYTES_PER_SAMPLE, REALTIME_RATE
from talkbox.core.alarms import MISSED_LIMIT_SECONDS, Alarm, due_now, seconds_until_check
from talkbox.core.events import (
    AppendAudio,
    AudioCleared,
    AudioCommitted,
    AudioDelta,
    AudioDone,
    CancelResponse,
    ClearAudio,
    ClientEvent,
    CommitAudio,
    CreateResponse,
    FunctionCall,
    Ignored,
    InputTranscript,
    ItemTruncated,
    OutputItemAdded,
    RateLimits,
    ResponseCreated,
    ResponseDone,
    SendFunctionOutput,
    ServerError,
    ServerSpeechStarted,
    ServerSpeechStopped,
    SessionCreated,
    SessionUpdated,
    TranscriptDelta,
    TranscriptDone,
    TruncateItem,
)
from talkbox.core.failures import (
    SESSION_EXPIRED_CODE,
    Failure,
    FailureKind,
    is_harmless,
    server_code_retryable,
)
from talkbox.core.inputs import (
    Action,
    AlarmClockTick,
    AlarmsChanged,
    Announce,
    ArmAlarmCheck,
    CancelTimer,
    ChimeKind,
    CloseConnection,
    ConfigApplied,
    ConfigChanged,
    ConnectionFailed,
    ConversationEnded,
    EndOfReply,
    FlushPlayback,
    HoldPlayback,
    Input,
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
    RemoveAlarms,
    ResumePlayback,
    RunTool,
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
    ToolFinished,
    Transcript,
    TurnFinished,
    WakeRefused,
    WakeWord,
)
from talkbox.core.response import FollowedResponse
from talkbox.core.retry import Backoff
from talkbox.core.stop_phrases import is_stop_phrase

# The service refuses commits of less than 100 ms of audio.
MIN_COMMIT_MS = 100

# A reply is ended as a failed response when its audio would pass either bound: no real answer
# comes near them, and everything received is queued for the speaker (the service sends faster
# than real time), so they bound what a broken or hostile service can make the daemon hold.
MAX_REPLY_SECONDS = 300.0
# Audio parts (item, content index) of one response; a real one has one or two.
MAX_REPLY_PARTS = 64

TIMER_FOLLOW_UP = "follow_up"
TIMER_MAX_CONVERSATION = "max_conversation"
TIMER_RESPONSE = "response"
TIMER_TOOL = "tool"
# With barge_in = "speech": a voice heard over the answer (MicSpeechLikely) pauses it for up to
# this long while the speech gate makes sure it is a person; a turn that opens meanwhile
# interrupts the answer, and without one it plays on from where it paused. A cough or a door
# costs the answer this much of a gap. Usually the gate is sure a frame or two after the
# pause, but over the echo's reverberation a request that begins with a short word and a gap
# ("what is the weather ...") took up to 600 ms more: at 0.4 s the answer played on first, and
# the 95th percentile from a person's first sound to the answer's silence was 537 ms against
# 319 at 0.8 s (simulated rooms: bench.echo_room, kitchen-drift, living-room and the hall,
# 240 s x 2 seeds each, with the false pauses the same: 2 in 24 minutes).
TIMER_HOLD = "hold"
HOLD_SECONDS = 0.8
# While a timer or alarm rings: the chime again every ALARM_REPEAT_SECONDS, until the ring's
# bound. A conversation's end leaves both running.
TIMER_ALARM_REPEAT = "alarm_repeat"
TIMER_ALARM_RING = "alarm_ring"
ALARM_TIMERS = (TIMER_ALARM_REPEAT, TIMER_ALARM_RING)
ALARM_REPEAT_SECONDS = 1.5
# One missed while talkbox was off rings this long at most: it tells whoever is there that
# something was missed, without a full ring for a moment long gone.
MISSED_RING_SECONDS = 30.0

# The one function the device does not run: the model calls it when the person says goodbye,
# and the conversation ends once the farewell has played (the tool adapters declare it).
END_CONVERSATION_TOOL = "end_conversation"
# A tool still running after this long: the person hears the "working" chime, then again
# every TOOL_FEEDBACK_REPEAT_SECONDS, instead of silence.
TOOL_FEEDBACK_SECONDS = 1.0
TOOL_FEEDBACK_REPEAT_SECONDS = 5.0
# More calls than this in one response are answered with an error, not run: no real answer
# needs them, and each one is work the device does for the service.
MAX_CALLS_PER_RESPONSE = 8
# What the model is told of a call the person interrupted (its result will not be reported).
INTERRUPTED_CALL_OUTPUT = '{"error": "interrupted: the person spoke before this finished"}'
# What the service is asked to say for an announcement (Home Assistant's notify entity).
ANNOUNCE_INSTRUCTIONS = (
    "Read this announcement aloud to the people in the room, exactly as written, word for "
    "word, in the language it is written in; say nothing else: {text}"
)
# An announcement that comes during a conversation is said once it has ended, if that is
# within this long (news of the doorbell is no news ten minutes on), and at most this many
# wait (the oldest give way).
ANNOUNCEMENT_WAIT_SECONDS = 120.0
MAX_WAITING_ANNOUNCEMENTS = 3
TOO_MANY_CALLS_OUTPUT = (
    f'{{"error": "not run: more than {MAX_CALLS_PER_RESPONSE} function calls in one response"}}'
)


@dataclass(frozen=True)
class MachineConfig:
    detection: Literal["local", "server_vad", "semantic_vad"] = "local"
    barge_in: Literal["wake", "speech", "off"] = "wake"
    follow_up_seconds: float = 8.0
    max_conversation_seconds: float = 300.0
    silence_duration_ms: int = 500
    # How long the service may go without answering (end of turn to the first audio, or
    # between two audio deltas) before we give up. Not the whole answer: a long story
    # streamed at about real time takes minutes, and only MAX_REPLY_SECONDS bounds it.
    response_timeout_seconds: float = 30.0
    # Speech after the wake word shorter than this (beyond the gate's silence hangover) is the
    # wake phrase's own tail, not a command: it is dropped, not sent as a turn.
    min_command_ms: int = 250
    sample_rate: int = REALTIME_RATE
    max_reply_seconds: float = MAX_REPLY_SECONDS
    # A ringing timer or alarm stops by itself after this long ([tools] alarm_ring_seconds).
    alarm_ring_seconds: float = 180.0
    # A Realtime service is configured: announcements are spoken by it (else a chime and a
    # log line: the echo provider has nothing to say them with).
    speak_announcements: bool = False


@dataclass(slots=True)
class _ReplyItem:
    item_id: str
    content_index: int
    start_offset: int  # position of its first sample in what the speaker was given
    received_samples: int = 0


class ConversationMachine:
    def __init__(self, config: MachineConfig, *, rand: Callable[[], float] = random.random) -> None:
        self.config = config
        self.state = State.IDLE
        self.muted = False
        self.conversation = 0
        # Failed attempts in a row: a wake word during their backoff does not connect.
        self.backoff = Backoff(rand)
        self.conversations_ended = 0
        self.last_error = ""
        self._pending_config: MachineConfig | None = None
        self._now = 0.0  # the time of the input being handled
        self._timer_tokens: dict[str, int] = {}
        self._next_token = 0
        # Timers and alarms pending (as the shell last said), those already rung or reported
        # whose removal from the file is not confirmed yet, and whether one rings now.
        self.alarms: tuple[Alarm, ...] = ()
        self.rung_alarms: set[str] = set()
        self.ringing = False
        # Announcements that came during a conversation: (text, when), said after it.
        self.waiting_announcements: list[tuple[str, float]] = []
        self._reset_conversation()
        self.in_segment = False  # the mic gate is inside a speech segment
        self._wake_enabled_said = self.wake_enabled

    # --- conversation-scoped state ------------------------------------------------------------

    def _reset_conversation(self) -> None:
        self.session_ready = False
        self.pending_upload: list[bytes] = []  # kept while connecting (speak-through)
        # Why to close at the next quiet moment ("" = do not): the maximum length was reached,
        # or the person said goodbye.
        self.ending = ""
        # The service's id of the person's latest turn (its committed audio), for a stop
        # phrase; None while a newer turn is being spoken and its id is not known yet.
        self.latest_user_item: str | None = None
        # An announcement: its text until the session is ready; then, until someone answers
        # it, the conversation ends once it has played (no follow-up listening).
        self.announcement: str | None = None
        self.announcing = False
        self._reset_turn()
        self._reset_response()
        self._reset_playback()

    def _reset_turn(self) -> None:
        self.turn_open = False  # audio of the current user turn is being taken
        self.turn_samples = 0
        # In the segment that holds the wake word, not yet sure it holds a command too.
        self.in_wake_segment = False
        self.held_audio: list[bytes] = []  # server detection only: kept until it is sure
        self.wake_segment_samples = 0
        self.speech_ended_at: float | None = None

    def _reset_response(self) -> None:
        self.awaiting_response = False  # a turn was ended; a response is expected
        self.response = FollowedResponse()
        self.response_done = True
        self.silenced_responses: set[str] = set()
        # Responses the device asked for (response.create) and then interrupted before the
        # service had started them: each is cancelled when it is created, never played.
        self.abandoned_requests = 0
        self.first_audio_at: float | None = None
        self.response_audio_at: float | None = None  # the awaited response's latest audio
        self._reset_reply_limits()
        self._reset_calls()

    def _reset_calls(self) -> None:
        self.calls_in_response = 0  # function calls the followed response made
        self.pending_calls: set[str] = set()  # run, their output not yet sent
        self.answer_after_calls = False  # their response is done: ask for the answer after them
        self.farewell = False  # the followed response called END_CONVERSATION_TOOL

    def _reset_reply_limits(self) -> None:
        # What the active response has sent so far, against MAX_REPLY_*.
        self.reply_samples = 0
        self.reply_parts = 0
        self.dropped_deltas = 0  # deltas that were not whole PCM16 samples

    def _reset_playback(self) -> None:
        self.enqueued_samples = (
            0  # reply and chime samples given to the speaker since the last flush
        )
        self.playing = False  # reply audio (not just a chime) is queued and not yet played
        self.reply_items: list[_ReplyItem] = []

    @property
    def held(self) -> bool:
        """Whether the answer is paused (HoldPlayback): until TIMER_HOLD fires or is cancelled."""
        return TIMER_HOLD in self._timer_tokens

    @property
    def server_detects_turns(self) -> bool:
        return self.config.detection != "local"

    @property
    def active_response_id(self) -> str | None:
        return self.response.response_id

    @property
    def wake_enabled(self) -> bool:
        """Whether the wake-word detector should run: idle, or able to barge in by wake word."""
        barge_in_by_wake = self.config.barge_in == "wake" and self.state is State.RESPONDING
        return not self.muted and (self.state is State.IDLE or barge_in_by_wake)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.state, self.muted, self.conversations_ended, self.last_error,
                        self.ringing)

    # --- entry point --------------------------------------------------------------------------

    def step(self, event: Input, now: float) -> list[Action]:
        self._now = now
        out: list[Action] = []
        match event:
            case WakeWord():
                self._on_wake(event, now, out)
            case MicSpeechStarted():
                self._on_speech_started(event, out)
            case MicSpeechLikely():
                self._on_speech_likely(out)
            case MicSpeechAudio():
                self._on_speech_audio(event.pcm, out)
            case MicSpeechEnded():
                self._on_speech_ended(now, out)
            case SessionReady():
                self._on_session_ready(event, out)
            case ConnectionFailed():
                if event.conversation == self.conversation and self.state is not State.IDLE:
                    if event.failure.kind == "session_expired":
                        self._end(out, reason="the service's session time limit was reached")
                    else:
                        self._end(out, failure=event.failure)
            case ServerEventReceived():
                # Only the session of the current conversation, and only once it is set up.
                if event.conversation == self.conversation and self.session_ready:
                    self._on_server_event(event, now, out)
            case PlaybackDrained():
                self._on_drained(event.played_samples, out)
            case TimerFired():
                self._on_timer(event, now, out)
            case StopRequested():
                if event.stop_ringing:
                    self._stop_ringing(event.reason, out)
                if self.state is not State.IDLE:
                    self._end(out, reason=event.reason, interrupt=True, chime=event.chime)
            case MuteChanged():
                self.muted = event.muted
                if event.muted and self.state is not State.IDLE:
                    self._end(out, reason="muted", interrupt=True)
            case ConfigChanged():
                self._pending_config = event.config
                if self.state is State.IDLE:
                    self._apply_pending_config(out)
            case ToolFinished():
                if event.conversation == self.conversation and self.session_ready:
                    self._on_tool_finished(event, out)
            case AlarmsChanged():
                # Forget the rung ones once the file no longer holds them.
                self.rung_alarms &= {alarm.id for alarm in event.alarms}
                self.alarms = tuple(a for a in event.alarms if a.id not in self.rung_alarms)
                self._check_alarms(event.wall_now, out, at_start=event.at_start)
            case AlarmClockTick():
                self._check_alarms(event.wall_now, out)
            case Announce():
                self._on_announce(event, out)
            case _:
                assert_never(event)
        self._say_wake_enabled(out)
        return out

    def _say_wake_enabled(self, out: list[Action], *, again: bool = False) -> None:
        enabled = self.wake_enabled
        if again or enabled != self._wake_enabled_said:
            self._wake_enabled_said = enabled
            out.append(SetWakeEnabled(enabled))

    def _apply_pending_config(self, out: list[Action]) -> None:
        config, self._pending_config = self._pending_config, None
        if config is None:
            return
        self.config = config
        # The failures counted so far were with the old settings (a mistyped endpoint, a wrong
        # key): the first wake after a fix must try at once, not be refused with a chime.
        self.backoff.success()
        out.append(ConfigApplied())
        # The shell may have a new front end for the new settings: tell it whether to listen.
        self._say_wake_enabled(out, again=True)

    # --- microphone ---------------------------------------------------------------------------

    def _on_wake(self, event: WakeWord, now: float, out: list[Action]) -> None:
        if self.ringing:
            # The wake word only silences the ring; the next one opens a conversation.
            self._stop_ringing("wake word", out)
            return
        if self.state is State.IDLE:
            wait = self.backoff.remaining(now)
            if wait > 0:
                failures = self.backoff.consecutive_failures
                out.append(WakeRefused(wait, failures, self.last_error))
                self._chime("error", out)
                return
        if self.muted:
            return
        if self.state is State.IDLE:
            self.conversation += 1
            self._reset_conversation()
            self._set_state(State.CONNECTING, f"wake word {event.model}".strip(), out)
            out.append(OpenConnection(self.conversation))
            self._chime("wake", out)
            self._start_timer(TIMER_MAX_CONVERSATION, self.config.max_conversation_seconds, out)
            self._begin_wake_turn(event, out)
        elif self.config.barge_in == "wake" and self._assistant_is_talking():
            self._barge_in(event.played_samples, out)
            self._begin_wake_turn(event, out)
        elif self.state is State.LISTENING and not self.turn_open:
            # Wake word said again as a follow-up: just treat it as the start of a turn.
            self._begin_wake_turn(event, out)

    def _on_announce(self, event: Announce, out: list[Action]) -> None:
        """Say the text through the service: a conversation of one response, which ends once
        it has played (nobody asked a question, so the microphone does not listen for one;
        the wake word still interrupts it, or with barge_in = "speech" any speech, and then
        the conversation goes on). During a conversation it waits for the end
        (ANNOUNCEMENT_WAIT_SECONDS at most; not after a stop, a mute or a timer that rings,
        which interrupt it). Without a service, or while the service is backing off after
        failures, a chime and the log."""
        if self.muted:
            out.append(Notice("info", f"announcement not made (muted): {event.text}"))
            return
        if self.ringing:  # the ring is what must be heard now
            out.append(Notice("info", f"announcement (not spoken: a timer rings): {event.text}"))
            return
        idle = self.state is State.IDLE
        if idle and self.config.speak_announcements and self.backoff.remaining(self._now) <= 0:
            self.conversation += 1
            self._reset_conversation()
            self.announcement = event.text
            self.announcing = True
            self._set_state(State.CONNECTING, "announcement", out)
            out.append(OpenConnection(self.conversation))
            self._start_timer(TIMER_MAX_CONVERSATION, self.config.max_conversation_seconds, out)
            out.append(Notice("info", f"announcement: {event.text}"))
            return
        if not idle and self.config.speak_announcements:
            waiting = self.waiting_announcements
            if len(waiting) == MAX_WAITING_ANNOUNCEMENTS:
                dropped, _ = waiting.pop(0)
                out.append(Notice("info", f"announcement not made (newer ones wait): {dropped}"))
            waiting.append((event.text, self._now))
            out.append(Notice("info", f"announcement (after this conversation): {event.text}"))
            return
        if idle:
            self._chime("wake", out)
        out.append(Notice("info", f"announcement: {event.text}"))

    def _announce_waiting(self, out: list[Action]) -> None:
        """The conversation has ended: say the oldest announcement that came during it."""
        while self.waiting_announcements and self.state is State.IDLE:
            text, at = self.waiting_announcements.pop(0)
            if self._now - at > ANNOUNCEMENT_WAIT_SECONDS:
                out.append(Notice("info", f"announcement not made (it came "
                                          f"{self._now - at:.0f} s ago, during a conversation): "
                                          f"{text}"))
                continue
            self._on_announce(Announce(text), out)

    def _say_announcement(self, text: str, out: list[Action]) -> None:
        self._set_state(State.RESPONDING, "announcing", out)
        self._send(CreateResponse(ANNOUNCE_INSTRUCTIONS.format(text=text)), out)
        self._expect_response(out)

    def _begin_wake_turn(self, event: WakeWord, out: list[Action]) -> None:
        self._reset_turn()
        self._cancel_timer(TIMER_FOLLOW_UP, out)
        if self.in_segment:
            # The command may follow the wake phrase in one breath: take what was just said
            # and the rest of this segment. Until the segment is long enough to hold more than
            # the wake phrase's tail, it may still be taken back (see _on_speech_ended).
            self.turn_open = True
            self.latest_user_item = None
            self.in_wake_segment = True
            self._take_turn_audio(event.recent_audio, out, counts_as_command=False)
        if self.state is State.LISTENING and not self.turn_open:
            self._start_timer(TIMER_FOLLOW_UP, self.config.follow_up_seconds, out)

    def _on_speech_started(self, event: MicSpeechStarted, out: list[Action]) -> None:
        self.in_segment = True
        if self.muted or self.state is State.IDLE or self.announcement is not None:
            return  # (the room talking while an announcement connects is not a turn)
        if self.state is State.RESPONDING or self.playing:
            if not (self.config.barge_in == "speech" and self._assistant_is_talking()):
                return
            if not self.server_detects_turns:
                self._barge_in(event.played_samples, out)
            # With server VAD the service hears the speech and cancels its response itself
            # (interrupt_response); we stop the speaker when it says speech_started.
        if self.turn_open:
            return
        self._reset_turn()
        self.turn_open = True
        self.latest_user_item = None
        self._cancel_timer(TIMER_FOLLOW_UP, out)
        self._take_turn_audio(event.preroll, out)

    def _on_speech_likely(self, out: list[Action]) -> None:
        """Maybe a person talking over the answer: pause it while the gate makes sure."""
        if (
            self.muted
            or self.held
            or not self.playing
            or self.config.barge_in != "speech"
            or self.server_detects_turns  # the service decides; it does so later than this
        ):
            return
        out.append(HoldPlayback())
        self._start_timer(TIMER_HOLD, HOLD_SECONDS, out)

    def _on_speech_audio(self, pcm: bytes, out: list[Action]) -> None:
        if self.muted or not self.turn_open:
            return
        self._take_turn_audio(pcm, out)

    def _take_turn_audio(
        self, pcm: bytes, out: list[Action], *, counts_as_command: bool = True
    ) -> None:
        if not self.in_wake_segment:
            self._upload(pcm, out)
            return
        if counts_as_command:
            self.wake_segment_samples += len(pcm) // BYTES_PER_SAMPLE
        if self.wake_segment_samples >= self._command_threshold_samples():
            self.in_wake_segment = False  # more than the wake phrase's tail: a command
        if not self.server_detects_turns:
            # Streamed at once: the service does nothing with it before our commit, and a
            # wake-phrase tail is cleared. Waiting would delay everything by the threshold.
            self._upload(pcm, out)
            return
        # With server detection the service would take the tail alone for a turn: hold it.
        self.held_audio.append(pcm)
        if not self.in_wake_segment:
            held, self.held_audio = self.held_audio, []
            for chunk in held:
                self._upload(chunk, out)

    def _command_threshold_samples(self) -> int:
        ms = self.config.silence_duration_ms + self.config.min_command_ms
        return ms * self.config.sample_rate // 1000

    def _upload(self, pcm: bytes, out: list[Action]) -> None:
        if not pcm:
            return
        self.turn_samples += len(pcm) // BYTES_PER_SAMPLE
        if self.session_ready:
            self._send(AppendAudio(pcm), out)
        else:
            self.pending_upload.append(pcm)

    def _on_speech_ended(self, now: float, out: list[Action]) -> None:
        self.in_segment = False
        if not self.turn_open:
            return
        if self.in_wake_segment:
            # Only the wake phrase: take back what was sent of it and wait for the command.
            if self.turn_samples and self.session_ready:
                self._send(ClearAudio(), out)
            self.pending_upload.clear()
            self._reset_turn()
            if self.state is State.LISTENING:
                self._start_timer(TIMER_FOLLOW_UP, self.config.follow_up_seconds, out)
            return
        self.turn_open = False
        self.speech_ended_at = now
        if self.server_detects_turns:
            # The service ends the turn when it hears silence_duration_ms of silence: give it
            # that silence (plus a margin) instead of streaming the quiet room.
            silence_ms = self.config.silence_duration_ms + 200
            self._upload(
                bytes(silence_ms * self.config.sample_rate // 1000 * BYTES_PER_SAMPLE), out
            )
            if self.state is State.LISTENING:
                self._start_timer(TIMER_FOLLOW_UP, self.config.follow_up_seconds, out)
            return
        if self.turn_samples * 1000 < MIN_COMMIT_MS * self.config.sample_rate:
            # Too short for the service to accept as a turn: drop it wherever it is.
            if self.session_ready:
                self._send(ClearAudio(), out)
            self.pending_upload.clear()
            self._reset_turn()
            return
        if self.session_ready:
            self._end_turn(out)
        # else: the turn is complete in the speak-through buffer; it is sent on session ready.

    def _end_turn(self, out: list[Action]) -> None:
        """Local detection: the device decided the user has finished speaking."""
        self._send(CommitAudio(), out)
        if self.response.response_id is None:  # never two responses at once
            self._send(CreateResponse(), out)
        self._expect_response(out)

    def _expect_response(self, out: list[Action]) -> None:
        self.awaiting_response = True
        self.response_done = False
        self._cancel_timer(TIMER_FOLLOW_UP, out)
        self._start_response_timer(out)
        if self.state is not State.RESPONDING:
            self._set_state(State.RESPONDING, "end of turn", out)

    # --- connection ---------------------------------------------------------------------------

    def _on_session_ready(self, event: SessionReady, out: list[Action]) -> None:
        if event.conversation != self.conversation or self.state is not State.CONNECTING:
            # A session that finished setting up after its conversation ended: let it go.
            out.append(CloseConnection(event.conversation))
            return
        self.session_ready = True
        if self.announcement is not None:
            text, self.announcement = self.announcement, None
            self._say_announcement(text, out)
            return
        self._set_state(State.LISTENING, "session ready", out)
        pending, self.pending_upload = self.pending_upload, []
        for chunk in pending:
            self._send(AppendAudio(chunk), out)
        turn_complete = not self.turn_open and self.turn_samples > 0
        if turn_complete and not self.server_detects_turns:
            self._end_turn(out)
        elif not self.turn_open and self.turn_samples == 0:
            self._start_timer(TIMER_FOLLOW_UP, self.config.follow_up_seconds, out)

    def _on_server_event(
        self, received: ServerEventReceived, now: float, out: list[Action]
    ) -> None:
        event = received.event
        match event:
            case AudioDelta():
                self._on_audio_delta(event, now, out)
            case ResponseCreated():
                if self.abandoned_requests and self.response.response_id is None:
                    self.abandoned_requests -= 1
                    self.silenced_responses.add(event.response_id)
                    self._send(CancelResponse(event.response_id), out)
                elif self.response.created(event):
                    self.response_done = False
                    self._reset_reply_limits()
                    self.awaiting_response = False
                    if self.state is State.LISTENING:
                        # Server VAD started a response on its own.
                        self._cancel_timer(TIMER_FOLLOW_UP, out)
                        self._start_response_timer(out)
                        self._set_state(State.RESPONDING, "server started a response", out)
            case ResponseDone():
                self._on_response_done(event, now, out)
            case FunctionCall():
                self._on_function_call(event, out)
            case ServerSpeechStarted():
                if self.server_detects_turns:
                    self.latest_user_item = event.item_id  # a newer turn
                    self._cancel_timer(TIMER_FOLLOW_UP, out)
                    if self.config.barge_in == "speech" and self._assistant_is_talking():
                        self._barge_in(received.played_samples, out, server_cancels=True)
            case AudioCommitted():
                self.latest_user_item = event.item_id  # its transcript may say "stop"
                if self.server_detects_turns and self.state is State.LISTENING:
                    self._expect_response(out)
            case ServerSpeechStopped():
                if self.server_detects_turns and self.state is State.LISTENING:
                    self._expect_response(out)
            case TranscriptDone():
                if event.response_id not in self.silenced_responses:
                    out.append(Transcript("assistant", event.transcript))
            case InputTranscript():
                out.append(Transcript("user", event.transcript))
                if event.item_id == self.latest_user_item and is_stop_phrase(event.transcript):
                    self._on_stop_phrase(received.played_samples, out)
            case ServerError():
                self._on_server_error(event, out)
            case (
                SessionCreated()
                | SessionUpdated()
                | AudioCleared()
                | OutputItemAdded()
                | AudioDone()
                | TranscriptDelta()
                | ItemTruncated()
                | RateLimits()
                | Ignored()
            ):
                pass  # nothing a conversation acts on
            case _:
                assert_never(event)

    def _on_audio_delta(self, event: AudioDelta, now: float, out: list[Action]) -> None:
        if event.response_id in self.silenced_responses or not self.response.is_followed(
            event.response_id
        ):
            return  # late audio of an interrupted or unknown response: never play it
        if len(event.pcm) % BYTES_PER_SAMPLE:
            # Not PCM16: its samples cannot be told apart. Dropping the whole delta keeps the
            # ones after it aligned; one bad delta costs that delta, never the conversation.
            self.dropped_deltas += 1
            if self.dropped_deltas == 1:
                out.append(Notice(
                    "warning",
                    f"dropped an audio delta of {len(event.pcm)} bytes from the service: not "
                    "whole 16-bit samples (any more in this answer are dropped without a log line)",
                ))
            return
        samples = len(event.pcm) // BYTES_PER_SAMPLE
        if samples == 0:
            return
        item = self.reply_items[-1] if self.reply_items else None
        if item is not None and (item.item_id, item.content_index) != (
            event.item_id,
            event.content_index,
        ):
            item = None  # a new audio part begins
        if self.reply_samples + samples > self.config.max_reply_seconds * self.config.sample_rate:
            seconds = self.config.max_reply_seconds
            self._fail(
                "answer_refused",
                f"the service's answer ran past {seconds:g} s of audio, longer than any "
                "real answer; talkbox stopped it",
                out,
            )
            return
        if item is None and self.reply_parts >= MAX_REPLY_PARTS:
            self._fail(
                "answer_refused",
                f"the service's answer came in more than {MAX_REPLY_PARTS} audio parts, "
                "more than any real answer; talkbox stopped it",
                out,
            )
            return
        self.reply_samples += samples
        if item is None:
            self.reply_parts += 1
            item = _ReplyItem(event.item_id, event.content_index, self.enqueued_samples)
            self.reply_items.append(item)
        item.received_samples += samples
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.response_audio_at = now
        self.enqueued_samples += samples
        self.playing = True
        out.append(PlayAudio(event.pcm))

    def _on_response_done(self, event: ResponseDone, now: float, out: list[Action]) -> None:
        if not self.response.done(event):
            return  # a response we already stopped caring about (barge-in) or never saw
        self.response_done = True
        self._cancel_timer(TIMER_RESPONSE, out)
        latency = None
        if self.first_audio_at is not None and self.speech_ended_at is not None:
            latency = (self.first_audio_at - self.speech_ended_at) * 1000.0
        out.append(TurnFinished(self.conversation, latency, event.usage, event.status))
        self.first_audio_at = None
        if event.status == "failed":
            code = event.error_code or "server_error"
            self._fail(
                "answer_failed", f"the service could not answer (response failed: {code})", out
            )
            return
        if self.playing:
            out.append(EndOfReply())  # play out what is queued; the speaker reports drained
        if self.calls_in_response:
            self._after_calls(out)
        elif not self.playing:
            self._to_listening("answer finished", out)

    def _on_server_error(self, event: ServerError, out: list[Action]) -> None:
        if is_harmless(event):
            code = event.code or event.error_type
            out.append(Notice("info", f"service: {code} ({event.message}), carrying on"))
            return
        if event.code == SESSION_EXPIRED_CODE:
            self._end(out, reason="the service's session time limit was reached")
            return
        failure = Failure(
            "server_error",
            f"service error {event.code or event.error_type}: {event.message}",
            server_code=event.code,
            retryable=server_code_retryable(event.code),
        )
        self._end(out, failure=failure)

    # --- function calls -----------------------------------------------------------------------

    def _on_function_call(self, event: FunctionCall, out: list[Action]) -> None:
        if event.response_id in self.silenced_responses or not self.response.is_followed(
            event.response_id
        ):
            return  # a call of an interrupted or unknown response: never run it
        self.calls_in_response += 1
        if event.name == END_CONVERSATION_TOOL:
            self.farewell = True
            return
        if self.calls_in_response > MAX_CALLS_PER_RESPONSE:
            self._send(SendFunctionOutput(event.call_id, TOO_MANY_CALLS_OUTPUT), out)
            return
        self.pending_calls.add(event.call_id)
        out.append(RunTool(self.conversation, event.call_id, event.name, event.arguments))
        if TIMER_TOOL not in self._timer_tokens:
            self._start_timer(TIMER_TOOL, TOOL_FEEDBACK_SECONDS, out)

    def _after_calls(self, out: list[Action]) -> None:
        """The response that called functions is done (its audio, if any, is playing out)."""
        self.calls_in_response = 0
        if self.farewell:
            # The person said goodbye: close once the farewell has played. Results of other
            # calls of this response still reach the model while it plays; no answer to them.
            self.farewell = False
            self.ending = "the person said goodbye"
            if not self.playing:
                self._end(out, reason=self.ending)
            return
        # The model answers once it has every result: until then no listening, no timeout
        # of the response (each tool has its own time limit).
        self.awaiting_response = True
        self.answer_after_calls = True
        if not self.pending_calls:
            self._answer_calls(out)

    def _on_tool_finished(self, event: ToolFinished, out: list[Action]) -> None:
        if event.call_id not in self.pending_calls:
            return  # abandoned (the person interrupted) or never asked for
        self.pending_calls.discard(event.call_id)
        self._send(SendFunctionOutput(event.call_id, event.output), out)
        if self.pending_calls:
            return
        self._cancel_timer(TIMER_TOOL, out)
        if self.answer_after_calls:
            self._answer_calls(out)

    def _answer_calls(self, out: list[Action]) -> None:
        self.answer_after_calls = False
        self._send(CreateResponse(), out)
        self._expect_response(out)

    def _abandon_calls(self, out: list[Action]) -> None:
        """The person interrupted: results still to come are not reported; the model is told."""
        for call_id in sorted(self.pending_calls):
            self._send(SendFunctionOutput(call_id, INTERRUPTED_CALL_OUTPUT), out)
        self._cancel_timer(TIMER_TOOL, out)
        self._reset_calls()

    # --- speaker ------------------------------------------------------------------------------

    def _on_drained(self, played_samples: int, out: list[Action]) -> None:
        if played_samples < self.enqueued_samples:
            return  # a drain reported before the latest audio was queued
        self.playing = False
        if self.state is State.RESPONDING and self.response_done and not self.awaiting_response:
            self._to_listening("answer played", out)

    def _assistant_is_talking(self) -> bool:
        return self.state is State.RESPONDING or self.playing

    def _barge_in(
        self, played_samples: int, out: list[Action], server_cancels: bool = False
    ) -> None:
        """The user interrupts: silence the answer, then listen to what they say."""
        self.announcing = False  # someone answers: a conversation now
        self._silence_answer(played_samples, out, server_cancels=server_cancels)
        if self.state is State.RESPONDING:
            self._set_state(State.LISTENING, "interrupted", out)

    def _on_stop_phrase(self, played_samples: int, out: list[Action]) -> None:
        """The person's latest turn was only "stop" (or "cancel", "never mind", ...).

        Its answer is silenced as by a barge-in and the conversation ends (done chime, idle):
        no answer is wanted, and, as with "Alexa, stop" or "Hey Google, stop", stop means
        this interaction is over. Going back to listening instead would keep the microphone
        open for follow_up_seconds after the person asked for quiet, and answer whatever the
        room says meanwhile; the done chime tells them it stopped listening, and the next
        request starts with the wake word.

        The device acts on the service's transcript of the turn ([realtime]
        transcription_model): nothing waits for it, so a request that is not a stop phrase is
        answered exactly as it would be without this, with local and server turn detection
        alike, and no tool is needed. The cost is that the transcript of a short utterance
        comes a few hundred ms after the turn ended, while the answer may already be playing:
        at worst its first word or so is heard. When the transcript comes before the service
        has created the response (local detection asks for it at the end of the turn), the
        response is never played: the conversation is over, its session is closed, and
        nothing of a closed conversation is played. Without a transcription model the device
        cannot know what was said, and "stop" is answered like any request.
        """
        self._silence_answer(played_samples, out)
        self._end(out, reason="stop phrase heard")

    def _silence_answer(
        self, played_samples: int, out: list[Action], server_cancels: bool = False
    ) -> None:
        """Silence the speaker, stop the response, forget the words that were not heard."""
        out.append(FlushPlayback())
        response_id = self.response.drop()
        if response_id is not None:
            self.silenced_responses.add(response_id)
            if not server_cancels:
                self._send(CancelResponse(response_id), out)
        elif self.awaiting_response and not self.server_detects_turns:
            self.abandoned_requests += 1  # asked for, not started yet: cancel it when it is
        truncate = self._truncation(played_samples)
        if truncate is not None:
            self._send(truncate, out)
        self.response_done = True
        self.awaiting_response = False
        self._cancel_timer(TIMER_RESPONSE, out)
        self._abandon_calls(out)
        self._cancel_timer(TIMER_HOLD, out)
        self._reset_playback()

    def _truncation(self, played_samples: int) -> TruncateItem | None:
        for item in reversed(self.reply_items):
            if played_samples < item.start_offset:
                continue
            played_in_item = played_samples - item.start_offset
            if played_in_item >= item.received_samples:
                return None  # fully heard: nothing to forget
            audio_end_ms = played_in_item * 1000 // self.config.sample_rate
            received_ms = item.received_samples * 1000 // self.config.sample_rate
            return TruncateItem(item.item_id, item.content_index, min(audio_end_ms, received_ms))
        # Nothing of the reply was heard yet: forget all of its first item.
        if self.reply_items:
            first = self.reply_items[0]
            return TruncateItem(first.item_id, first.content_index, 0)
        return None

    # --- timers and endings -------------------------------------------------------------------

    def _on_timer(self, event: TimerFired, now: float, out: list[Action]) -> None:
        if self._timer_tokens.get(event.name) != event.token:
            return  # cancelled or restarted since
        del self._timer_tokens[event.name]
        if event.name == TIMER_ALARM_REPEAT:
            if self.ringing:
                self._chime("alarm", out)
                self._start_timer(TIMER_ALARM_REPEAT, ALARM_REPEAT_SECONDS, out)
            return
        if event.name == TIMER_ALARM_RING:
            self._stop_ringing("it rang for its time", out)
            return
        if event.name == TIMER_HOLD:
            out.append(ResumePlayback())  # no turn opened: it was not someone talking
            return
        if self.state is State.IDLE:
            return
        if event.name == TIMER_FOLLOW_UP:
            if self.state is State.LISTENING and not self.turn_open:
                self._end(out, reason="no follow-up")
        elif event.name == TIMER_MAX_CONVERSATION:
            if self.state is State.RESPONDING or self.turn_open:
                # Let the current turn finish, then close.
                self.ending = "maximum conversation length reached"
            else:
                self._end(out, reason="maximum conversation length reached")
        elif event.name == TIMER_TOOL:
            if self.pending_calls:
                self._chime("working", out)
                self._start_timer(TIMER_TOOL, TOOL_FEEDBACK_REPEAT_SECONDS, out)
        elif event.name == TIMER_RESPONSE:
            seconds = self.config.response_timeout_seconds
            last_audio = self.response_audio_at
            quiet_for = seconds if last_audio is None else now - last_audio
            if quiet_for < seconds:  # still answering: wait out the rest from its last audio
                self._start_timer(TIMER_RESPONSE, seconds - quiet_for, out)
            elif last_audio is not None:
                self._fail("no_answer", f"the service stopped answering for {seconds:g} s", out)
            else:
                self._fail("no_answer", f"the service did not answer within {seconds:g} s", out)

    def _to_listening(self, reason: str, out: list[Action]) -> None:
        if self.announcing:
            self._end(out, reason="announcement made")
            return
        if self.ending:
            self._end(out, reason=self.ending)
            return
        self._set_state(State.LISTENING, reason, out)
        if not self.turn_open:
            self._start_timer(TIMER_FOLLOW_UP, self.config.follow_up_seconds, out)

    def _fail(self, kind: FailureKind, message: str, out: list[Action]) -> None:
        self._end(out, failure=Failure(kind, message))

    def _end(
        self,
        out: list[Action],
        *,
        reason: str = "",
        failure: Failure | None = None,
        interrupt: bool = False,
        chime: bool = True,
    ) -> None:
        if failure is not None or interrupt:
            out.append(FlushPlayback())
        elif self.held:  # what is queued plays out, as it would have without the pause
            out.append(ResumePlayback())
        for name in list(self._timer_tokens):
            if name not in ALARM_TIMERS:
                self._cancel_timer(name, out)
        out.append(CloseConnection(self.conversation))
        if chime or failure is not None:
            self._chime("error" if failure is not None else "done", out)
        # The error itself is logged once, from ConversationEnded; the state line stays short.
        self._set_state(State.IDLE, "conversation failed" if failure is not None else reason, out)
        self.conversations_ended += 1
        retry_in = None
        if failure is not None:
            self.last_error = failure.message
            retry_in = self.backoff.failure(failure.retryable, self._now)
        else:
            self.backoff.success()
        out.append(ConversationEnded(self.conversation, failure, retry_in))
        self._reset_conversation()
        # A reload waited for this conversation to end; its outcome above was of the old settings.
        self._apply_pending_config(out)
        if interrupt:  # stopped, muted, or a timer rings: not the moment for more talk
            for text, _ in self.waiting_announcements:
                out.append(Notice("info", f"announcement not made ({reason}): {text}"))
            self.waiting_announcements.clear()
        else:
            self._announce_waiting(out)

    # --- timers and alarms ---------------------------------------------------------------------

    def _check_alarms(self, wall_now: float, out: list[Action], *, at_start: bool = False
                      ) -> None:
        """Ring those due at `wall_now` (all at once: one ring), have them removed, and ask
        to be told the time again when the next is due."""
        due = due_now(self.alarms, wall_now)
        if due.all:
            # At start every one due came due while talkbox was not running.
            on_time, missed = ((), due.on_time + due.missed) if at_start else (
                due.on_time, due.missed)
            how = "while talkbox was off" if at_start else "(the clock jumped past it)"
            hours = MISSED_LIMIT_SECONDS / 3600
            for alarm in on_time:
                out.append(Notice("info", f"{alarm.name} rings (due at {alarm.clock_time})"))
            for alarm in missed:
                out.append(Notice("warning", f"{alarm.name} due at {alarm.clock_time} was "
                                             f"missed {how}"))
            for alarm in due.too_old:
                out.append(Notice("warning", f"{alarm.name} due at {alarm.due_local} was "
                                             f"missed {how}, more than {hours:g} hours ago: "
                                             "not rung"))
            ids = tuple(alarm.id for alarm in due.all)
            self.rung_alarms.update(ids)
            self.alarms = tuple(a for a in self.alarms if a.id not in self.rung_alarms)
            out.append(RemoveAlarms(ids))
            if on_time:
                self._ring(self.config.alarm_ring_seconds, out)
            elif missed:
                self._ring(min(MISSED_RING_SECONDS, self.config.alarm_ring_seconds), out)
        out.append(ArmAlarmCheck(seconds_until_check(self.alarms, wall_now)))

    def _ring(self, seconds: float, out: list[Action]) -> None:
        """Ring for at most `seconds` (more come due meanwhile: the ring goes on, its bound
        starts again).

        A conversation is ended first (as by `talkbox ctl stop`: its answer is cut, the done
        chime plays): an owner set a timer or alarm to be interrupted by it, and a pasta timer
        that waits for the end of a story is a burnt pasta. Ringing over the answer would mix
        the two, and the wake word would have to mean both "stop ringing" and "I interrupt
        you". So the ring always sounds with the device idle, and the wake word, `talkbox
        ctl stop` and the bound are its three ends, the same in every case.
        """
        if self.state is not State.IDLE:
            self._end(out, reason="a timer or alarm rings", interrupt=True)
        if not self.ringing:
            self.ringing = True
            self._chime("alarm", out)
            self._start_timer(TIMER_ALARM_REPEAT, ALARM_REPEAT_SECONDS, out)
        self._start_timer(TIMER_ALARM_RING, seconds, out)

    def _stop_ringing(self, reason: str, out: list[Action]) -> None:
        if not self.ringing:
            return
        self.ringing = False
        for name in ALARM_TIMERS:
            self._cancel_timer(name, out)
        out.append(FlushPlayback())  # the chime stops now, not at its end
        out.append(Notice("info", f"ringing stopped: {reason}"))

    # --- helpers ------------------------------------------------------------------------------

    def _set_state(self, state: State, reason: str, out: list[Action]) -> None:
        if state is not self.state:
            self.state = state
            out.append(StateChanged(state, reason))

    def _send(self, event: ClientEvent, out: list[Action]) -> None:
        out.append(Send(self.conversation, event))

    def _chime(self, kind: ChimeKind, out: list[Action]) -> None:
        out.append(PlayChime(kind))

    def _start_timer(self, name: str, seconds: float, out: list[Action]) -> None:
        self._next_token += 1
        self._timer_tokens[name] = self._next_token
        out.append(StartTimer(name, seconds, self._next_token))

    def _start_response_timer(self, out: list[Action]) -> None:
        self.response_audio_at = None
        self._start_timer(TIMER_RESPONSE, self.config.response_timeout_seconds, out)

    def _cancel_timer(self, name: str, out: list[Action]) -> None:
        if self._timer_tokens.pop(name, None) is not None:
            out.append(CancelTimer(name))
