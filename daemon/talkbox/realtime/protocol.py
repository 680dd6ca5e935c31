"""Sans-I/O Realtime protocol: client events to JSON text frames, JSON text frames to server events.

This module owns the wire format of both dialects (GA and Azure preview / OpenAI beta) and
nothing else: no sockets, no clocks, no conversation state. The WebSocket adapter
(`connection.py`) is a thin pump around it.

Calling contract:

- `encode(event, dialect)` returns the text of ONE WebSocket text frame. It is pure and raises
  only on programming errors (an object that is not a `ClientEvent`).
- `ServerEventDecoder.decode(frame)` takes the payload of ONE received frame (text, or bytes
  holding UTF-8) and returns a `ServerEvent`, or None when the frame is not something to act on.
  It NEVER raises on server input, whatever the server sends: the service evolves faster than
  this code, and one odd frame must not end a conversation. Frames it cannot use are counted
  (`unknown_events`, `malformed_events`) and logged without their payload (which may be audio).
- Text meant to be shown (error codes and messages, finished transcripts, response status
  details) leaves the decoder through `safe_text.safe_line`: one printable line, bounded, the
  key masked. Ids stay as sent (they are compared, not shown), and so do transcript deltas,
  which only make sense joined: whoever joins them cleans the result.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Final, assert_never

from talkbox.audio_format import REALTIME_RATE
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
    CreateUserText,
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
    ServerEvent,
    ServerSpeechStarted,
    ServerSpeechStopped,
    SessionCreated,
    SessionSettings,
    SessionUpdate,
    SessionUpdated,
    TranscriptDelta,
    TranscriptDone,
    TruncateItem,
    TurnDetection,
    Usage,
)
from talkbox.safe_text import MAX_PROSE_CHARS, safe_line

_log = logging.getLogger(__name__)


class Dialect(Enum):
    """The two wire shapes of the Realtime API; only this layer and the endpoint know them."""

    GA = "ga"  # OpenAI GA, Azure /openai/v1/realtime
    PREVIEW = "preview"  # Azure /openai/realtime?api-version=...-preview (OpenAI beta shape)


# The only audio format talkbox speaks: 24 kHz mono PCM16 little-endian, both directions.

_GA_PCM_FORMAT: Final = {"type": "audio/pcm", "rate": REALTIME_RATE}
_PREVIEW_PCM_FORMAT: Final = "pcm16"


# --- encoding -----------------------------------------------------------------------------------


def encode(event: ClientEvent, dialect: Dialect, event_id: str | None = None) -> str:
    """Return the JSON text frame for `event` in `dialect`.

    `event_id` is optional; the service echoes it in `error.event_id` when it can tie an error
    to the event, so callers that want to correlate errors pass one.
    """
    message = client_event_message(event, dialect)
    if event_id is not None:
        message["event_id"] = event_id
    # Compact separators: audio appends are the bulk of the upload, every byte is sent.
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def client_event_message(event: ClientEvent, dialect: Dialect) -> dict[str, Any]:
    """Return the JSON object (as a dict) for `event` in `dialect`; `encode` serialises it."""
    match event:
        case SessionUpdate(settings=settings):
            session = _ga_session(settings) if dialect is Dialect.GA else _preview_session(settings)
            return {"type": "session.update", "session": session}
        case AppendAudio(pcm=pcm):
            return {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(pcm).decode("ascii"),
            }
        case CommitAudio():
            return {"type": "input_audio_buffer.commit"}
        case ClearAudio():
            return {"type": "input_audio_buffer.clear"}
        case CreateUserText(text=text):
            return {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        case SendFunctionOutput(call_id=call_id, output=output):
            return {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": output},
            }
        case CreateResponse(instructions=None):
            return {"type": "response.create"}
        case CreateResponse(instructions=instructions):
            # The same in both dialects; in the conversation (not conversation "none"), so a
            # person who answers an announcement is understood.
            return {"type": "response.create", "response": {"instructions": instructions}}
        case CancelResponse(response_id=response_id):
            cancel: dict[str, Any] = {"type": "response.cancel"}
            # Without an id the service cancels whatever response is in progress.
            if response_id is not None:
                cancel["response_id"] = response_id
            return cancel
        case TruncateItem(item_id=item_id, content_index=content_index, audio_end_ms=end_ms):
            return {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": content_index,
                "audio_end_ms": end_ms,
            }
        case _:
            assert_never(event)


def _turn_detection(turn: TurnDetection) -> dict[str, Any] | None:
    """The turn_detection object shared by both dialects; None (JSON null) = the device decides."""
    if turn.kind == "local":
        return None
    if turn.kind == "server_vad":
        detection: dict[str, Any] = {
            "type": "server_vad",
            "threshold": turn.threshold,
            "prefix_padding_ms": turn.prefix_padding_ms,
            "silence_duration_ms": turn.silence_duration_ms,
        }
    elif turn.kind == "semantic_vad":
        detection = {"type": "semantic_vad", "eagerness": turn.eagerness}
    else:
        assert_never(turn.kind)
    for flag in ("create_response", "interrupt_response"):
        value = getattr(turn, flag)
        if value is not None:
            detection[flag] = value
    return detection


def _ga_session(settings: SessionSettings) -> dict[str, Any]:
    # GA rejects the whole update on any beta-only key, so nothing flat and no temperature here.
    transcription = (
        {"model": settings.transcription_model} if settings.transcription_model else None
    )
    noise_reduction = {"type": settings.noise_reduction} if settings.noise_reduction else None
    return {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": settings.instructions,
        "audio": {
            "input": {
                "format": dict(_GA_PCM_FORMAT),
                "transcription": transcription,
                "noise_reduction": noise_reduction,
                "turn_detection": _turn_detection(settings.turn_detection),
            },
            "output": {"format": dict(_GA_PCM_FORMAT), "voice": settings.voice},
        },
        **_tools(settings),
    }


def _preview_session(settings: SessionSettings) -> dict[str, Any]:
    # Noise reduction is left out on purpose: 2024-10-01-preview predates it and would reject it.
    transcription = (
        {"model": settings.transcription_model} if settings.transcription_model else None
    )
    session: dict[str, Any] = {
        "modalities": ["audio", "text"],  # the beta shape has no audio-only modality
        "instructions": settings.instructions,
        "voice": settings.voice,
        "input_audio_format": _PREVIEW_PCM_FORMAT,
        "output_audio_format": _PREVIEW_PCM_FORMAT,
        "input_audio_transcription": transcription,
        "turn_detection": _turn_detection(settings.turn_detection),
    }
    if settings.temperature is not None:
        session["temperature"] = settings.temperature
    session.update(_tools(settings))
    return session


def _tools(settings: SessionSettings) -> dict[str, Any]:
    """The function tools, in the shape both dialects share; nothing at all without tools, so
    a session without them is sent as before."""
    if not settings.tools:
        return {}
    return {
        "tools": [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters),
            }
            for tool in settings.tools
        ],
        "tool_choice": "auto",
    }


# --- decoding -----------------------------------------------------------------------------------


class _MalformedEvent(Exception):
    """A frame of a known type whose fields do not have the documented shape (internal)."""


class _Fields:
    """Typed, checked access to one JSON object of a server event.

    Every getter raises `_MalformedEvent` naming the field (never its value) when the field is
    missing or has the wrong JSON type, so handlers read like a list of required fields.
    """

    __slots__ = ("_obj", "_path")

    def __init__(self, obj: Mapping[str, Any], path: str = "") -> None:
        self._obj = obj
        self._path = path

    def _name(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str, optional: bool) -> Any:
        value = self._obj.get(key)
        if value is None and not optional:
            raise _MalformedEvent(f"field {self._name(key)!r} is missing")
        return value

    def req_str(self, key: str) -> str:
        value = self._get(key, optional=False)
        if not isinstance(value, str):
            raise _MalformedEvent(f"field {self._name(key)!r} is not a string")
        return value

    def opt_str(self, key: str, default: str = "") -> str:
        value = self._get(key, optional=True)
        if value is None:
            return default
        if not isinstance(value, str):
            raise _MalformedEvent(f"field {self._name(key)!r} is not a string")
        return value

    def nullable_str(self, key: str) -> str | None:
        value = self._get(key, optional=True)
        if value is not None and not isinstance(value, str):
            raise _MalformedEvent(f"field {self._name(key)!r} is not a string")
        return value

    def req_int(self, key: str) -> int:
        value = self._get(key, optional=False)
        return self._check_int(key, value)

    def opt_int(self, key: str) -> int:
        value = self._get(key, optional=True)
        return 0 if value is None else self._check_int(key, value)

    def _check_int(self, key: str, value: Any) -> int:
        # bool is an int subclass in Python but not a number in JSON.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _MalformedEvent(f"field {self._name(key)!r} is not an integer")
        return value

    def opt_number(self, key: str) -> float:
        value = self._get(key, optional=True)
        if value is None:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _MalformedEvent(f"field {self._name(key)!r} is not a number")
        return float(value)

    def obj(self, key: str) -> _Fields:
        value = self._get(key, optional=False)
        if not isinstance(value, dict):
            raise _MalformedEvent(f"field {self._name(key)!r} is not an object")
        return _Fields(value, self._name(key))

    def opt_obj(self, key: str) -> _Fields | None:
        value = self._get(key, optional=True)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _MalformedEvent(f"field {self._name(key)!r} is not an object")
        return _Fields(value, self._name(key))

    def raw_obj(self, key: str) -> dict[str, Any]:
        value = self._get(key, optional=False)
        if not isinstance(value, dict):
            raise _MalformedEvent(f"field {self._name(key)!r} is not an object")
        return value

    def obj_list(self, key: str) -> list[_Fields]:
        value = self._get(key, optional=False)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise _MalformedEvent(f"field {self._name(key)!r} is not a list of objects")
        return [_Fields(v, f"{self._name(key)}[{i}]") for i, v in enumerate(value)]

    def base64_bytes(self, key: str) -> bytes:
        text = self.req_str(key)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _MalformedEvent(f"field {self._name(key)!r} is not valid base64") from None


def _session_created(f: _Fields) -> ServerEvent:
    return SessionCreated(session=f.raw_obj("session"))


def _session_updated(f: _Fields) -> ServerEvent:
    return SessionUpdated(session=f.raw_obj("session"))


def _error(f: _Fields) -> ServerEvent:
    error = f.obj("error")
    param = error.nullable_str("param")
    return ServerError(
        code=safe_line(error.opt_str("code")),
        message=safe_line(error.opt_str("message")),
        error_type=safe_line(error.opt_str("type")),
        param=None if param is None else safe_line(param),
        event_id=error.nullable_str("event_id"),
    )


def _speech_started(f: _Fields) -> ServerEvent:
    return ServerSpeechStarted(
        audio_start_ms=f.req_int("audio_start_ms"), item_id=f.req_str("item_id")
    )


def _speech_stopped(f: _Fields) -> ServerEvent:
    return ServerSpeechStopped(audio_end_ms=f.req_int("audio_end_ms"), item_id=f.req_str("item_id"))


def _committed(f: _Fields) -> ServerEvent:
    return AudioCommitted(item_id=f.req_str("item_id"))


def _cleared(f: _Fields) -> ServerEvent:
    return AudioCleared()


def _response_created(f: _Fields) -> ServerEvent:
    return ResponseCreated(response_id=f.obj("response").req_str("id"))


def _output_item_added(f: _Fields) -> ServerEvent:
    item = f.obj("item")
    return OutputItemAdded(
        response_id=f.req_str("response_id"),
        item_id=item.req_str("id"),
        item_type=item.req_str("type"),
    )


def _output_item_done(f: _Fields) -> ServerEvent:
    item = f.obj("item")
    if item.req_str("type") != "function_call":
        return Ignored("response.output_item.done")
    return FunctionCall(
        response_id=f.req_str("response_id"),
        call_id=item.req_str("call_id"),
        name=safe_line(item.req_str("name")),
        arguments=item.req_str("arguments"),
    )


def _audio_delta(f: _Fields) -> ServerEvent:
    return AudioDelta(
        response_id=f.req_str("response_id"),
        item_id=f.req_str("item_id"),
        content_index=f.req_int("content_index"),
        pcm=f.base64_bytes("delta"),
    )


def _audio_done(f: _Fields) -> ServerEvent:
    return AudioDone(
        response_id=f.req_str("response_id"),
        item_id=f.req_str("item_id"),
        content_index=f.req_int("content_index"),
    )


def _transcript_delta(f: _Fields) -> ServerEvent:
    return TranscriptDelta(
        response_id=f.req_str("response_id"), item_id=f.req_str("item_id"), delta=f.opt_str("delta")
    )


def _audio_transcript_done(f: _Fields) -> ServerEvent:
    return TranscriptDone(
        response_id=f.req_str("response_id"),
        item_id=f.req_str("item_id"),
        transcript=safe_line(f.opt_str("transcript"), MAX_PROSE_CHARS),
    )


def _text_done(f: _Fields) -> ServerEvent:
    # Text answers (output modality "text") carry `text` where audio answers carry `transcript`.
    return TranscriptDone(
        response_id=f.req_str("response_id"),
        item_id=f.req_str("item_id"),
        transcript=safe_line(f.opt_str("text"), MAX_PROSE_CHARS),
    )


def _input_transcript(f: _Fields) -> ServerEvent:
    return InputTranscript(
        item_id=f.req_str("item_id"),
        transcript=safe_line(f.opt_str("transcript"), MAX_PROSE_CHARS),
    )


def _usage(usage: _Fields) -> Usage:
    input_details = usage.opt_obj("input_token_details")
    output_details = usage.opt_obj("output_token_details")
    return Usage(
        total_tokens=usage.opt_int("total_tokens"),
        input_tokens=usage.opt_int("input_tokens"),
        output_tokens=usage.opt_int("output_tokens"),
        input_audio_tokens=input_details.opt_int("audio_tokens") if input_details else 0,
        output_audio_tokens=output_details.opt_int("audio_tokens") if output_details else 0,
        cached_tokens=input_details.opt_int("cached_tokens") if input_details else 0,
    )


def _response_done(f: _Fields) -> ServerEvent:
    response = f.obj("response")
    details = response.opt_obj("status_details")
    reason = error_code = ""
    if details is not None:
        reason = safe_line(details.opt_str("reason"))
        error = details.opt_obj("error")
        if error is not None:
            error_code = safe_line(error.opt_str("code"))
    usage = response.opt_obj("usage")
    return ResponseDone(
        response_id=response.req_str("id"),
        status=safe_line(response.req_str("status")),
        reason=reason,
        error_code=error_code,
        usage=_usage(usage) if usage is not None else None,
    )


def _item_truncated(f: _Fields) -> ServerEvent:
    return ItemTruncated(item_id=f.req_str("item_id"), audio_end_ms=f.req_int("audio_end_ms"))


def _rate_limits(f: _Fields) -> ServerEvent:
    return RateLimits(
        limits=tuple(
            (
                limit.opt_str("name"),
                limit.opt_int("limit"),
                limit.opt_int("remaining"),
                limit.opt_number("reset_seconds"),
            )
            for limit in f.obj_list("rate_limits")
        )
    )


_Handler = Callable[[_Fields], ServerEvent]

# Both dialects' names map to the same handler: the core never learns which one spoke.
_HANDLERS: Final[Mapping[str, _Handler]] = {
    "session.created": _session_created,
    "session.updated": _session_updated,
    "error": _error,
    "input_audio_buffer.speech_started": _speech_started,
    "input_audio_buffer.speech_stopped": _speech_stopped,
    "input_audio_buffer.committed": _committed,
    "input_audio_buffer.cleared": _cleared,
    "response.created": _response_created,
    "response.output_item.added": _output_item_added,
    "response.output_item.done": _output_item_done,
    "response.audio.delta": _audio_delta,  # preview
    "response.output_audio.delta": _audio_delta,  # GA
    "response.audio.done": _audio_done,
    "response.output_audio.done": _audio_done,
    "response.audio_transcript.delta": _transcript_delta,
    "response.output_audio_transcript.delta": _transcript_delta,
    "response.audio_transcript.done": _audio_transcript_done,
    "response.output_audio_transcript.done": _audio_transcript_done,
    "response.text.delta": _transcript_delta,
    "response.output_text.delta": _transcript_delta,
    "response.text.done": _text_done,
    "response.output_text.done": _text_done,
    "conversation.item.input_audio_transcription.completed": _input_transcript,
    "response.done": _response_done,
    "conversation.item.truncated": _item_truncated,
    "rate_limits.updated": _rate_limits,
}

# Documented event types a voice device does not act on: decoded as `Ignored`, not "unknown".
_IGNORED_TYPES: Final = frozenset(
    {
        "conversation.created",
        "conversation.item.created",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.deleted",
        "conversation.item.retrieved",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.segment",
        "conversation.item.input_audio_transcription.failed",
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.dtmf_event_received",
        "response.content_part.added",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.mcp_call.failed",
        "mcp_list_tools.in_progress",
        "mcp_list_tools.completed",
        "mcp_list_tools.failed",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
        "transcription_session.updated",
    }
)

# Malformed-frame warnings: the first few in full, then one per this many, so a broken server
# cannot flood the journal on a device that runs for years.
_WARN_FIRST: Final = 5
_WARN_EVERY: Final = 100
_MAX_REMEMBERED_UNKNOWN_TYPES: Final = 64
_MAX_TYPE_CHARS_IN_LOG: Final = 80


class ServerEventDecoder:
    """Turns received frames of either dialect into `ServerEvent`s; never raises on input.

    One decoder per connection. Not thread-safe (it is used from the one task that reads the
    socket). `unknown_events` counts frames whose `type` this module does not know;
    `malformed_events` counts frames that are not JSON objects with a string `type`, or whose
    fields are missing or of the wrong type.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or _log
        self.unknown_events = 0
        self.malformed_events = 0
        self._unknown_types_seen: set[str] = set()

    def decode(self, frame: str | bytes) -> ServerEvent | None:
        """Decode one frame's payload; None when there is nothing to act on (see the class)."""
        try:
            message = json.loads(frame)
        except (ValueError, TypeError, RecursionError) as exc:
            # JSONDecodeError, UnicodeDecodeError, or absurdly deep nesting. Only the exception's
            # class is logged: its text quotes the frame, which may be audio.
            self._malformed("", f"not valid JSON ({type(exc).__name__})")
            return None
        if not isinstance(message, dict):
            self._malformed("", f"not a JSON object but {type(message).__name__}")
            return None
        event_type = message.get("type")
        if not isinstance(event_type, str):
            self._malformed("", "field 'type' is missing or not a string")
            return None

        handler = _HANDLERS.get(event_type)
        if handler is None:
            if event_type in _IGNORED_TYPES:
                return Ignored(type=event_type)
            self._unknown(event_type)
            return None
        try:
            return handler(_Fields(message))
        except _MalformedEvent as exc:
            self._malformed(event_type, str(exc))
            return None
        except Exception as exc:  # a handler bug must not end the conversation either
            self._malformed(event_type, f"could not be decoded ({type(exc).__name__})")
            return None

    def _unknown(self, event_type: str) -> None:
        self.unknown_events += 1
        # Log each new type once: a newer service version may send one on every response.
        if (
            event_type not in self._unknown_types_seen
            and len(self._unknown_types_seen) < _MAX_REMEMBERED_UNKNOWN_TYPES
        ):
            self._unknown_types_seen.add(event_type)
            self._log.debug(
                "ignoring server event of unknown type %r",
                safe_line(event_type, _MAX_TYPE_CHARS_IN_LOG),
            )

    def _malformed(self, event_type: str, reason: str) -> None:
        self.malformed_events += 1
        count = self.malformed_events
        if count <= _WARN_FIRST or count % _WARN_EVERY == 0:
            what = (
                f"server event {safe_line(event_type, _MAX_TYPE_CHARS_IN_LOG)!r}"
                if event_type
                else "server frame"
            )
            self._log.warning("ignored malformed %s: %s (%d malformed so far)", what, reason, count)
