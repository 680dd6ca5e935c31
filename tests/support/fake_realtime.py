"""An in-process fake of the GPT-4o Realtime service, faithful to the protocol, for tests.

This module owns the stand-in for the cloud: a `websockets` server on 127.0.0.1 (optionally TLS)
that routes by request path like the real services and speaks both dialects:

========================================== ======== =========================================
path                                       dialect  auth
========================================== ======== =========================================
/openai/v1/realtime?model=DEP              ga       ``api-key`` header (Azure GA)
/openai/realtime?api-version=V&deployment= preview  ``api-key`` header (Azure preview)
/v1/realtime?model=M, /realtime?model=M    ga       ``Authorization: Bearer`` (OpenAI)
========================================== ======== =========================================

Azure paths also take the key as ``Authorization: Bearer`` or an ``api-key`` query parameter.
Handshake answers: bad/missing auth 401, unknown deployment/model/path 404, ``api-version`` on
the Azure GA path 401, missing ``api-version`` on the preview path 400. ``OpenAI-Beta:
realtime=v1`` on an OpenAI path is accepted, answered with error ``beta_api_shape_disabled`` and
closed with 4000.

Every client event is validated strictly (``event_schema``); an invalid one is recorded in
``server.protocol_violations`` and answered with an ``error`` like the real service. Timing
errors a correct client can still hit (empty commit, cancel with nothing active, a second
response, truncate past the end) are answered the same way but are not violations.

Reply audio is streamed faster than real time (``chunk_ms`` chunks, ``pace_factor`` times real
time). It comes from ``server.reply_pcm`` (bytes, or a callable turn -> bytes, turn counted from
1 per connection over the audio/text replies, function-call responses not counted) or,
when that is None, a deterministic synthetic waveform of ``reply_duration_ms``. When the
session transcribes input, each committed turn's transcript is
``server.input_transcript`` (a str, or a callable turn -> str, turn = the commit counted from 1
per connection), sent right after its ``conversation.item.created`` or, with
``input_transcript_delay_ms`` > 0, that long after the commit while everything else goes on
(the real service's transcript of a short turn comes a few hundred ms after the commit, usually
after the response has begun); ``RecordedSession.input_transcripts`` records each with when it
was sent. All audio is treated as PCM16 24 kHz mono whatever format the session
names (talkbox only uses PCM16).

GA sessions get ``conversation.item.added``/``.done`` beside ``conversation.item.created`` (the
service sends the newer pair; the pinned SDK still lists ``created``), preview sessions get
``conversation.created`` after ``session.created``.

Function calls: ``server.function_calls`` (a list of responses, each a list of ``(name,
arguments_json)``) scripts function-call responses. Whenever a response starts (response.create
or server VAD) and the list is not empty, its first entry is popped and that response has no
audio: response.created, rate_limits.updated, then per call (output_index = its place)
response.output_item.added (a ``function_call`` item, in_progress, fresh ``call_id``, arguments
""), conversation.item.created (GA: + conversation.item.added),
response.function_call_arguments.delta (the arguments in 16-character pieces, two at least),
response.function_call_arguments.done (GA: with ``name``), GA: conversation.item.done,
response.output_item.done (completed, full arguments), and last response.done (status completed,
output = the function_call items). A cancel (response.cancel or a barge-in) stops between
deltas: the call under way is finished with the arguments sent so far (item status incomplete),
later calls are not made, and response.done says cancelled. The client answers with
conversation.item.create of a ``function_call_output`` item; its ``call_id`` must be one this
session issued (and whose item was not deleted) and not yet answered, or the event is a protocol
violation answered with error invalid_value, param ``item.call_id``. Recorded:
``RecordedSession.function_calls_made`` ({call_id, name, arguments, response_id}, at each call's
output_item.done), ``function_outputs`` ({call_id, output}, accepted ones in order), ``tools``
(the session's tools now, i.e. the latest accepted update's) and per response
``ResponseRecord.kind`` ("reply" | "function_calls") and ``call_ids``. Tool declarations are
checked by ``event_schema`` (unknown keys, type/name required, parameters a JSON schema with
``"type": "object"``).

Server VAD (turn_detection server_vad/semantic_vad) is a simple energy detector over 20 ms
frames: a frame is speech when its RMS level exceeds ``-60 + 50 * threshold`` dBFS (threshold 0.5
-> -35 dBFS); the turn ends after ``silence_duration_ms`` of non-speech measured in audio time
(semantic_vad uses 500 ms).

Fault injection (``server.faults``, a `Faults`; one-shot faults reset themselves when used):

- ``reject_handshake_status`` (+ ``reject_handshake_times``): answer handshakes with that status,
  the body's error message being ``reject_handshake_message``;
- ``session_id``: the id ``session.created`` carries (any text, to be hostile);
- ``events_after_session_updated``: events (dicts, sent as JSON) that follow every
  ``session.updated``, unasked, as a hostile service might send them;
- ``close_after_session_updated`` (one-shot, an `InjectedClose`): right after the next
  ``session.updated`` (and those events), close the socket with that code and reason;
- ``skip_session_created``: new connections never receive ``session.created``;
- ``session_updated_delay_s``: wait this long before each ``session.updated``;
- ``drop_after_audio_deltas`` (one-shot): during the next response, after N audio deltas, drop
  the TCP connection without a close frame (``transport.abort()``);
- ``error_instead_of_response`` (one-shot, an `InjectedError`): answer the next
  ``response.create`` with that error and no response;
- ``malformed_json_before_response`` (one-shot): send a frame that is not JSON just before the
  next response's events;
- ``audio_flood`` (one-shot, an `AudioFlood`): the next response's audio is ``count`` deltas of
  ``delta_bytes`` each (huge ones, or thousands of tiny ones), optionally paced at
  ``deltas_per_second``; they are counted (``audio_deltas``, ``flood_bytes``), not kept in
  ``audio``, so a flood of hundreds of MiB costs this process one delta;
- ``odd_length_deltas`` (one-shot): the next response's first N audio deltas are each followed
  by a 3-byte delta (not whole PCM16 samples), counted in ``odd_deltas``, not kept in ``audio``.

Methods: ``await server.expire_sessions()`` (error ``session_expired`` then close 1001),
``await server.send_raw(text)`` (any text frame to a live connection).

Recording: ``server.sessions`` (one `RecordedSession` per accepted connection),
``server.rejected_handshakes``, ``server.protocol_violations``, and
``await server.wait_for(predicate, timeout)``. For a daemon under test in another process,
``server.start_in_thread()`` runs the server on its own loop and returns a `ServerThread`.

The API key is never logged or recorded: recorded paths and headers are redacted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import ssl as ssl_module
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from support.event_schema import Dialect, Problem, check_client_event

_log = logging.getLogger("talkbox.tests.fake_realtime")
# websockets logs raw handshake headers (with the API key) at DEBUG; never let it.
_ws_log = logging.getLogger("talkbox.tests.fake_realtime.websockets")
_ws_log.setLevel(logging.INFO)

T = TypeVar("T")

SAMPLE_RATE = 24_000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # PCM16 mono
MIN_COMMIT_MS = 100
VAD_FRAME_MS = 20
SEMANTIC_VAD_SILENCE_MS = 500
DEFAULT_DEPLOYMENTS = frozenset({"gpt-4o-realtime-preview", "gpt-realtime"})
DEFAULT_REPLY_TRANSCRIPT = "It is twenty past four in the afternoon."
DEFAULT_INPUT_TRANSCRIPT = "Hey Jarvis, what time is it?"
DEFAULT_INSTRUCTIONS = ("Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly"
                        " AI. Act like a human, but remember that you aren't a human.")
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # a 15 MiB append is ~20 MiB of base64
REDACTED = "<redacted>"

Vendor = Literal["azure", "openai"]
ReplyAudio = bytes | Callable[[int], bytes] | None
ReplyText = str | Callable[[int], str]


# --- endpoint routing (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where an accepted handshake landed."""

    dialect: Dialect
    vendor: Vendor
    model: str  # Azure deployment name or OpenAI model id
    api_version: str | None
    auth_method: Literal["api-key", "bearer", "api-key-query"]
    beta_header: bool  # OpenAI-Beta: realtime=v1 on an OpenAI path (retired shape)


@dataclass(frozen=True)
class HandshakeRejection:
    """An HTTP error the service answers the upgrade request with."""

    status: int
    code: str
    message: str


