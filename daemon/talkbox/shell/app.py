"""The daemon: wires the audio front end, the Realtime connection and the speaker to the core.

One asyncio loop owns everything but the capture front end, which runs on a thread of its own
and hands its events to the loop. Adapters turn what happens (the front end's events, a server
event, the speaker running dry, a timer) into inputs for `ConversationMachine.step`, which
runs synchronously; the app then carries out the actions it returns. No conversation state
lives here, nor any decision: only handles on I/O (the open session, timers, devices).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, assert_never, get_args

from talkbox.audio.chimes import chime
from talkbox.audio.echo_cancel import EchoCanceller, SpeakerReference
from talkbox.audio.frontend import (
    OVER_ECHO_PADDING_MS,
    OVER_ECHO_START,
    UPLOAD_LAG_FRAMES,
    FrontEnd,
    FrontEndEvent,
    VadFrame,
    WakeDetected,
    WakeScores,
)
from talkbox.audio.level import speech_level_db
from talkbox.audio.mixer import scaled
from talkbox.audio.vad import (
    GateSpeechAudio,
    GateSpeechEnded,
    GateSpeechLikely,
    GateSpeechStarted,
    SpeechGate,
    VoiceActivity,
)
from talkbox.audio.wake import GatedWakeDetector, WakeWordDetector
from talkbox.audio_format import LISTEN_RATE, REALTIME_RATE
from talkbox.config import Config
from talkbox.core.arbitration import (
    ANNOUNCE,
    WAKE,
    Answered,
    ArbiterInput,
    Claim,
    ClaimKind,
    Deliver,
    OwnClaim,
    Passing,
    PublishClaim,
    StartWindow,
    StoodDown,
    WakeArbiter,
    WindowEnded,
    Yielded,
)
from talkbox.core.conversation import ConversationMachine, MachineConfig
from talkbox.core.events import ClientEvent, ServerEvent
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
from talkbox.errors import AudioDeviceError, ConnectionDropped, RealtimeError
from talkbox.realtime.connection import failure_of
from talkbox.shell.volume import SpeakerVolume
from talkbox.tools.alarms import AlarmStore, AlarmTools
from talkbox.tools.builtin import toolbox
from talkbox.tools.runner import RemoteTool, ToolRunner, no_remote_tool

log = logging.getLogger("talkbox")

FRAME_MS = 20
# Audio kept from the current speech segment for the moment the wake word fires: the wake
# model decides a few hundred ms after the phrase ends, and the command may already have
# begun. The wake phrase's own tail may come along; the command's start may not be lost.
RECENT_AUDIO_MS = 800
SHUTDOWN_SECONDS = 4.0
# When a conversation ends, how long what the machine sent last may take to go out before the
# session is closed anyway.
QUEUED_SEND_SECONDS = 0.5


class Session(Protocol):
    """What the app needs of a Realtime session (the real one or the echo provider)."""

    async def send(self, event: ClientEvent) -> None: ...
    def events(self) -> AsyncIterator[ServerEvent]: ...
    async def close(self) -> None: ...
    def abort(self) -> None: ...


SessionOpener = Callable[[], Awaitable[Session]]


class Speaker(Protocol):
    """What the app needs of the playback device (see audio/playback.Playback)."""

    @property
    def played_samples(self) -> int: ...
    def write(self, pcm_source_rate: bytes) -> None: ...
    def end_of_stream(self) -> None: ...
    def play_chime(self, pcm_source_rate: bytes) -> None: ...
    def flush(self) -> None: ...
    def hold(self) -> None: ...
    def resume(self) -> None: ...
    def reset_count(self) -> None: ...


@dataclass
class _Connection:
    conversation: int
    task: asyncio.Task[None] | None = None
    # Events to send, in order; None ends the sender once everything before it went out.
    outgoing: asyncio.Queue[ClientEvent | None] = field(default_factory=asyncio.Queue)


def machine_config(cfg: Config) -> MachineConfig:
    # The echo provider has no server VAD: the device always ends the turn there.
    detection = "local" if cfg.realtime.provider == "echo" else cfg.turn.detection
    return MachineConfig(
        detection=detection,
        barge_in=cfg.conversation.barge_in,
        follow_up_seconds=cfg.conversation.follow_up_seconds,
        max_conversation_seconds=cfg.conversation.max_conversation_seconds,
        alarm_ring_seconds=cfg.tools.alarm_ring_seconds,
        silence_duration_ms=cfg.turn.silence_duration_ms,
        sample_rate=REALTIME_RATE,
        speak_announcements=cfg.realtime.provider != "echo",
    )


def build_front_end(
    cfg: Config,
    reference: SpeakerReference | None = None,
    *,
    echo: EchoCanceller | None = None,
) -> FrontEnd:
    """The listening pipeline for `cfg`; with a `reference` (what the speaker plays) and
    [audio] echo_cancellation, the speaker's echo is taken out of the microphone first (by
    `echo`, when given: see `front_end_builder`)."""
    vad = VoiceActivity(cfg.turn.vad_aggressiveness, sample_rate=LISTEN_RATE, frame_ms=FRAME_MS)
    gate = SpeechGate(
        frame_ms=FRAME_MS,
        start_frames=3,
        # The VAD itself lags the end of a voice; the gate waits only for the rest.
        silence_ms=max(3 * FRAME_MS, cfg.turn.silence_duration_ms - vad.hangover_ms),
        # The front end pairs decisions with older upload audio: that is pre-roll already.
        prefix_padding_ms=max(0, cfg.turn.prefix_padding_ms - UPLOAD_LAG_FRAMES * FRAME_MS),
        max_turn_ms=int(cfg.turn.max_turn_seconds * 1000),
        over_echo_start=OVER_ECHO_START,
        over_echo_padding_ms=OVER_ECHO_PADDING_MS,
    )
    detector = WakeWordDetector(
        list(cfg.wake.models),
        threshold=cfg.wake.threshold,
        thresholds=dict(cfg.wake.thresholds),
        refractory_seconds=cfg.wake.refractory_seconds,
    )
    if echo is None and reference is not None and cfg.audio.echo_cancellation:
        echo = EchoCanceller(reference, cfg.audio.input_rate)
    return FrontEnd(cfg.audio.input_rate, vad, gate, GatedWakeDetector(detector), echo=echo)


def front_end_settings(cfg: Config) -> tuple[object, ...]:
    """What the listening pipeline is built from. A reload that changes none of it keeps the
    running front end, and does not load the wake models again (tens of seconds on a slow
    core, and their memory twice meanwhile)."""
    return (cfg.wake, cfg.turn, cfg.audio.input_rate)


def front_end_builder(reference: SpeakerReference) -> Callable[[Config], FrontEnd]:
    """`build_front_end` for the daemon: one echo canceller per capture rate, kept across
    reloads, so that AEC3 does not have to learn the room again (a new one is louder for its
    first seconds: echo_cancel.WARM_UP_S)."""
    cancellers: dict[int, EchoCanceller] = {}

    def build(cfg: Config) -> FrontEnd:
        echo = None
        if cfg.audio.echo_cancellation:
            rate = cfg.audio.input_rate
            if rate not in cancellers:
                cancellers[rate] = EchoCanceller(reference, rate)
            echo = cancellers[rate]
        return build_front_end(cfg, echo=echo)

    return build


def make_chimes(cfg: Config) -> dict[str, bytes]:
    """The chimes at the replies' rate (the speaker converts both alike); none at all with
    [audio] chimes = false but the alarm's (a timer must ring)."""
    volume = cfg.audio.volume
    if not cfg.audio.chimes:
        return {"alarm": chime("alarm", REALTIME_RATE, volume)}
    return {kind: chime(kind, REALTIME_RATE, volume) for kind in get_args(ChimeKind)}


