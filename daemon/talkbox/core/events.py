"""Dialect-neutral Realtime events: what talkbox sends and what it understands.

This vocabulary belongs to the core. The protocol layer (`realtime/protocol.py`) turns
`ClientEvent`s into JSON in the selected dialect (GA or Azure preview) and decodes JSON of
either dialect into `ServerEvent`s, so the core never sees a dialect, a base64 string or a dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# --- session settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnDetection:
    """How the end of a user turn is found. kind "local": the device commits (server VAD off)."""

    kind: Literal["local", "server_vad", "semantic_vad"] = "local"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    # None leaves the flag out: the 2024-10-01 preview protocol has neither (and rejects them).
    create_response: bool | None = True
    # A speaker hears itself: by default only the wake word interrupts, not any sound.
    interrupt_response: bool | None = False


@dataclass(frozen=True)
class ToolDeclaration:
    """A function the model may call: its name, what it is for, and its arguments' JSON schema
    (an object schema)."""

    name: str
    description: str
    parameters: Mapping[str, Any]


# The parameters of a tool that takes none.
NO_ARGUMENTS: Mapping[str, Any] = {
    "type": "object", "properties": {}, "additionalProperties": False
}


@dataclass(frozen=True)
class SessionSettings:
    voice: str = "alloy"
    instructions: str = ""
    temperature: float | None = None  # preview only; GA has no temperature
    transcription_model: str = ""  # "" = no input transcription
    noise_reduction: Literal["near_field", "far_field"] | None = None  # GA only
    turn_detection: TurnDetection = field(default_factory=TurnDetection)
    tools: tuple[ToolDeclaration, ...] = ()


# --- client events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionUpdate:
    settings: SessionSettings


@dataclass(frozen=True)
class AppendAudio:
    pcm: bytes  # 24 kHz mono PCM16 little-endian


@dataclass(frozen=True)
class CommitAudio:
    pass


@dataclass(frozen=True)
class ClearAudio:
    pass


@dataclass(frozen=True)
class CreateUserText:
    text: str


@dataclass(frozen=True)
class SendFunctionOutput:
    """The result of a function call, for the model (a JSON text, or an error it can speak of)."""

    call_id: str
    output: str


@dataclass(frozen=True)
class CreateResponse:
    # Instructions for this response only (an announcement); None: the session's own.
    instructions: str | None = None


@dataclass(frozen=True)
class CancelResponse:
    response_id: str | None = None


@dataclass(frozen=True)
class TruncateItem:
    item_id: str
    content_index: int
    audio_end_ms: int


ClientEvent = (
    SessionUpdate
    | AppendAudio
    | CommitAudio
    | ClearAudio
    | CreateUserText
    | SendFunctionOutput
    | CreateResponse
    | CancelResponse
    | TruncateItem
)


# --- server events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionCreated:
    session: dict[str, Any]


@dataclass(frozen=True)
class SessionUpdated:
    session: dict[str, Any]


@dataclass(frozen=True)
class ServerError:
    code: str  # "" when the service gave none
    message: str
    error_type: str = ""
    param: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class ServerSpeechStarted:
    """Server VAD heard speech start (only with server_vad / semantic_vad)."""

    audio_start_ms: int
    item_id: str


@dataclass(frozen=True)
class ServerSpeechStopped:
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True)
class AudioCommitted:
    item_id: str


@dataclass(frozen=True)
class AudioCleared:
    pass


@dataclass(frozen=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True)
class OutputItemAdded:
    response_id: str
    item_id: str
    item_type: str  # "message" | "function_call" | ...


@dataclass(frozen=True)
class FunctionCall:
    """The model asks the device to call a function (a finished `function_call` item)."""

    response_id: str
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it: not necessarily valid


@dataclass(frozen=True)
class AudioDelta:
    response_id: str
    item_id: str
    content_index: int
    pcm: bytes  # decoded from base64; 24 kHz PCM16


@dataclass(frozen=True)
class AudioDone:
    response_id: str
    item_id: str
    content_index: int


@dataclass(frozen=True)
class TranscriptDelta:
    """Part of the transcript of the assistant's spoken (or text) answer."""

    response_id: str
    item_id: str
    delta: str


@dataclass(frozen=True)
class TranscriptDone:
    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True)
class InputTranscript:
    """Transcript of what the user said (input transcription, when enabled)."""

    item_id: str
    transcript: str


@dataclass(frozen=True)
class Usage:
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    status: str  # completed | cancelled | incomplete | failed
    reason: str = ""  # status_details.reason, e.g. turn_detected, client_cancelled
    error_code: str = ""  # status_details.error.code for failed responses
    usage: Usage | None = None


@dataclass(frozen=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class RateLimits:
    limits: tuple[tuple[str, int, int, float], ...]  # (name, limit, remaining, reset_seconds)


@dataclass(frozen=True)
class Ignored:
    """A known event type that a voice device does not act on (kept for debug logging)."""

    type: str


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | ServerError
    | ServerSpeechStarted
    | ServerSpeechStopped
    | AudioCommitted
    | AudioCleared
    | ResponseCreated
    | OutputItemAdded
    | FunctionCall
    | AudioDelta
    | AudioDone
    | TranscriptDelta
    | TranscriptDone
    | InputTranscript
    | ResponseDone
    | ItemTruncated
    | RateLimits
    | Ignored
)