def _auth_method(vendor: Vendor, headers: Headers, query: Mapping[str, list[str]],
                 api_key: str) -> Literal["api-key", "bearer", "api-key-query"] | None:
    def same(candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), api_key.encode())

    authorization = headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and same(token.strip()):
        return "bearer"
    if vendor == "azure":
        if same(headers.get("api-key")):
            return "api-key"
        if same(query.get("api-key", [None])[0]):
            return "api-key-query"
    return None


def route_request(path: str, headers: Headers, api_key: str, deployments: Iterable[str]
                  ) -> Route | HandshakeRejection:
    """Decide how the service answers an upgrade request to `path` (query string included)."""
    split = urlsplit(path)
    query = parse_qs(split.query, keep_blank_values=True)
    endpoint = split.path.rstrip("/")
    vendor: Vendor
    dialect: Dialect
    if endpoint == "/openai/v1/realtime":
        vendor, dialect, model_key = "azure", "ga", "model"
    elif endpoint == "/openai/realtime":
        vendor, dialect, model_key = "azure", "preview", "deployment"
    elif endpoint in ("/v1/realtime", "/realtime"):
        vendor, dialect, model_key = "openai", "ga", "model"
    else:
        return HandshakeRejection(404, "404", "Resource not found")
    method = _auth_method(vendor, headers, query, api_key)
    if method is None:
        if vendor == "azure":
            return HandshakeRejection(
                401, "401", "Access denied due to invalid subscription key or wrong API endpoint."
                " Make sure to provide a valid key for an active subscription and use a correct"
                " regional API endpoint for your resource.")
        return HandshakeRejection(401, "invalid_api_key", "Incorrect API key provided.")
    api_version = query.get("api-version", [None])[0]
    if dialect == "ga" and vendor == "azure" and api_version is not None:
        # Azure's v1 path has no api-version; keeping one from the preview URL is a 401 there.
        return HandshakeRejection(401, "401", "api-version is not allowed on the /openai/v1 path.")
    if dialect == "preview" and not api_version:
        return HandshakeRejection(400, "400", "Missing required query parameter 'api-version'.")
    model = query.get(model_key, [""])[0]
    if model not in set(deployments):
        if vendor == "azure":
            return HandshakeRejection(
                404, "DeploymentNotFound", f"The API deployment '{model}' does not exist.")
        return HandshakeRejection(
            404, "model_not_found", f"The model '{model}' does not exist or you do not have"
            " access to it.")
    beta_header = vendor == "openai" and "realtime=v1" in headers.get("OpenAI-Beta", "")
    return Route(dialect=dialect, vendor=vendor, model=model, api_version=api_version,
                 auth_method=method, beta_header=beta_header)


def redact_path(path: str) -> str:
    """The request path with any api-key query value hidden."""
    split = urlsplit(path)
    query = parse_qs(split.query, keep_blank_values=True)
    if "api-key" not in query:
        return path
    query["api-key"] = [REDACTED]
    return split._replace(query=urlencode(query, doseq=True, safe="<>")).geturl()


def redact_headers(headers: Headers) -> dict[str, str]:
    """Request headers (lower-case names) with credentials hidden but their scheme kept."""
    out: dict[str, str] = {}
    for name, value in headers.raw_items():
        key = name.lower()
        if key == "api-key":
            value = REDACTED
        elif key == "authorization":
            value = f"{value.partition(' ')[0]} {REDACTED}"
        out[key] = value
    return out


# --- session configuration (pure) ----------------------------------------------------------


def turn_detection_defaults(dialect: Dialect, kind: str, silence_ms: int) -> dict[str, Any]:
    """The full turn_detection object the service reports for a newly selected `kind`."""
    if kind == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": "auto", "create_response": True,
                "interrupt_response": True}
    settings: dict[str, Any] = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                "silence_duration_ms": silence_ms}
    if dialect == "ga":
        settings["idle_timeout_ms"] = None
    settings.update(create_response=True, interrupt_response=True)
    return settings


def default_silence_ms(dialect: Dialect) -> int:
    # Azure preview reported 200 ms in session.created; the GA/OpenAI default is 500 ms.
    return 200 if dialect == "preview" else 500


def default_session(dialect: Dialect, vendor: Vendor, model: str, session_id: str,
                    expires_at: int) -> dict[str, Any]:
    """The session object `session.created` carries, in the dialect's shape."""
    turn_detection = turn_detection_defaults(dialect, "server_vad", default_silence_ms(dialect))
    if dialect == "preview":
        return {
            "id": session_id, "object": "realtime.session", "model": model,
            "expires_at": expires_at, "modalities": ["text", "audio"],
            "instructions": DEFAULT_INSTRUCTIONS, "voice": "alloy",
            "input_audio_format": "pcm16", "output_audio_format": "pcm16",
            "input_audio_transcription": None, "input_audio_noise_reduction": None,
            "turn_detection": turn_detection, "tools": [], "tool_choice": "auto",
            "temperature": 0.8, "max_response_output_tokens": "inf", "speed": 1.0,
            "tracing": None,
        }
    pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE}
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": ["audio"], "instructions": DEFAULT_INSTRUCTIONS, "tools": [],
        "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None,
        "truncation": "auto", "prompt": None, "expires_at": expires_at,
        "audio": {
            "input": {"format": dict(pcm), "transcription": None, "noise_reduction": None,
                      "turn_detection": turn_detection},
            "output": {"format": dict(pcm), "voice": "alloy" if vendor == "azure" else "marin",
                       "speed": 1.0},
        },
        "include": None,
    }


def _turn_detection_path(dialect: Dialect) -> tuple[str, ...]:
    return ("turn_detection",) if dialect == "preview" else ("audio", "input", "turn_detection")


def _voice_path(dialect: Dialect) -> tuple[str, ...]:
    return ("voice",) if dialect == "preview" else ("audio", "output", "voice")


