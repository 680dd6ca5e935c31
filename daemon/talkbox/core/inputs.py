"""What the conversation state machine is told (inputs) and what it asks for (actions).

Adapters (front end, connection, playback, timers, control socket) turn what happens into
inputs; the app carries out the actions. Both are plain frozen dataclasses, so a test can
drive the machine with a list of inputs and compare the actions it gets back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

from talkbox.core.alarms import Alarm
from talkbox.core.events import ClientEvent, ServerEvent, Usage
from talkbox.core.failures import Failure

if TYPE_CHECKING:
    from talkbox.core.conversation import MachineConfig

ChimeKind = Literal["wake", "done", "error", "working", "alarm"]


class State(Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    LISTENING = "listening"
    RESPONDING = "responding"


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WakeWord:
    """The wake word was heard (or `talkbox ctl wake`).

    recent_audio: the last moments of 24 kHz mic audio before detection (the end of the wake
    phrase and whatever followed it), so a command said in one breath is not cut.
    played_samples: reply samples the speaker has played since the last flush (for barge-in).
    """

    model: str = ""
    recent_audio: bytes = b""
    played_samples: int = 0


@dataclass(frozen=True)
class MicSpeechStarted:
    preroll: bytes  # 24 kHz PCM16: padding before speech plus the first voiced frames
    played_samples: int = 0


@dataclass(frozen=True)
class MicSpeechLikely:
    """Over the speaker's echo, the microphone heard what may be a person starting to talk
    (the speech gate's stricter rule has not opened a turn yet)."""


@dataclass(frozen=True)
class MicSpeechAudio:
    pcm: bytes


@dataclass(frozen=True)
class MicSpeechEnded:
    reason: str = "silence"


@dataclass(frozen=True)
class SessionReady:
    conversation: int


@dataclass(frozen=True)
class ConnectionFailed:
    conversation: int
    failure: Failure


@dataclass(frozen=True)
class ServerEventReceived:
    conversation: int
    event: ServerEvent
    played_samples: int = 0  # as in WakeWord: for barge-in on the server's speech_started


@dataclass(frozen=True)
class PlaybackDrained:
    played_samples: int  # reply samples played since the last flush, as counted by the device


@dataclass(frozen=True)
class TimerFired:
    name: str
    token: int


@dataclass(frozen=True)
class StopRequested:
    """`talkbox ctl stop`, mute, shutdown or reload: end any conversation now, politely;
    and a ringing timer or alarm, unless `stop_ringing` is false (a failed microphone).
    `chime` False: without the done chime (another speaker of the house took over)."""

    reason: str = "stop"
    stop_ringing: bool = True
    chime: bool = True


@dataclass(frozen=True)
class MuteChanged:
    muted: bool


@dataclass(frozen=True)
class ConfigChanged:
    """A new, valid configuration: it applies now when idle, else once the conversation ends."""

    config: MachineConfig


@dataclass(frozen=True)
class ToolFinished:
    """A function call the device ran is over: `output` is its result, or the error the model
    is told about (a failure, a time-out, an unknown tool or bad arguments)."""

    conversation: int
    call_id: str
    output: str


@dataclass(frozen=True)
class AlarmsChanged:
    """The timers and alarms pending, as kept (loaded at start, or after a change), and the
    wall-clock time (epoch seconds) when they were read. At start, one already due was
    missed while talkbox was off."""

    alarms: tuple[Alarm, ...]
    wall_now: float
    at_start: bool = False


@dataclass(frozen=True)
class AlarmClockTick:
    """The shell's one alarm timer fired (see ArmAlarmCheck): the wall-clock time now."""

    wall_now: float


@dataclass(frozen=True)
class Announce:
    """Say this text (Home Assistant's announce entity, or the house's announce topic)."""

    text: str


Input = (
    WakeWord
    | MicSpeechStarted
    | MicSpeechLikely
    | MicSpeechAudio
    | MicSpeechEnded
    | SessionReady
    | ConnectionFailed
    | ServerEventReceived
    | PlaybackDrained
    | TimerFired
    | StopRequested
    | MuteChanged
    | ConfigChanged
    | ToolFinished
    | AlarmsChanged
    | AlarmClockTick
    | Announce
)


# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenConnection:
    conversation: int


@dataclass(frozen=True)
class CloseConnection:
    conversation: int


@dataclass(frozen=True)
class Send:
    conversation: int
    event: ClientEvent


@dataclass(frozen=True)
class RunTool:
    """Call the function the model asked for; the result comes back as `ToolFinished`."""

    conversation: int
    call_id: str
    name: str
    arguments: str  # JSON text as the model wrote it


@dataclass(frozen=True)
class PlayAudio:
    pcm: bytes


@dataclass(frozen=True)
class FlushPlayback:
    """Silence the speaker now and restart its played-sample count at zero."""


@dataclass(frozen=True)
class HoldPlayback:
    """Pause the answer where it is (the speaker plays silence; nothing queued is lost)."""


@dataclass(frozen=True)
class ResumePlayback:
    """Go on playing the answer from where HoldPlayback paused it."""


@dataclass(frozen=True)
class EndOfReply:
    """The response is complete: play out what is queued, then report PlaybackDrained."""


@dataclass(frozen=True)
class PlayChime:
    kind: ChimeKind


@dataclass(frozen=True)
class StartTimer:
    name: str
    seconds: float
    token: int


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class StateChanged:
    state: State
    reason: str


@dataclass(frozen=True)
class Transcript:
    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class ConversationEnded:
    conversation: int
    failure: Failure | None = None  # None when it ended well
    # After a failure: seconds before a wake word may connect again; None: not automatically.
    retry_in: float | None = None


@dataclass(frozen=True)
class WakeRefused:
    """A wake word came while connecting again would come too early after failures."""

    wait_seconds: float
    failures: int
    last_error: str


@dataclass(frozen=True)
class SetWakeEnabled:
    """Run the wake-word detector, or rest it (muted, or no barge-in by wake word now)."""

    enabled: bool


@dataclass(frozen=True)
class Notice:
    """A line for the owner's log about something the machine let pass (the core logs
    nothing itself)."""

    level: Literal["info", "warning"]
    text: str


@dataclass(frozen=True)
class ConfigApplied:
    """The machine took the configuration of the last `ConfigChanged`: the shell follows."""


@dataclass(frozen=True)
class TurnFinished:
    """One answered turn, for the log: timings in ms and the token usage billed."""

    conversation: int
    end_of_speech_to_first_audio_ms: float | None
    usage: Usage | None
    status: str


@dataclass(frozen=True)
class ArmAlarmCheck:
    """Post AlarmClockTick after `seconds` (replacing the one armed before); None: none is
    pending, disarm it."""

    seconds: float | None


@dataclass(frozen=True)
class RemoveAlarms:
    """These came due (rung or reported): take them out of the kept file."""

    ids: tuple[str, ...]


Action = (
    OpenConnection
    | CloseConnection
    | Send
    | RunTool
    | PlayAudio
    | FlushPlayback
    | HoldPlayback
    | ResumePlayback
    | EndOfReply
    | PlayChime
    | StartTimer
    | CancelTimer
    | StateChanged
    | Transcript
    | ConversationEnded
    | TurnFinished
    | WakeRefused
    | SetWakeEnabled
    | ConfigApplied
    | Notice
    | ArmAlarmCheck
    | RemoveAlarms
)


@dataclass(frozen=True)
class Snapshot:
    """What status readers (control socket, systemd status) see of the conversation."""

    state: State
    muted: bool
    conversations: int  # ended since start
    last_error: str  # "" when none yet
    ringing: bool = False  # a timer or alarm is ringing