def tool_runner(
    cfg: Config,
    *,
    alarms: AlarmTools | None = None,
    volume: SpeakerVolume | None = None,
    remote: Callable[[str], RemoteTool | None] = no_remote_tool,
) -> ToolRunner:
    """Runs the tools [tools] switches on (the session offers the same: `toolbox`), and those
    offered from elsewhere that `remote` finds (an MCP server's)."""
    return ToolRunner(
        toolbox(cfg.tools, alarms=alarms, volume=volume).local, cfg.tools.timeout_seconds, remote
    )


class Daemon:
    """The conversation loop around one `ConversationMachine`.

    `open_session` makes a configured session (the real service, or the echo provider);
    `speaker` plays reply audio and chimes and counts what it played. Both are passed in, so
    tests can use the real devices over ALSA's file plugin or the fake service on loopback.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        open_session: Callable[[Config], SessionOpener],
        speaker: Speaker,
        front_end: FrontEnd,
        on_state: Callable[[State, str], None] | None = None,
        on_status: Callable[[], None] | None = None,
        on_speaker_error: Callable[[AudioDeviceError], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        alarm_store: AlarmStore | None = None,
        wall_clock: Callable[[], float] = time.time,
        remote_tools: Callable[[str], RemoteTool | None] = no_remote_tool,
        volume: SpeakerVolume | None = None,
    ) -> None:
        self.cfg = cfg
        # Without one (tests), a volume of its own: software gain, kept in no file.
        self.volume = volume if volume is not None else SpeakerVolume()
        self._make_opener = open_session
        self._open_session = open_session(cfg)
        self.speaker = speaker
        self.front_end = front_end
        self._on_state = on_state
        # What status readers see beyond the state changed: timers, ringing, the volume.
        self._on_status = on_status
        self._on_speaker_error = on_speaker_error
        self._clock = clock
        self.chimes = make_chimes(cfg)
        # Timers and alarms: kept by the store (a file under StateDirectory=, or memory).
        self.alarms = alarm_store if alarm_store is not None else AlarmStore(None)
        self._alarm_tools = AlarmTools(self.alarms)
        self._wall_clock = wall_clock
        self._alarm_check: asyncio.TimerHandle | None = None
        self._remote_tools = remote_tools
        self.tools = self._tool_runner(cfg)
        self._running_tools: set[asyncio.Task[None]] = set()
        self.machine = ConversationMachine(machine_config(cfg))
        self._connection: _Connection | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._recent_audio: deque[bytes] = deque(maxlen=RECENT_AUDIO_MS // FRAME_MS)
        # A reload's settings, kept here until the machine says it takes them (ConfigApplied).
        self._pending_config: Config | None = None
        self._pending_front_end: FrontEnd | None = None
        self.front_end.wake_enabled = self.machine.wake_enabled
        # [mqtt]: the house decides which speaker answers (join_house); None: this one, always.
        self.arbiter: WakeArbiter | None = None
        self._publish_claim: Callable[[Claim], None] = lambda claim: None

    def join_house(
        self, me: str, window_seconds: float, publish_claim: Callable[[Claim], None]
    ) -> None:
        """From now on wakes and announcements are claimed on the broker (`shell/house.py`)."""
        self.arbiter = WakeArbiter(me, window_seconds)
        self._publish_claim = publish_claim

    def _tool_runner(self, cfg: Config) -> ToolRunner:
        return tool_runner(
            cfg, alarms=self._alarm_tools, volume=self.volume, remote=self._remote_tools
        )

    def snapshot(self) -> Snapshot:
        """The conversation's state for status readers (control socket, systemd status)."""
        return self.machine.snapshot()

    # --- inputs -------------------------------------------------------------------------------

    def step(self, event: Input) -> None:
        """Feed one input to the machine (through the house's arbiter, if any, which holds the
        speech after a wake that waits for its window) and carry out what it asks."""
        if self.arbiter is None:
            self._step_machine(event)
        else:
            self.arbitrate(Passing(event))

    def arbitrate(self, event: ArbiterInput) -> None:
        """Feed the house's arbiter (`core/arbitration.py`) and carry out what it decides."""
        assert self.arbiter is not None
        for action in self.arbiter.step(event, self._clock()):
            match action:
                case Deliver():
                    self._step_machine(action.input)
                case PublishClaim():
                    self._publish_claim(action.claim)
                case StartWindow():
                    name = f"arbitration {action.subject}"
                    self._cancel_timer(name)
                    ended = WindowEnded(action.subject, action.token)
                    loop = asyncio.get_running_loop()
                    self._timers[name] = loop.call_later(action.seconds, self.arbitrate, ended)
                case Answered():
                    log.info(
                        "answering the %s (%s, %.1f dB, score %.2f)%s",
                        action.mine.subject,
                        action.mine.kind,
                        action.mine.level_db,
                        action.mine.score,
                        " alone" if action.alone else f" over {len(action.rivals)} other(s)",
                    )
                case StoodDown():
                    log.info(
                        "%s answers the %s (%s, %.1f dB, score %.2f), not this speaker "
                        "(%.1f dB, score %.2f)",
                        action.winner.speaker,
                        action.winner.subject,
                        action.winner.kind,
                        action.winner.level_db,
                        action.winner.score,
                        action.mine.level_db,
                        action.mine.score,
                    )
                case Yielded():
                    log.info(
                        "%s answers the %s too, and heard it better (%.1f dB, score %.2f): "
                        "this speaker stops",
                        action.winner.speaker,
                        action.winner.subject,
                        action.winner.level_db,
                        action.winner.score,
                    )
                    reason = f"{action.winner.speaker} answers"
                    self._step_machine(StopRequested(reason, stop_ringing=False, chime=False))
                case _:
                    assert_never(action)

    def _step_machine(self, event: Input) -> None:
        ringing = self.machine.ringing
        for action in self.machine.step(event, self._clock()):
            self._perform(action)
        if self.machine.ringing != ringing:
            self._status_changed()

    def _status_changed(self) -> None:
        if self._on_status is not None:
            self._on_status()

    def on_front_end_events(self, events: list[FrontEndEvent]) -> None:
        """What the front end found in captured audio (on its own thread; see
        audio/front_end_thread.py): feed it to the machine, in order."""
        for event in events:
            match event:
                case WakeDetected():
                    self._on_wake(event)
                case GateSpeechStarted():
                    echo = self.front_end.echo
                    if echo is not None and echo.last_chunk_may_echo:
                        log.debug("speech started over echo (canceller: %s; frames: %s)",
                                  echo.stats, self.front_end.opening_trace)
                    else:
                        log.debug("speech started")
                    self._recent_audio.clear()
                    self._recent_audio.append(event.preroll)
                    self.step(MicSpeechStarted(event.preroll, self.speaker.played_samples))
                case GateSpeechLikely():
                    log.debug("maybe speech over the answer (frames: %s)",
                              self.front_end.opening_trace)
                    self.step(MicSpeechLikely())
                case GateSpeechAudio():
                    self._recent_audio.append(event.pcm)
                    self.step(MicSpeechAudio(event.pcm))
                case GateSpeechEnded():
                    log.debug("speech ended (%s)", event.reason)
                    self._recent_audio.clear()
                    self.step(MicSpeechEnded(event.reason))
                case VadFrame() | WakeScores():
                    pass  # monitoring only (`talkbox listen`); the daemon runs without it
                case _:
                    assert_never(event)

    def _on_wake(self, event: WakeDetected) -> None:
        log.info("wake word %s (score %.2f)", event.model, event.score)
        self.wake(event.model, b"".join(self._recent_audio), event.score)

    def wake(self, model: str = "", recent_audio: bytes = b"", score: float | None = None) -> None:
        """The wake word was heard (with its `score`), or `talkbox ctl wake` (or Home
        Assistant's button) asked for a conversation (`score` None)."""
        wake = WakeWord(model, recent_audio, self.speaker.played_samples)
        if self.arbiter is None or self.machine.muted:
            self._step_machine(wake)
            return
        level = speech_level_db(recent_audio)
        if score is None:
            claim = Claim(self.arbiter.me, WAKE, "asked", level)
        else:
            claim = Claim(self.arbiter.me, WAKE, "heard", level, score)
        # A ringing speaker is engaged: its wake word only silences the ring, at once, and
        # its claim outranks every fresh one, so no other speaker opens a conversation.
        idle = self.machine.state is State.IDLE and not self.machine.ringing
        self.arbitrate(OwnClaim(claim, wake, idle=idle))

    def announce(self, text: str, *, house: bool) -> None:
        """Say `text`; one sent to the whole house is claimed, so one speaker says it."""
        if self.arbiter is None or not house:
            self._step_machine(Announce(text))
            return
        # A speaker in a conversation would say it only once that ends: it bids below any idle one.
        kind: ClaimKind = "asked" if self.machine.state is State.IDLE else "heard"
        self.arbitrate(OwnClaim(Claim(self.arbiter.me, ANNOUNCE, kind), Announce(text)))

    def on_playback_drained(self) -> None:
        self.step(PlaybackDrained(self.speaker.played_samples))

    def stop_conversation(self, reason: str, *, stop_ringing: bool = True) -> None:
        self.step(StopRequested(reason, stop_ringing))

    def start_alarms(self) -> None:
        """Read the kept timers and alarms (once, at start): those due ring now. With
        [tools] timers = false they are read (a timer set after a reload must not write
        over them) but not rung."""
        pending = self.alarms.load()
        if self.cfg.tools.timers:
            self.step(AlarmsChanged(pending, self._wall_clock(), at_start=True))
        self._status_changed()

    def set_muted(self, muted: bool) -> None:
        self.step(MuteChanged(muted))

    # --- actions ------------------------------------------------------------------------------

    def _perform(self, action: Action) -> None:
        try:
            self._carry_out(action)
        except AudioDeviceError as error:
            # The speaker vanished: the conversation goes on silently and the owner of the
            # devices reopens it; the daemon itself must not die of it.
            if self._on_speaker_error is not None:
                self._on_speaker_error(error)
            else:
                log.error("%s", error)

    def _carry_out(self, action: Action) -> None:
        match action:
            case Send():
                if (
                    self._connection is not None
                    and self._connection.conversation == action.conversation
                ):
                    self._connection.outgoing.put_nowait(action.event)
            case RunTool():
                self._spawn_task(self._run_tool(action))
            case PlayAudio():
                self.speaker.write(scaled(action.pcm, self.volume.gain))
            case FlushPlayback():
                self.speaker.flush()
                self.speaker.reset_count()
            case HoldPlayback():
                self.speaker.hold()
            case ResumePlayback():
                log.debug("no turn opened: the answer plays on")
                self.speaker.resume()
            case EndOfReply():
                self.speaker.end_of_stream()
            case PlayChime():
                self._play_chime(action.kind)
            case StartTimer():
                self._cancel_timer(action.name)
                loop = asyncio.get_running_loop()
                fired = TimerFired(action.name, action.token)
                self._timers[action.name] = loop.call_later(action.seconds, self.step, fired)
            case CancelTimer():
                self._cancel_timer(action.name)
            case OpenConnection():
                self._open(action.conversation)
            case CloseConnection():
                self._close(action.conversation)
            case StateChanged():
                self._state_changed(action.state, action.reason)
            case Transcript():
                if self.cfg.log.transcripts:
                    log.info("%s said: %s", action.role, action.text)
            case TurnFinished():
                self._log_turn(action)
            case ConversationEnded():
                self._conversation_ended(action)
            case WakeRefused():
                log.warning(
                    "not connecting for another %.0f s after %d failed attempt%s: %s",
                    action.wait_seconds,
                    action.failures,
                    "" if action.failures == 1 else "s",
                    action.last_error,
                )
            case SetWakeEnabled():
                self.front_end.wake_enabled = action.enabled
            case ConfigApplied():
                self._apply_pending_config()
            case Notice():
                log.log(logging.WARNING if action.level == "warning" else logging.INFO, action.text)
            case ArmAlarmCheck():
                self._arm_alarm_check(action.seconds)
            case RemoveAlarms():
                self._spawn_task(self._remove_alarms(action.ids))
            case _:
                assert_never(action)

    def _spawn_task(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._running_tools.add(task)
        task.add_done_callback(self._running_tools.discard)

    async def _run_tool(self, call: RunTool) -> None:
        started = self._clock()
        alarms_before, volume_before = self.alarms.pending(), self.volume.level
        output = await self.tools.run(call.name, call.arguments)
        log.info("tool %s answered in %.0f ms", call.name, (self._clock() - started) * 1000)
        alarms_changed = self.alarms.pending() is not alarms_before  # set or cancelled one
        if alarms_changed:
            self.step(AlarmsChanged(self.alarms.pending(), self._wall_clock()))
        if alarms_changed or self.volume.level != volume_before:
            self._status_changed()
        self.step(ToolFinished(call.conversation, call.call_id, output))

    async def _remove_alarms(self, ids: tuple[str, ...]) -> None:
        await asyncio.to_thread(self.alarms.remove, ids)  # a file written and fsync'ed
        self.step(AlarmsChanged(self.alarms.pending(), self._wall_clock()))
        self._status_changed()

    def _arm_alarm_check(self, seconds: float | None) -> None:
        """The one loop timer for timers and alarms: none while none is pending."""
        if self._alarm_check is not None:
            self._alarm_check.cancel()
            self._alarm_check = None
        if seconds is not None:
            self._alarm_check = asyncio.get_running_loop().call_later(
                seconds, lambda: self.step(AlarmClockTick(self._wall_clock())))

    def _play_chime(self, kind: str) -> None:
        pcm = self.chimes.get(kind)
        if pcm:
            self.speaker.play_chime(scaled(pcm, self.volume.gain))

    def _cancel_timer(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _state_changed(self, state: State, reason: str) -> None:
        log.info(
            "state %s (%s)",
            state.value,
            reason,
            extra={"TALKBOX_STATE": state.value, "CONVERSATION_ID": str(self.machine.conversation)},
        )
        if self._on_state is not None:
            self._on_state(state, reason)

    def _log_turn(self, turn: TurnFinished) -> None:
        usage = turn.usage
        fields: dict[str, Any] = {"CONVERSATION_ID": str(turn.conversation)}
        latency = turn.end_of_speech_to_first_audio_ms
        if latency is not None:
            fields["FIRST_AUDIO_MS"] = f"{latency:.0f}"
        if usage is not None:
            fields.update(
                INPUT_TOKENS=str(usage.input_tokens),
                OUTPUT_TOKENS=str(usage.output_tokens),
                INPUT_AUDIO_TOKENS=str(usage.input_audio_tokens),
                OUTPUT_AUDIO_TOKENS=str(usage.output_audio_tokens),
                CACHED_TOKENS=str(usage.cached_tokens),
            )
        log.info(
            "answer %s: first audio %s after end of speech, tokens %s in / %s out",
            turn.status,
            "?" if latency is None else f"{latency:.0f} ms",
            "?" if usage is None else usage.input_tokens,
            "?" if usage is None else usage.output_tokens,
            extra=fields,
        )

    def _conversation_ended(self, ended: ConversationEnded) -> None:
        if ended.failure is not None:
            delay = ended.retry_in
            log.error(
                "conversation failed: %s%s",
                ended.failure.message,
                "" if delay is None else f" (next attempt allowed in {delay:.1f} s)",
            )

    # --- the connection -----------------------------------------------------------------------

    def _open(self, conversation: int) -> None:
        connection = _Connection(conversation)
        self._connection = connection
        connection.task = asyncio.create_task(self._run_connection(connection))

    def _close(self, conversation: int) -> None:
        connection = self._connection
        if connection is None or connection.conversation != conversation:
            return
        self._connection = None
        if connection.task is not None:
            connection.task.cancel()
            self._closing.add(connection.task)
            connection.task.add_done_callback(self._closing.discard)

    async def _run_connection(self, connection: _Connection) -> None:
        conversation = connection.conversation
        try:
            session = await self._open_session()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # every failure becomes an input; the daemon never dies of it
            self._fail(conversation, error)
            return
        sender = asyncio.create_task(self._send_loop(session, connection))
        try:
            self.step(SessionReady(conversation))
            async for event in session.events():
                played = self.speaker.played_samples
                self.step(ServerEventReceived(conversation, event, played))
            self._fail(conversation, ConnectionDropped("the service ended the session"))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._fail(conversation, error)
        finally:
            # What the machine sent before it ended the conversation still goes out before the
            # socket closes (a stop phrase's response.cancel and truncate, even while the
            # sender is busy), within a bound; on a dead connection the first send ends it.
            connection.outgoing.put_nowait(None)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait({sender}, timeout=QUEUED_SEND_SECONDS)
            sender.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(session.close())

    async def _send_loop(self, session: Session, connection: _Connection) -> None:
        while (event := await connection.outgoing.get()) is not None:
            try:
                await session.send(event)
            except Exception as error:
                self._fail(connection.conversation, error)
                return

    def _fail(self, conversation: int, error: BaseException) -> None:
        if not isinstance(error, RealtimeError):
            log.debug("unexpected failure in the connection", exc_info=error)
        self.step(ConnectionFailed(conversation, failure_of(error)))

    # --- reload -------------------------------------------------------------------------------

    def reload(self, cfg: Config, front_end: FrontEnd | None = None) -> None:
        """Take a new, valid config: it applies from the next conversation. `front_end`, if
        given, was built for `cfg` (off the loop) and replaces the current one if needed."""
        self._pending_config = cfg
        if front_end is not None:  # else an earlier reload's may still be the one needed
            self._pending_front_end = front_end
        self.step(ConfigChanged(machine_config(cfg)))

    def _apply_pending_config(self) -> None:
        cfg, self._pending_config = self._pending_config, None
        front_end, self._pending_front_end = self._pending_front_end, None
        if cfg is None:
            return
        old = self.cfg
        self.cfg = cfg
        self._open_session = self._make_opener(cfg)
        self.chimes = make_chimes(cfg)
        self.tools = self._tool_runner(cfg)
        if front_end_settings(old) != front_end_settings(cfg):
            self.front_end = front_end or build_front_end(cfg)
        if (old.audio.input_device, old.audio.output_device, old.audio.output_rate) != (
            cfg.audio.input_device,
            cfg.audio.output_device,
            cfg.audio.output_rate,
        ):
            log.warning("audio device and rate changes take effect after a restart")
        if (old.audio.mixer_device, old.audio.mixer_control) != (
            cfg.audio.mixer_device,
            cfg.audio.mixer_control,
        ):
            log.warning("[audio] mixer_control and mixer_device take effect after a restart")
        log.info("new configuration in force")

    # --- shutdown -----------------------------------------------------------------------------

    async def shutdown(self) -> None:
        self.stop_conversation("shutting down")
        for task in list(self._running_tools):
            task.cancel()  # their results would go to no conversation
        for name in list(self._timers):
            self._cancel_timer(name)
        self._arm_alarm_check(None)
        pending = list(self._closing)
        if self._connection is not None and self._connection.task is not None:
            pending.append(self._connection.task)
            self._connection.task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_SECONDS / 2)