def _get_path(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    current: Any = obj
    for key in path:
        if not isinstance(current, Mapping) or key not in current:
            return None
        current = current[key]
    return current


def _has_path(obj: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    current: Any = obj
    for key in path:
        if not isinstance(current, Mapping) or key not in current:
            return False
        current = current[key]
    return True


def _merge(current: Any, update: Any) -> Any:
    # Objects merge key by key, except that a different `type` means a new object (e.g. a switch
    # from server_vad to semantic_vad does not keep server_vad's threshold).
    if not isinstance(current, dict) or not isinstance(update, dict):
        return update
    if "type" in update and current.get("type") != update["type"]:
        return dict(update)
    merged = dict(current)
    for key, value in update.items():
        merged[key] = _merge(current.get(key), value)
    return merged


def merge_session(dialect: Dialect, current: Mapping[str, Any], update: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """The effective session after `update`, filling defaults into a newly chosen VAD."""
    merged: dict[str, Any] = _merge(dict(current), dict(update))
    path = _turn_detection_path(dialect)
    new_detection = _get_path(update, path)
    old_detection = _get_path(current, path)
    if isinstance(new_detection, Mapping):
        kind = str(new_detection.get("type", ""))
        base = (old_detection if isinstance(old_detection, Mapping)
                and old_detection.get("type") == kind
                else turn_detection_defaults(dialect, kind, default_silence_ms(dialect)))
        parent = merged
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = {**base, **new_detection}
    return merged


def session_update_problem(dialect: Dialect, current: Mapping[str, Any],
                           update: Mapping[str, Any], audio_produced: bool) -> Problem | None:
    """Schema-valid updates the service still refuses."""
    if dialect == "ga" and update.get("type") not in (None, current.get("type")):
        return Problem("invalid_value", "session.type",
                       "Cannot change the session type of an existing session.")
    if "model" in update and update["model"] != current.get("model"):
        return Problem("invalid_value", "session.model",
                       "Cannot update the model of an existing session.")
    voice_path = _voice_path(dialect)
    if (audio_produced and _has_path(update, voice_path)
            and _get_path(update, voice_path) != _get_path(current, voice_path)):
        param = "session." + ".".join(voice_path)
        return Problem("invalid_value", param,
                       "Cannot update a conversation's voice if assistant audio is present.")
    return None


@dataclass(frozen=True)
class SessionView:
    """The few session settings the fake acts on, whatever the dialect's shape."""

    turn_detection: Mapping[str, Any] | None
    text_only: bool
    transcribe_input: bool
    instructions: str
    voice: Any

    @classmethod
    def of(cls, dialect: Dialect, session: Mapping[str, Any]) -> SessionView:
        detection = _get_path(session, _turn_detection_path(dialect))
        if dialect == "preview":
            modalities = session.get("modalities") or ["text", "audio"]
            transcription = session.get("input_audio_transcription")
        else:
            modalities = session.get("output_modalities") or ["audio"]
            transcription = _get_path(session, ("audio", "input", "transcription"))
        return cls(turn_detection=detection if isinstance(detection, Mapping) else None,
                   text_only="audio" not in modalities,
                   transcribe_input=isinstance(transcription, Mapping),
                   instructions=str(session.get("instructions") or ""),
                   voice=_get_path(session, _voice_path(dialect)))


# --- energy turn detector (pure) -----------------------------------------------------------


@dataclass(frozen=True)
class VadEvent:
    kind: Literal["speech_started", "speech_stopped"]
    audio_ms: int  # where speech started/stopped, in session audio time
    decided_at_ms: int  # end of the frame that decided it


class EnergyTurnDetector:
    """Speech start/stop from frame energy, timed by audio length (never by a clock)."""

    def __init__(self, threshold: float, silence_duration_ms: int, start_ms: int = 0) -> None:
        self.level_dbfs = -60.0 + 50.0 * threshold
        self.silence_duration_ms = silence_duration_ms
        self.position_ms = start_ms
        self._pending = b""
        self._speaking = False
        self._silence_ms = 0
        self._last_speech_end_ms = 0

    @property
    def speaking(self) -> bool:
        return self._speaking

    def reset(self, position_ms: int) -> None:
        self.position_ms = position_ms
        self._pending = b""
        self._speaking = False
        self._silence_ms = 0

    def feed(self, pcm: bytes) -> list[VadEvent]:
        frame_bytes = VAD_FRAME_MS * BYTES_PER_MS
        data = self._pending + pcm
        whole = len(data) - len(data) % frame_bytes
        self._pending = data[whole:]
        events: list[VadEvent] = []
        for offset in range(0, whole, frame_bytes):
            frame = np.frombuffer(data[offset:offset + frame_bytes], dtype="<i2")
            start = self.position_ms
            self.position_ms += VAD_FRAME_MS
            if self._is_speech(frame):
                self._silence_ms = 0
                self._last_speech_end_ms = self.position_ms
                if not self._speaking:
                    self._speaking = True
                    events.append(VadEvent("speech_started", start, self.position_ms))
            elif self._speaking:
                self._silence_ms += VAD_FRAME_MS
                if self._silence_ms >= self.silence_duration_ms:
                    self._speaking = False
                    self._silence_ms = 0
                    events.append(VadEvent("speech_stopped", self._last_speech_end_ms,
                                           self.position_ms))
        return events

    def _is_speech(self, frame: np.ndarray[Any, np.dtype[np.int16]]) -> bool:
        rms = math.sqrt(float(np.mean(frame.astype(np.float64) ** 2)))
        return rms > 0 and 20 * math.log10(rms / 32768.0) > self.level_dbfs


# --- reply audio (pure) --------------------------------------------------------------------


def synthetic_reply_pcm(duration_ms: int, turn: int = 1) -> bytes:
    """A deterministic voice-like PCM16 24 kHz waveform; the pitch differs per turn."""
    samples = duration_ms * SAMPLE_RATE // 1000
    t = np.arange(samples, dtype=np.float64) / SAMPLE_RATE
    pitch = 160.0 + 20.0 * ((turn - 1) % 5)
    tone = 0.6 * np.sin(2 * np.pi * pitch * t) + 0.25 * np.sin(2 * np.pi * 2 * pitch * t)
    syllables = 0.55 - 0.45 * np.cos(2 * np.pi * 4.0 * t)  # ~4 syllables a second
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t if samples else t) / 0.01)
    wave = 0.5 * tone * syllables * fade
    return bytes((wave * 32767).astype("<i2").tobytes())


def split_arguments(arguments: str, piece_chars: int = 16) -> list[str]:
    """Function-call arguments cut into deltas (two at least when there are two characters)."""
    if len(arguments) < 2:
        return [arguments]
    parts = max(2, math.ceil(len(arguments) / piece_chars))
    size = math.ceil(len(arguments) / parts)
    return [arguments[i:i + size] for i in range(0, len(arguments), size)]


def split_words(text: str, parts: int) -> list[str]:
    """`text` cut at word boundaries into `parts` deltas whose concatenation is `text`."""
    if parts <= 0:
        return []
    words = text.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    out = ["" for _ in range(parts)]
    for index, piece in enumerate(pieces):
        out[min(parts - 1, index * parts // max(1, len(pieces)))] += piece
    return out


# --- recording ------------------------------------------------------------------------------


@dataclass
class CommitRecord:
    item_id: str
    audio: bytes
    by: Literal["client", "server_vad"]

    @property
    def duration_ms(self) -> float:
        return len(self.audio) / BYTES_PER_MS


@dataclass
class TruncateRecord:
    item_id: str
    content_index: int
    audio_end_ms: int  # as requested
    item_audio_ms: int  # how much audio the item had
    applied_ms: int  # what the server truncated to (clamped)
    overshoot: bool  # the request was past the end: an error was sent


@dataclass
class InputTranscriptRecord:
    item_id: str
    turn: int  # the commit it transcribes, counted from 1 per connection
    transcript: str
    sent_at: float  # time.monotonic() when it went out


@dataclass
class ResponseRecord:
    response_id: str
    turn: int
    item_id: str
    status: str = "in_progress"
    status_reason: str | None = None
    audio: bytearray = field(default_factory=bytearray)  # audio deltas sent, in order
    audio_deltas: int = 0
    flood_bytes: int = 0  # audio of an injected flood: counted, not kept
    odd_deltas: int = 0  # injected deltas of an odd length: counted, not kept
    transcript_sent: str = ""
    usage: dict[str, Any] | None = None
    kind: Literal["reply", "function_calls"] = "reply"
    call_ids: list[str] = field(default_factory=list)  # a function-call response's calls


@dataclass
class ConversationItem:
    item_id: str
    role: str | None
    kind: str
    item: dict[str, Any]
    audio_ms: int = 0  # assistant audio sent for this item


@dataclass
class RecordedSession:
    """Everything that happened on one accepted connection."""

    index: int
    path: str  # redacted
    headers: dict[str, str]  # redacted
    dialect: Dialect
    vendor: Vendor
    model: str
    api_version: str | None
    auth_method: str
    session_id: str
    session: dict[str, Any] = field(default_factory=dict)  # current effective configuration
    client_events: list[Any] = field(default_factory=list)  # every parsed client frame
    server_events: list[dict[str, Any]] = field(default_factory=list)
    appended_audio: bytearray = field(default_factory=bytearray)  # decoded, all appends
    commits: list[CommitRecord] = field(default_factory=list)
    truncates: list[TruncateRecord] = field(default_factory=list)
    responses: list[ResponseRecord] = field(default_factory=list)
    input_transcripts: list[InputTranscriptRecord] = field(default_factory=list)
    sent_audio: bytearray = field(default_factory=bytearray)  # all audio deltas, in order
    items: dict[str, ConversationItem] = field(default_factory=dict)
    # Function calling: every call the fake made (on its output_item.done; `arguments` as sent,
    # partial when its response was cancelled) and every accepted function_call_output.
    function_calls_made: list[dict[str, str]] = field(default_factory=list)
    function_outputs: list[dict[str, str]] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None
    close_reason: str | None = None
    dropped: bool = False  # the fake aborted TCP without a close frame

    @property
    def response_count(self) -> int:
        return len(self.responses)

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The tools of the session as configured now (the latest accepted update's)."""
        tools = self.session.get("tools")
        return list(tools) if isinstance(tools, list) else []

    def client_events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.client_events if isinstance(e, dict) and e.get("type") == kind]

    def server_events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.server_events if e.get("type") == kind]

    def server_event_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.server_events]


@dataclass
class RejectedHandshake:
    path: str  # redacted
    headers: dict[str, str]  # redacted
    status: int
    code: str


@dataclass
class ProtocolViolation:
    session_index: int
    event: Any  # the parsed frame, or the raw text when it was not JSON
    problems: list[str]


@dataclass
class InjectedError:
    """An `error` event to send instead of a response."""

    code: str
    message: str
    type: str = "server_error"


@dataclass
class InjectedClose:
    """A close frame to send (the reason is at most 123 bytes of UTF-8, as the protocol says)."""

    code: int
    reason: str


@dataclass
class AudioFlood:
    """Reply audio no real service sends: `count` deltas of `delta_bytes` bytes each."""

    delta_bytes: int
    count: int
    deltas_per_second: float | None = None  # None: as fast as the connection takes them


@dataclass
class Faults:
    """Failure modes to inject; see the module docstring."""

    reject_handshake_status: int | None = None
    reject_handshake_times: int | None = None  # None: every handshake while the status is set
    reject_handshake_message: str = "Injected handshake failure."
    session_id: str | None = None
    events_after_session_updated: list[dict[str, Any]] = field(default_factory=list)
    close_after_session_updated: InjectedClose | None = None
    skip_session_created: bool = False
    session_updated_delay_s: float = 0.0
    drop_after_audio_deltas: int | None = None
    error_instead_of_response: InjectedError | None = None
    malformed_json_before_response: bool = False
    audio_flood: AudioFlood | None = None
    odd_length_deltas: int = 0


# --- the server -----------------------------------------------------------------------------


class FakeRealtimeServer:
    """The fake service; use ``async with FakeRealtimeServer(...) as server:``."""

    def __init__(
        self,
        api_key: str = "test-key",
        deployments: Iterable[str] = DEFAULT_DEPLOYMENTS,
        ssl: ssl_module.SSLContext | None = None,
        *,
        host: str = "127.0.0.1",
        chunk_ms: int = 100,
        pace_factor: float = 10.0,
        reply_duration_ms: int = 1200,
        reply_pcm: ReplyAudio = None,
        reply_transcript: ReplyText = DEFAULT_REPLY_TRANSCRIPT,
        input_transcript: ReplyText = DEFAULT_INPUT_TRANSCRIPT,
        input_transcript_delay_ms: int = 0,
        function_calls: Iterable[list[tuple[str, str]]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if chunk_ms <= 0 or pace_factor <= 0:
            raise ValueError("chunk_ms and pace_factor must be positive")
        self._api_key = api_key
        self.deployments = set(deployments)
        self._ssl = ssl
        self._host = host
        self.chunk_ms = chunk_ms
        self.pace_factor = pace_factor  # math.inf: no pauses at all
        self.reply_duration_ms = reply_duration_ms
        self.reply_pcm: ReplyAudio = reply_pcm
        self.reply_transcript: ReplyText = reply_transcript
        self.input_transcript: ReplyText = input_transcript
        self.input_transcript_delay_ms = input_transcript_delay_ms
        # Scripted function-call responses: each entry is one response's calls (name,
        # arguments JSON text); the next response started pops the first entry.
        self.function_calls: list[list[tuple[str, str]]] = [list(c) for c in function_calls]
        self.faults = Faults()
        self.sessions: list[RecordedSession] = []
        self.rejected_handshakes: list[RejectedHandshake] = []
        self.protocol_violations: list[ProtocolViolation] = []
        self._clock = clock
        self._server: Server | None = None
        self._connections: list[_Connection] = []
        self._ids: dict[str, int] = {}
        self._changed = asyncio.Event()

    def __repr__(self) -> str:  # keeps the key out of any assertion message
        return f"<FakeRealtimeServer {self._host}:{self.port if self._server else '-'}>"

    # lifecycle

    async def __aenter__(self) -> FakeRealtimeServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await serve(
            self._handle, self._host, 0, ssl=self._ssl, process_request=self._process_request,
            logger=_ws_log, max_size=MAX_MESSAGE_BYTES, compression=None)

    async def stop(self) -> None:
        if self._server is None:
            return
        for connection in list(self._connections):
            await connection.abandon_response()
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    def start_in_thread(self) -> ServerThread:
        """Run this server on its own event loop in a daemon thread (for subprocess tests)."""
        return ServerThread(self)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake server is not running")
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def url_base(self) -> str:
        """``http(s)://127.0.0.1:PORT``, as an endpoint setting would name the service."""
        return f"{'https' if self._ssl else 'http'}://{self._host}:{self.port}"

    @property
    def ws_url_base(self) -> str:
        return f"{'wss' if self._ssl else 'ws'}://{self._host}:{self.port}"

    # assertions

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once `predicate()` holds; re-checked after every recorded change."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"condition not met within {timeout} s; sessions: "
                               f"{[s.server_event_types()[-5:] for s in self.sessions]}"
                               ) from None

    async def wait_for_session(self, index: int = 0, timeout: float = 5.0) -> RecordedSession:
        await self.wait_for(lambda: len(self.sessions) > index, timeout)
        return self.sessions[index]

    # fault methods

    async def expire_sessions(self, minutes: int = 30) -> None:
        """End every open session the way the service does at its maximum duration."""
        message = f"Your session hit the maximum duration of {minutes} minutes."
        for connection in list(self._connections):
            await connection.expire(message)

    async def send_raw(self, text: str, session_index: int = -1) -> None:
        """Send any text frame (e.g. broken JSON) on the open connection of that session."""
        record = self.sessions[session_index]
        for connection in self._connections:
            if connection.record is record:
                await connection.send_text(text)
                return
        raise LookupError(f"session {session_index} has no open connection")

    # internals shared with connections

    def next_id(self, prefix: str) -> str:
        # Deterministic ids shaped like the service's (prefix + 21 characters).
        count = self._ids.get(prefix, 0) + 1
        self._ids[prefix] = count
        return f"{prefix}_{count:021d}"

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def reply_for_turn(self, turn: int) -> tuple[bytes, str]:
        audio = self.reply_pcm
        if callable(audio):
            pcm = audio(turn)
        elif audio is None:
            pcm = synthetic_reply_pcm(self.reply_duration_ms, turn)
        else:
            pcm = audio
        text = self.reply_transcript
        return bytes(pcm), text(turn) if callable(text) else text

    def input_transcript_for_turn(self, turn: int) -> str:
        text = self.input_transcript
        return text(turn) if callable(text) else text

    def chunk_pause_s(self) -> float:
        return 0.0 if math.isinf(self.pace_factor) else self.chunk_ms / 1000 / self.pace_factor

    def expires_at(self, vendor: Vendor) -> int:
        minutes = 30 if vendor == "azure" else 60
        return int(self._clock()) + minutes * 60

    def _process_request(self, connection: ServerConnection, request: Request
                         ) -> Response | None:
        faults = self.faults
        outcome: Route | HandshakeRejection
        if faults.reject_handshake_status is not None:
            outcome = HandshakeRejection(faults.reject_handshake_status, "injected",
                                         faults.reject_handshake_message)
            if faults.reject_handshake_times is not None:
                faults.reject_handshake_times -= 1
                if faults.reject_handshake_times <= 0:
                    faults.reject_handshake_status = None
                    faults.reject_handshake_times = None
        else:
            outcome = route_request(request.path, request.headers, self._api_key,
                                    self.deployments)
        if isinstance(outcome, Route):
            return None
        self.rejected_handshakes.append(RejectedHandshake(
            redact_path(request.path), redact_headers(request.headers), outcome.status,
            outcome.code))
        _log.info("fake realtime: rejected handshake to %s with %d",
                  urlsplit(request.path).path, outcome.status)
        self.notify()
        body = json.dumps({"error": {"code": outcome.code, "message": outcome.message}})
        response = connection.respond(outcome.status, body + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    async def _handle(self, websocket: ServerConnection) -> None:
        request = websocket.request
        if request is None:  # pragma: no cover - websockets always sets it before the handler
            return
        route = route_request(request.path, request.headers, self._api_key, self.deployments)
        if not isinstance(route, Route):  # deployments changed mid-handshake; answer as now
            await websocket.close(1008, route.message[:100])
            return
        record = RecordedSession(
            index=len(self.sessions), path=redact_path(request.path),
            headers=redact_headers(request.headers), dialect=route.dialect, vendor=route.vendor,
            model=route.model, api_version=route.api_version, auth_method=route.auth_method,
            session_id=self.faults.session_id or self.next_id("sess"))
        record.session = default_session(route.dialect, route.vendor, route.model,
                                         record.session_id, self.expires_at(route.vendor))
        self.sessions.append(record)
        _log.info("fake realtime: session %d opened on %s (%s)", record.index,
                  urlsplit(request.path).path, route.dialect)
        connection = _Connection(self, websocket, record, route)
        self._connections.append(connection)
        self.notify()
        try:
            await connection.run()
        finally:
            await connection.abandon_response()
            self._connections.remove(connection)
            record.closed = True
            record.close_code = websocket.close_code
            record.close_reason = websocket.close_reason
            self.notify()


@dataclass
class _ActiveResponse:
    record: ResponseRecord
    item: ConversationItem
    pcm: bytes
    transcript: str
    text_only: bool
    drop_after_deltas: int | None
    flood: AudioFlood | None = None
    odd_deltas_left: int = 0
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str | None = None
    task: asyncio.Task[None] | None = None
    calls: list[tuple[str, str]] | None = None  # a function-call response's script
    call_items: list[ConversationItem] = field(default_factory=list)  # emitted so far

    @property
    def output_items(self) -> list[ConversationItem]:
        return self.call_items if self.calls is not None else [self.item]


class _Connection:
    """One accepted WebSocket: the service's behaviour for a single session."""

    def __init__(self, server: FakeRealtimeServer, websocket: ServerConnection,
                 record: RecordedSession, route: Route) -> None:
        self.server = server
        self.websocket = websocket
        self.record = record
        self.route = route
        self.dialect: Dialect = route.dialect
        self.buffer = bytearray()  # the uncommitted input audio buffer
        self.buffer_start_ms = 0  # session audio time where `buffer` begins
        self.audio_ms_total = 0  # all audio ever appended, in ms (the VAD's clock)
        self.detector: EnergyTurnDetector | None = None
        self._detector_settings: tuple[float, int] | None = None
        self.conversation_id = server.next_id("conv")
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.update": self.on_session_update,
            "input_audio_buffer.append": self.on_append,
            "input_audio_buffer.commit": self.on_commit,
            "input_audio_buffer.clear": self.on_clear,
            "conversation.item.create": self.on_item_create,
            "conversation.item.delete": self.on_item_delete,
            "conversation.item.retrieve": self.on_item_retrieve,
            "conversation.item.truncate": self.on_truncate,
            "response.create": self.on_response_create,
            "response.cancel": self.on_response_cancel,
        }
        self.pending_user_item: str | None = None  # announced by speech_started
        self.active: _ActiveResponse | None = None
        self.audio_produced = False
        self.open_calls: dict[str, str] = {}  # call_id -> item_id, issued and not yet answered
        self.answered_calls: set[str] = set()
        self.transcript_tasks: set[asyncio.Task[None]] = set()  # delayed input transcripts
        self._configure_detector()

    # transport

    async def send(self, event_type: str, **fields: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"type": event_type, "event_id": self.server.next_id("event"),
                                 **fields}
        text = json.dumps(event)
        # Record what went on the wire, not the live dicts (items change as a response goes on).
        self.record.server_events.append(json.loads(text))
        self.server.notify()
        await self.websocket.send(text)
        return event

    async def send_text(self, text: str) -> None:
        await self.websocket.send(text)

    async def send_error(self, code: str, message: str, *, param: str | None = None,
                         event_id: str | None = None, error_type: str = "invalid_request_error"
                         ) -> None:
        await self.send("error", error={"type": error_type, "code": code, "message": message,
                                        "param": param, "event_id": event_id})

    async def run(self) -> None:
        try:
            if self.route.beta_header:
                await self.send_error(
                    "beta_api_shape_disabled", "The Realtime API beta shape has been retired."
                    " Remove the 'OpenAI-Beta: realtime=v1' header to use the GA interface.")
                await self.websocket.close(4000, "beta_api_shape_disabled")
                return
            if not self.server.faults.skip_session_created:
                await self.send("session.created", session=self.record.session)
                if self.dialect == "preview":
                    await self.send("conversation.created", conversation={
                        "id": self.conversation_id, "object": "realtime.conversation"})
            async for message in self.websocket:
                await self.on_message(message)
        except ConnectionClosed:
            pass  # the client (or a drop fault) ended it; the record keeps the close code

    # fault helpers

    async def abandon_response(self) -> None:
        """Stop the response being streamed, and any input transcript still to come."""
        for task in list(self.transcript_tasks):
            task.cancel()
        await asyncio.gather(*self.transcript_tasks, return_exceptions=True)
        active = self.active
        if active is not None and active.task is not None and not active.task.done():
            active.task.cancel()
            await asyncio.gather(active.task, return_exceptions=True)
        self.active = None

    async def expire(self, message: str) -> None:
        await self.abandon_response()
        try:
            await self.send_error("session_expired", message)
            await self.websocket.close(1001, message)
        except ConnectionClosed:
            pass

    # dispatch

    async def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.record.client_events.append(message)
            await self._reject(message, [Problem("invalid_value", None,
                                                 "Binary frames are not supported.")], None)
            return
        try:
            event = json.loads(message)
        except json.JSONDecodeError as error:
            self.record.client_events.append(message)
            await self._reject(message, [Problem("invalid_json", None,
                                                 f"Invalid JSON in client event: {error}.")],
                               None)
            return
        self.record.client_events.append(event)
        self.server.notify()
        event_id = event.get("event_id") if isinstance(event, dict) else None
        problems = check_client_event(self.dialect, event, self.route.api_version)
        if not problems:
            problems = self._unsupported(event)
        if problems:
            await self._reject(event, problems, event_id if isinstance(event_id, str) else None)
            return
        await self.handlers[event["type"]](event)

    def _unsupported(self, event: Mapping[str, Any]) -> list[Problem]:
        kind = event["type"]
        if kind == "output_audio_buffer.clear":
            return [Problem("invalid_value", "type", "output_audio_buffer.clear is only"
                            " supported for WebRTC and SIP connections.")]
        if kind not in self.handlers:
            return [Problem("invalid_value", "type",
                            f"'{kind}' is not supported in a realtime session.")]
        if kind == "session.update":
            problem = session_update_problem(self.dialect, self.record.session, event["session"],
                                             self.audio_produced)
            return [problem] if problem else []
        return []

    async def _reject(self, event: Any, problems: list[Problem], event_id: str | None) -> None:
        self.server.protocol_violations.append(ProtocolViolation(
            self.record.index, event, [str(p) for p in problems]))
        _log.warning("fake realtime: protocol violation in session %d: %s", self.record.index,
                     "; ".join(str(p) for p in problems))
        first = problems[0]
        await self.send_error(first.code, first.message, param=first.param, event_id=event_id)

    # session

    async def on_session_update(self, event: dict[str, Any]) -> None:
        self.record.session = merge_session(self.dialect, self.record.session, event["session"])
        self._configure_detector()
        delay = self.server.faults.session_updated_delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        await self.send("session.updated", session=self.record.session)
        faults = self.server.faults
        for extra in faults.events_after_session_updated:
            await self.send(str(extra.get("type")), **{k: v for k, v in extra.items()
                                                       if k != "type"})
        if faults.close_after_session_updated is not None:
            close, faults.close_after_session_updated = faults.close_after_session_updated, None
            await self.websocket.close(close.code, close.reason)

    def _view(self) -> SessionView:
        return SessionView.of(self.dialect, self.record.session)

    def _configure_detector(self) -> None:
        detection = self._view().turn_detection
        if detection is None:
            self.detector = None
            return
        if detection.get("type") == "semantic_vad":
            threshold, silence = 0.5, SEMANTIC_VAD_SILENCE_MS
        else:
            threshold = float(detection.get("threshold", 0.5))
            silence = int(detection.get("silence_duration_ms",
                                        default_silence_ms(self.dialect)))
        if self.detector is not None and self._detector_settings == (threshold, silence):
            return  # an unrelated update must not lose a turn in progress
        self._detector_settings = (threshold, silence)
        self.detector = EnergyTurnDetector(threshold, silence, self.audio_ms_total)

    # input audio

    async def on_append(self, event: dict[str, Any]) -> None:
        audio = base64.b64decode(event["audio"])
        self.record.appended_audio += audio
        self.buffer += audio
        self.audio_ms_total += len(audio) // BYTES_PER_MS
        self.server.notify()
        if self.detector is None:
            return
        for vad in self.detector.feed(audio):
            if vad.kind == "speech_started":
                await self._on_speech_started(vad)
            else:
                await self._on_speech_stopped(vad)

    async def _on_speech_started(self, vad: VadEvent) -> None:
        self.pending_user_item = self.server.next_id("item")
        await self.send("input_audio_buffer.speech_started", audio_start_ms=vad.audio_ms,
                        item_id=self.pending_user_item)
        detection = self._view().turn_detection or {}
        if self.active is not None and detection.get("interrupt_response", True):
            await self._cancel_active("turn_detected")

    async def _on_speech_stopped(self, vad: VadEvent) -> None:
        item_id = self.pending_user_item or self.server.next_id("item")
        self.pending_user_item = None
        await self.send("input_audio_buffer.speech_stopped", audio_end_ms=vad.audio_ms,
                        item_id=item_id)
        # Commit what was buffered up to the frame that ended the turn; later audio stays.
        cut = max(0, (vad.decided_at_ms - self.buffer_start_ms) * BYTES_PER_MS)
        audio = bytes(self.buffer[:cut])
        del self.buffer[:cut]
        self.buffer_start_ms = vad.decided_at_ms
        await self._commit(audio, "server_vad", item_id)
        detection = self._view().turn_detection or {}
        if detection.get("create_response", True) and self.active is None:
            await self._start_response(None, None)

    async def on_commit(self, event: dict[str, Any]) -> None:
        duration_ms = len(self.buffer) / BYTES_PER_MS
        if duration_ms < MIN_COMMIT_MS:
            await self.send_error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least"
                f" {MIN_COMMIT_MS}ms of audio, but buffer only has {duration_ms:.2f}ms of audio.",
                event_id=event.get("event_id"))
            return
        audio = bytes(self.buffer)
        self.buffer.clear()
        self.buffer_start_ms = self.audio_ms_total
        item_id = self.pending_user_item or self.server.next_id("item")
        self.pending_user_item = None
        if self.detector is not None:
            self.detector.reset(self.audio_ms_total)
        await self._commit(audio, "client", item_id)

    async def _commit(self, audio: bytes, by: Literal["client", "server_vad"], item_id: str
                      ) -> None:
        previous = self._last_item_id()
        self.record.commits.append(CommitRecord(item_id, audio, by))
        await self.send("input_audio_buffer.committed", previous_item_id=previous,
                        item_id=item_id)
        item = {"id": item_id, "object": "realtime.item", "type": "message",
                "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        await self._add_item(ConversationItem(item_id, "user", "message", item), previous)
        if self._view().transcribe_input:
            turn = len(self.record.commits)
            delay_ms = self.server.input_transcript_delay_ms
            if delay_ms <= 0:
                await self._send_input_transcript(item_id, turn, audio)
            else:
                task = asyncio.create_task(
                    self._send_input_transcript(item_id, turn, audio, delay_ms / 1000))
                self.transcript_tasks.add(task)
                task.add_done_callback(self.transcript_tasks.discard)

    async def _send_input_transcript(self, item_id: str, turn: int, audio: bytes,
                                     delay_s: float = 0.0) -> None:
        try:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            transcript = self.server.input_transcript_for_turn(turn)
            await self.send("conversation.item.input_audio_transcription.completed",
                            item_id=item_id, content_index=0, transcript=transcript,
                            usage={"type": "duration",
                                   "seconds": round(len(audio) / BYTES_PER_MS / 1000, 3)})
            self.record.input_transcripts.append(
                InputTranscriptRecord(item_id, turn, transcript, time.monotonic()))
            self.server.notify()
        except ConnectionClosed:
            pass  # the client went away before its transcript was ready

    async def on_clear(self, event: dict[str, Any]) -> None:
        self.buffer.clear()
        self.buffer_start_ms = self.audio_ms_total
        self.pending_user_item = None
        if self.detector is not None:
            self.detector.reset(self.audio_ms_total)
        await self.send("input_audio_buffer.cleared")

    # conversation items

    def _last_item_id(self) -> str | None:
        return next(reversed(self.record.items), None)

    async def _add_item(self, item: ConversationItem, previous: str | None, *,
                        finished: bool = True) -> None:
        self.record.items[item.item_id] = item
        await self.send("conversation.item.created", previous_item_id=previous, item=item.item)
        if self.dialect == "ga":
            await self.send("conversation.item.added", previous_item_id=previous, item=item.item)
            if finished:  # an assistant item is done only when its response is
                await self.send("conversation.item.done", previous_item_id=previous,
                                item=item.item)

    async def on_item_create(self, event: dict[str, Any]) -> None:
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self.record.items:
            await self.send_error("invalid_value", f"Item with id '{previous}' not found.",
                                  param="previous_item_id", event_id=event.get("event_id"))
            return
        item = dict(event["item"])
        item.setdefault("id", self.server.next_id("item"))
        item["object"] = "realtime.item"
        item["status"] = "completed"
        if item["id"] in self.record.items:
            await self.send_error("invalid_value", f"Item with id '{item['id']}' already exists.",
                                  param="item.id", event_id=event.get("event_id"))
            return
        if item["type"] == "function_call_output":
            call_id = item.get("call_id")
            problem = self._call_output_problem(call_id)
            if problem is not None:
                event_id = event.get("event_id")
                await self._reject(event, [problem], event_id if isinstance(event_id, str)
                                   else None)
                return
            del self.open_calls[call_id]
            self.answered_calls.add(call_id)
            self.record.function_outputs.append({"call_id": call_id, "output": item["output"]})
        await self._add_item(ConversationItem(item["id"], item.get("role"), item["type"], item),
                             self._last_item_id())

    def _call_output_problem(self, call_id: Any) -> Problem | None:
        # The service matches a function_call_output to a function_call in the conversation.
        if call_id in self.answered_calls:
            return Problem("invalid_value", "item.call_id", f"Invalid 'item.call_id':"
                           f" function call '{call_id}' already has an output.")
        if call_id not in self.open_calls:
            return Problem("invalid_value", "item.call_id", f"Invalid 'item.call_id': no"
                           f" function call with call_id '{call_id}' found in the conversation.")
        return None

    async def on_item_delete(self, event: dict[str, Any]) -> None:
        deleted = self.record.items.pop(event["item_id"], None)
        if deleted is None:
            await self._item_not_found(event)
            return
        if deleted.kind == "function_call":
            self.open_calls.pop(str(deleted.item.get("call_id")), None)
        await self.send("conversation.item.deleted", item_id=event["item_id"])

    async def on_item_retrieve(self, event: dict[str, Any]) -> None:
        item = self.record.items.get(event["item_id"])
        if item is None:
            await self._item_not_found(event)
            return
        await self.send("conversation.item.retrieved", item=item.item)

    async def _item_not_found(self, event: dict[str, Any]) -> None:
        await self.send_error("invalid_value", f"Item with item_id '{event['item_id']}' not"
                              " found.", param="item_id", event_id=event.get("event_id"))

    async def on_truncate(self, event: dict[str, Any]) -> None:
        item = self.record.items.get(event["item_id"])
        if item is None:
            await self._item_not_found(event)
            return
        if item.role != "assistant" or item.audio_ms == 0:
            await self.send_error("invalid_value", "Only model output audio messages can be"
                                  " truncated.", param="item_id", event_id=event.get("event_id"))
            return
        requested = int(event["audio_end_ms"])
        overshoot = requested > item.audio_ms
        applied = min(requested, item.audio_ms)
        self.record.truncates.append(TruncateRecord(
            item.item_id, int(event["content_index"]), requested, item.audio_ms, applied,
            overshoot))
        if overshoot:
            # The service reports this with a null event_id, then still clamps and truncates.
            await self.send_error("invalid_value", f"Audio content of {item.audio_ms}ms is"
                                  f" already shorter than {requested}ms", param="audio_end_ms")
        await self.send("conversation.item.truncated", item_id=item.item_id,
                        content_index=int(event["content_index"]), audio_end_ms=applied)

    # responses

    async def on_response_create(self, event: dict[str, Any]) -> None:
        await self._start_response(event.get("event_id"), event.get("response"))

    async def on_response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        active = self.active
        if active is None or (wanted is not None and wanted != active.record.response_id):
            await self.send_error("response_cancel_not_active",
                                  "Cancellation failed: no active response found.",
                                  event_id=event.get("event_id"))
            return
        await self._cancel_active("client_cancelled")

    async def _cancel_active(self, reason: str) -> None:
        active = self.active
        if active is None or active.task is None:
            return
        active.cancel_reason = reason
        active.interrupted.set()
        # The service finishes the cancelled response before it handles the next client event.
        await active.task

    async def _start_response(self, event_id: str | None, overrides: Mapping[str, Any] | None
                              ) -> None:
        faults = self.server.faults
        if self.active is not None:
            active_id = self.active.record.response_id
            await self.send_error(
                "conversation_already_has_active_response", "Conversation already has an"
                f" active response in progress: {active_id}. Wait until the response is finished"
                " before creating a new response.", event_id=event_id)
            return
        if faults.error_instead_of_response is not None:
            injected, faults.error_instead_of_response = faults.error_instead_of_response, None
            await self.send_error(injected.code, injected.message, event_id=event_id,
                                  error_type=injected.type)
            return
        if faults.malformed_json_before_response:
            faults.malformed_json_before_response = False
            await self.send_text('{"type": "response.created", "event_id": ')
        # Reply turns count the replies only: a function-call response shares its turn with the
        # reply that follows the client's function outputs.
        turn = 1 + sum(1 for r in self.record.responses if r.kind == "reply")
        if self.server.function_calls:
            await self._start_function_calls(self.server.function_calls.pop(0), turn, overrides)
            return
        drop_after, faults.drop_after_audio_deltas = faults.drop_after_audio_deltas, None
        pcm, transcript = self.server.reply_for_turn(turn)
        response_id = self.server.next_id("resp")
        item_id = self.server.next_id("item")
        record = ResponseRecord(response_id, turn, item_id)
        self.record.responses.append(record)
        text_only = self._text_only(overrides)
        item = {"id": item_id, "object": "realtime.item", "type": "message",
                "status": "in_progress", "role": "assistant", "content": []}
        conversation_item = ConversationItem(item_id, "assistant", "message", item)
        active = _ActiveResponse(record, conversation_item, pcm, transcript, text_only,
                                 drop_after, faults.audio_flood, faults.odd_length_deltas)
        faults.audio_flood, faults.odd_length_deltas = None, 0
        self.active = active
        await self.send("response.created", response=self._response_object(active))
        await self._send_rate_limits()
        await self.send("response.output_item.added", response_id=response_id, output_index=0,
                        item=item)
        await self._add_item(conversation_item, self._last_item_id(), finished=False)
        empty_part = {"type": "text", "text": ""} if text_only else {"type": "audio",
                                                                     "transcript": ""}
        await self.send("response.content_part.added", response_id=response_id,
                        item_id=item_id, output_index=0, content_index=0, part=empty_part)
        active.task = asyncio.create_task(self._stream(active))

    async def _send_rate_limits(self) -> None:
        await self.send("rate_limits.updated", rate_limits=[
            {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
            {"name": "tokens", "limit": 800_000, "remaining": 795_000, "reset_seconds": 0.37}])

    async def _start_function_calls(self, calls: list[tuple[str, str]], turn: int,
                                    overrides: Mapping[str, Any] | None) -> None:
        response_id = self.server.next_id("resp")
        record = ResponseRecord(response_id, turn, "", kind="function_calls")
        self.record.responses.append(record)
        no_item = ConversationItem("", None, "function_call", {})  # the calls bring their own
        active = _ActiveResponse(record, no_item, b"", "", self._text_only(overrides), None,
                                 calls=[(str(name), str(arguments)) for name, arguments in calls])
        self.active = active
        await self.send("response.created", response=self._response_object(active))
        await self._send_rate_limits()
        active.task = asyncio.create_task(self._stream(active))

    async def _stream_calls(self, active: _ActiveResponse) -> None:
        response_id = active.record.response_id
        for index, (name, arguments) in enumerate(active.calls or []):
            if active.cancel_reason is not None:
                break
            call_id = self.server.next_id("call")
            item_id = self.server.next_id("item")
            item: dict[str, Any] = {"id": item_id, "object": "realtime.item",
                                    "type": "function_call", "status": "in_progress",
                                    "name": name, "call_id": call_id, "arguments": ""}
            conversation_item = ConversationItem(item_id, None, "function_call", item)
            active.call_items.append(conversation_item)
            active.record.call_ids.append(call_id)
            active.record.item_id = active.record.item_id or item_id
            self.open_calls[call_id] = item_id
            await self.send("response.output_item.added", response_id=response_id,
                            output_index=index, item=item)
            await self._add_item(conversation_item, self._last_item_id(), finished=False)
            ids = {"response_id": response_id, "item_id": item_id, "output_index": index,
                   "call_id": call_id}
            sent = ""
            for piece in split_arguments(arguments):
                if active.cancel_reason is not None:
                    break
                await self.send("response.function_call_arguments.delta", **ids, delta=piece)
                sent += piece
                await self._pause(active)
            done: dict[str, Any] = {**ids, "arguments": sent}
            if self.dialect == "ga":  # the GA event names the function; the preview one not
                done["name"] = name
            await self.send("response.function_call_arguments.done", **done)
            item["arguments"] = sent
            item["status"] = "completed" if sent == arguments else "incomplete"
            if self.dialect == "ga":
                await self.send("conversation.item.done", previous_item_id=None, item=item)
            await self.send("response.output_item.done", response_id=response_id,
                            output_index=index, item=item)
            self.record.function_calls_made.append({"call_id": call_id, "name": name,
                                                    "arguments": sent,
                                                    "response_id": response_id})
        cancelled = active.cancel_reason is not None
        active.record.status = "cancelled" if cancelled else "completed"
        active.record.status_reason = active.cancel_reason
        active.record.usage = self._usage(active)
        self.active = None
        await self.send("response.done", response=self._response_object(active))

    def _text_only(self, overrides: Mapping[str, Any] | None) -> bool:
        key = "output_modalities" if self.dialect == "ga" else "modalities"
        if overrides and isinstance(overrides.get(key), list):
            return "audio" not in overrides[key]
        return self._view().text_only

    def _event_name(self, what: str) -> str:
        ga = self.dialect == "ga"
        return {
            "audio": "response.output_audio" if ga else "response.audio",
            "transcript": "response.output_audio_transcript" if ga else "response.audio_transcript",
            "text": "response.output_text" if ga else "response.text",
        }[what]

    async def _stream(self, active: _ActiveResponse) -> None:
        try:
            await self._stream_events(active)
        except ConnectionClosed:
            # The client went away mid-response; the connection's reader records the close.
            active.record.status = "interrupted"
            self.active = None

    async def _stream_events(self, active: _ActiveResponse) -> None:
        if active.calls is not None:
            await self._stream_calls(active)
            return
        ids = {"response_id": active.record.response_id, "item_id": active.item.item_id,
               "output_index": 0, "content_index": 0}
        if active.flood is not None and not active.text_only:
            await self._stream_flood(active, active.flood, ids)
            return
        chunk_bytes = self.server.chunk_ms * BYTES_PER_MS
        if active.text_only:
            chunks: list[bytes] = []
            words = split_words(active.transcript, len(active.transcript.split(" ")))
        else:
            chunks = [active.pcm[i:i + chunk_bytes] for i in range(0, len(active.pcm),
                                                                     chunk_bytes)]
            words = split_words(active.transcript, len(chunks))
        steps = max(len(chunks), len(words))
        drop_after = active.drop_after_deltas
        for step in range(steps):
            if active.cancel_reason is not None:
                break
            if drop_after is not None and active.record.audio_deltas >= drop_after:
                self._drop(active)
                return
            if step < len(words) and words[step]:
                kind = "text" if active.text_only else "transcript"
                await self.send(f"{self._event_name(kind)}.delta", **ids, delta=words[step])
                active.record.transcript_sent += words[step]
            if step < len(chunks):
                await self._send_audio(active, chunks[step], ids)
                if active.odd_deltas_left:
                    active.odd_deltas_left -= 1
                    await self.send(f"{self._event_name('audio')}.delta", **ids,
                                    delta=base64.b64encode(b"\x01\x02\x03").decode("ascii"))
                    active.record.odd_deltas += 1
            await self._pause(active)
        if drop_after is not None and active.cancel_reason is None:
            self._drop(active)  # asked for more deltas than the reply has: drop before .done
            return
        await self._finish(active, ids)

    async def _send_audio(self, active: _ActiveResponse, chunk: bytes, ids: dict[str, Any]
                          ) -> None:
        await self.send(f"{self._event_name('audio')}.delta", **ids,
                        delta=base64.b64encode(chunk).decode("ascii"))
        active.record.audio += chunk
        active.record.audio_deltas += 1
        active.item.audio_ms = len(active.record.audio) // BYTES_PER_MS
        self.record.sent_audio += chunk
        self.audio_produced = True

    async def _stream_flood(self, active: _ActiveResponse, flood: AudioFlood,
                            ids: dict[str, Any]) -> None:
        # One delta's text is made once and sent `count` times (each with its own event id),
        # and none is recorded in server_events: a flood must not cost this process its size.
        voice = synthetic_reply_pcm(200, active.record.turn)
        pcm = (voice * (flood.delta_bytes // len(voice) + 1))[:flood.delta_bytes]
        delta = base64.b64encode(pcm).decode("ascii")
        head = json.dumps({"type": f"{self._event_name('audio')}.delta", **ids})[:-1]
        started = time.monotonic()
        for sent in range(flood.count):
            if active.cancel_reason is not None:
                break
            event_id = self.server.next_id("event")
            await self.websocket.send(f'{head}, "event_id": "{event_id}", "delta": "{delta}"}}')
            active.record.audio_deltas += 1
            active.record.flood_bytes += flood.delta_bytes
            self.audio_produced = True
            if flood.deltas_per_second is not None:
                ahead = (sent + 1) / flood.deltas_per_second - (time.monotonic() - started)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
            elif sent % 64 == 63:
                await asyncio.sleep(0)  # let the reader see a cancel or a close
        self.server.notify()
        await self._finish(active, ids)

    async def _pause(self, active: _ActiveResponse) -> None:
        pause = self.server.chunk_pause_s()
        if pause == 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):  # the pause ended without an interruption
            await asyncio.wait_for(active.interrupted.wait(), pause)

    def _drop(self, active: _ActiveResponse) -> None:
        self.record.dropped = True
        active.record.status = "dropped"
        self.active = None
        self.websocket.transport.abort()  # no close frame, like a lost network path
        self.server.notify()

    async def _finish(self, active: _ActiveResponse, ids: dict[str, Any]) -> None:
        cancelled = active.cancel_reason is not None
        sent_text = active.record.transcript_sent
        if active.text_only:
            await self.send(f"{self._event_name('text')}.done", **ids, text=sent_text)
            part: dict[str, Any] = {"type": "text", "text": sent_text}
            content = {"type": "output_text" if self.dialect == "ga" else "text",
                       "text": sent_text}
        else:
            await self.send(f"{self._event_name('audio')}.done", **ids)
            await self.send(f"{self._event_name('transcript')}.done", **ids,
                            transcript=sent_text)
            part = {"type": "audio", "transcript": sent_text}
            content = {"type": "output_audio" if self.dialect == "ga" else "audio",
                       "transcript": sent_text}
        await self.send("response.content_part.done", **ids, part=part)
        item = active.item.item
        item["status"] = "incomplete" if cancelled else "completed"
        item["content"] = [content]
        if self.dialect == "ga":
            await self.send("conversation.item.done", previous_item_id=None, item=item)
        await self.send("response.output_item.done", response_id=active.record.response_id,
                        output_index=0, item=item)
        active.record.status = "cancelled" if cancelled else "completed"
        active.record.status_reason = active.cancel_reason
        active.record.usage = self._usage(active)
        self.active = None
        await self.send("response.done", response=self._response_object(active))

    def _response_object(self, active: _ActiveResponse) -> dict[str, Any]:
        record = active.record
        done = record.status not in ("in_progress", "dropped")
        details: dict[str, Any] | None = None
        if record.status == "cancelled":
            details = {"type": "cancelled", "reason": record.status_reason}
        modalities = ["text"] if active.text_only else ["audio"]
        response: dict[str, Any] = {
            "object": "realtime.response", "id": record.response_id,
            "status": record.status, "status_details": details,
            "output": [i.item for i in active.output_items] if done else [],
            "conversation_id": self.conversation_id,
            "max_output_tokens": "inf", "metadata": None,
            "usage": record.usage if done else None,
        }
        if self.dialect == "ga":
            response["output_modalities"] = modalities
            response["audio"] = {"output": {
                "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                "voice": self._view().voice}}
        else:
            response["modalities"] = ["text"] if active.text_only else ["text", "audio"]
            response["voice"] = self._view().voice
            response["output_audio_format"] = "pcm16"
            response["temperature"] = self.record.session.get("temperature", 0.8)
        return response

    def _usage(self, active: _ActiveResponse) -> dict[str, Any]:
        # Audio tokens: user 1 per 100 ms, assistant 1 per 50 ms; the whole conversation so far
        # is billed as input again, and earlier turns' tokens count as cached.
        user_ms = sum(c.duration_ms for c in self.record.commits)
        earlier_assistant_ms = sum(len(r.audio) / BYTES_PER_MS
                                   for r in self.record.responses if r is not active.record)
        input_audio = math.ceil(user_ms / 100) + math.ceil(earlier_assistant_ms / 50)
        input_text = max(1, len(self._view().instructions) // 4) + sum(
            len(json.dumps(i.item)) // 16 for i in self.record.items.values()
            if i.role != "assistant")
        previous = next((r.usage for r in reversed(self.record.responses)
                         if r.usage is not None), None)
        cached = 0 if previous is None else min(
            input_audio + input_text, previous["input_tokens"] // 64 * 64)
        output_audio = math.ceil(len(active.record.audio) / BYTES_PER_MS / 50)
        output_text = len(active.record.transcript_sent.split()) + sum(
            math.ceil(len(str(i.item.get("arguments", ""))) / 4) for i in active.call_items)
        input_tokens = input_audio + input_text
        output_tokens = output_audio + output_text
        input_details: dict[str, Any] = {"text_tokens": input_text, "audio_tokens": input_audio,
                                         "cached_tokens": cached}
        if self.dialect == "ga":  # the preview usage object has no per-kind cached split
            input_details["cached_tokens_details"] = {
                "text_tokens": min(cached, input_text), "audio_tokens": max(0, cached - input_text)}
        return {
            "total_tokens": input_tokens + output_tokens,
            "input_tokens": input_tokens, "output_tokens": output_tokens,
            "input_token_details": input_details,
            "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
        }


# --- running in a thread --------------------------------------------------------------------


class ServerThread:
    """A `FakeRealtimeServer` on its own event loop in a daemon thread.

    For tests that start the daemon as a subprocess: the test's thread stays free while the
    fake serves. Read recorded state through `call` (it runs on the server's loop).
    """

    def __init__(self, server: FakeRealtimeServer, start_timeout: float = 10.0) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fake-realtime", daemon=True)
        self._thread.start()
        if not self._started.wait(start_timeout):
            raise TimeoutError("the fake realtime server thread did not start")
        if self._start_error is not None:
            raise RuntimeError("the fake realtime server failed to start") from self._start_error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as error:  # reported to the starting thread
            self._start_error = error
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url_base(self) -> str:
        return self.server.url_base

    @property
    def ws_url_base(self) -> str:
        return self.server.ws_url_base

    def _run_coroutine(self, coroutine: Awaitable[T], timeout: float) -> T:
        async def wrapper() -> T:
            return await coroutine

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrapper(), self._loop)
        return future.result(timeout)

    def call(self, function: Callable[[], T], timeout: float = 5.0) -> T:
        """Run `function` on the server's loop (a consistent view of recorded state)."""
        async def on_loop() -> T:
            return function()

        return self._run_coroutine(on_loop(), timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        self._run_coroutine(self.server.wait_for(predicate, timeout), timeout + 5.0)

    # Closing waits for the peer's close frame up to websockets' 10 s close timeout.
    def expire_sessions(self, minutes: int = 30) -> None:
        self._run_coroutine(self.server.expire_sessions(minutes), 30.0)

    def send_raw(self, text: str, session_index: int = -1) -> None:
        self._run_coroutine(self.server.send_raw(text, session_index), 30.0)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving, close every connection (1001) and end the thread."""
        if not self._thread.is_alive():
            return
        self._run_coroutine(self.server.stop(), timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
