"""The sans-I/O Realtime protocol: client event shapes per dialect, and decoding server events.

Encoded client events are checked against the pinned `openai` type models, strictly (unknown
keys fail): that is what proves the shapes. Server fixtures are written by hand from the spec
and are themselves checked against the same models, so the decoder is tested on events the
service could really send.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.event_schema import validate_client_event, validate_server_event
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
    ToolDeclaration,
    TranscriptDelta,
    TranscriptDone,
    TruncateItem,
    TurnDetection,
    Usage,
)
from talkbox.realtime.protocol import Dialect, ServerEventDecoder, client_event_message, encode
from talkbox.tools.builtin import CURRENT_TIME, END_CONVERSATION

DIALECTS = [Dialect.GA, Dialect.PREVIEW]
PCM = struct.pack("<6h", 0, 1000, -1000, 32767, -32768, 5)  # a few int16 samples

SETTINGS_VARIANTS = {
    "defaults": SessionSettings(),
    "local-everything": SessionSettings(
        voice="echo",
        instructions="You are a kitchen speaker. Answer briefly.",
        temperature=0.9,
        transcription_model="whisper-1",
        noise_reduction="far_field",
        turn_detection=TurnDetection(kind="local"),
    ),
    "server_vad": SessionSettings(
        voice="shimmer",
        temperature=0.7,
        noise_reduction="near_field",
        turn_detection=TurnDetection(
            kind="server_vad", threshold=0.6, prefix_padding_ms=200, silence_duration_ms=700
        ),
    ),
    "semantic_vad": SessionSettings(
        transcription_model="gpt-4o-mini-transcribe",
        turn_detection=TurnDetection(kind="semantic_vad", eagerness="low", interrupt_response=True),
    ),
    "tools": SessionSettings(tools=(END_CONVERSATION, CURRENT_TIME, ToolDeclaration(
        "set_timer", "Start a timer.", {
            "type": "object",
            "properties": {"seconds": {"type": "integer", "minimum": 1}},
            "required": ["seconds"],
        },
    ))),
}

CLIENT_EVENTS: dict[str, ClientEvent] = {
    **{f"session.update/{name}": SessionUpdate(s) for name, s in SETTINGS_VARIANTS.items()},
    "append": AppendAudio(PCM),
    "append-empty": AppendAudio(b""),
    "commit": CommitAudio(),
    "clear": ClearAudio(),
    "user-text": CreateUserText("What time is it? — «quoted» ünïcode"),
    "response.create": CreateResponse(),
    "response.create-announcement": CreateResponse("Read this aloud: «Dinner is ready.»"),
    "function-output": SendFunctionOutput("call_7", '{"time": "14:05"}'),
    "cancel": CancelResponse(),
    "cancel-id": CancelResponse(response_id="resp_123"),
    "truncate": TruncateItem(item_id="item_9", content_index=0, audio_end_ms=1530),
}


def wire(event: ClientEvent, dialect: Dialect, event_id: str | None = None) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(encode(event, dialect, event_id))
    return decoded


# --- encoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.value)
def test_tools_are_declared_as_functions_and_left_out_when_there_are_none(
    dialect: Dialect,
) -> None:
    session = wire(SessionUpdate(SETTINGS_VARIANTS["tools"]), dialect)["session"]
    assert [tool["name"] for tool in session["tools"]] == [
        "end_conversation", "get_current_time", "set_timer"]
    assert {tool["type"] for tool in session["tools"]} == {"function"}
    assert session["tools"][2]["parameters"]["required"] == ["seconds"]
    assert session["tool_choice"] == "auto"
    plain = wire(SessionUpdate(SessionSettings()), dialect)["session"]
    assert "tools" not in plain and "tool_choice" not in plain


def test_a_tool_declaration_with_a_key_the_service_does_not_know_is_caught() -> None:
    # Guards the validity test: the validator looks inside each tool.
    message = wire(SessionUpdate(SETTINGS_VARIANTS["tools"]), Dialect.GA)
    message["session"]["tools"][0]["strict"] = True
    assert validate_client_event("ga", message) != []


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.value)
def test_a_response_parameter_the_service_does_not_know_is_caught(dialect: Dialect) -> None:
    # Guards the validity test for announcements: the validator looks inside `response`.
    message = wire(CreateResponse("Say hi."), dialect)
    message["response"]["say"] = "hi"
    assert validate_client_event(dialect.value, message) != []


def test_function_output_is_a_function_call_output_item() -> None:
    message = wire(SendFunctionOutput("call_7", "{}"), Dialect.GA)
    assert message == {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "call_7", "output": "{}"},
    }


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.value)
@pytest.mark.parametrize("name", list(CLIENT_EVENTS))
def test_every_client_event_is_valid_in_its_dialect(name: str, dialect: Dialect) -> None:
    message = wire(CLIENT_EVENTS[name], dialect)
    assert validate_client_event(dialect.value, message) == []


@pytest.mark.parametrize("name", list(SETTINGS_VARIANTS))
def test_session_update_of_one_dialect_is_rejected_by_the_other(name: str) -> None:
    # Guards the test above: the validator really tells the two session shapes apart.
    update = SessionUpdate(SETTINGS_VARIANTS[name])
    assert validate_client_event("preview", wire(update, Dialect.GA)) != []
    assert validate_client_event("ga", wire(update, Dialect.PREVIEW)) != []


def test_ga_session_shape() -> None:
    settings = SETTINGS_VARIANTS["local-everything"]
    session = wire(SessionUpdate(settings), Dialect.GA)["session"]
    assert session == {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": "You are a kitchen speaker. Answer briefly.",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "whisper-1"},
                "noise_reduction": {"type": "far_field"},
                "turn_detection": None,
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "echo"},
        },
    }
    assert "temperature" not in json.dumps(session)


def test_ga_session_turns_features_off_with_null() -> None:
    session = wire(SessionUpdate(SessionSettings()), Dialect.GA)["session"]
    assert session["audio"]["input"]["transcription"] is None
    assert session["audio"]["input"]["noise_reduction"] is None
    assert session["audio"]["input"]["turn_detection"] is None


def test_preview_session_shape() -> None:
    settings = SETTINGS_VARIANTS["local-everything"]
    session = wire(SessionUpdate(settings), Dialect.PREVIEW)["session"]
    assert session == {
        "modalities": ["audio", "text"],
        "instructions": "You are a kitchen speaker. Answer briefly.",
        "voice": "echo",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": {"model": "whisper-1"},
        "turn_detection": None,
        "temperature": 0.9,
    }


def test_preview_session_omits_temperature_when_unset() -> None:
    session = wire(SessionUpdate(SessionSettings()), Dialect.PREVIEW)["session"]
    assert "temperature" not in session
    assert session["input_audio_transcription"] is None


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.value)
def test_server_vad_turn_detection(dialect: Dialect) -> None:
    session = wire(SessionUpdate(SETTINGS_VARIANTS["server_vad"]), dialect)["session"]
    ga = dialect is Dialect.GA
    turn = session["audio"]["input"]["turn_detection"] if ga else session["turn_detection"]
    assert turn == {
        "type": "server_vad",
        "threshold": 0.6,
        "prefix_padding_ms": 200,
        "silence_duration_ms": 700,
        "create_response": True,
        "interrupt_response": False,
    }


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.value)
def test_semantic_vad_turn_detection(dialect: Dialect) -> None:
    session = wire(SessionUpdate(SETTINGS_VARIANTS["semantic_vad"]), dialect)["session"]
    ga = dialect is Dialect.GA
    turn = session["audio"]["input"]["turn_detection"] if ga else session["turn_detection"]
    assert turn == {
        "type": "semantic_vad",
        "eagerness": "low",
        "create_response": True,
        "interrupt_response": True,
    }


def test_flags_set_to_none_are_left_out() -> None:
    first_preview = TurnDetection(
        kind="server_vad", silence_duration_ms=700, create_response=None, interrupt_response=None
    )
    session = wire(SessionUpdate(SessionSettings(turn_detection=first_preview)), Dialect.PREVIEW)
    assert session["session"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 700,
    }


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.value)
def test_append_carries_base64_pcm(dialect: Dialect) -> None:
    message = wire(AppendAudio(PCM), dialect)
    assert message == {"type": "input_audio_buffer.append", "audio": base64.b64encode(PCM).decode()}
    assert base64.b64decode(message["audio"]) == PCM


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.value)
def test_simple_client_events(dialect: Dialect) -> None:
    assert wire(CommitAudio(), dialect) == {"type": "input_audio_buffer.commit"}
    assert wire(ClearAudio(), dialect) == {"type": "input_audio_buffer.clear"}
    assert wire(CreateResponse(), dialect) == {"type": "response.create"}
    assert wire(CreateResponse("Say hi."), dialect) == {
        "type": "response.create", "response": {"instructions": "Say hi."}}
    assert wire(CancelResponse(), dialect) == {"type": "response.cancel"}
    assert wire(CancelResponse("resp_1"), dialect) == {
        "type": "response.cancel",
        "response_id": "resp_1",
    }
    assert wire(TruncateItem("item_1", 0, 250), dialect) == {
        "type": "conversation.item.truncate",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 250,
    }
    assert wire(CreateUserText("hi"), dialect) == {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
        },
    }


def test_event_id_is_added_only_when_given() -> None:
    assert "event_id" not in wire(CommitAudio(), Dialect.GA)
    assert wire(CommitAudio(), Dialect.GA, event_id="evt_42")["event_id"] == "evt_42"
    assert validate_client_event("ga", wire(CommitAudio(), Dialect.GA, "evt_42")) == []


def test_encode_is_one_compact_json_object() -> None:
    text = encode(AppendAudio(PCM), Dialect.GA)
    assert "\n" not in text and ", " not in text and ": " not in text
    assert client_event_message(AppendAudio(PCM), Dialect.GA) == json.loads(text)


def test_encode_rejects_what_is_not_a_client_event() -> None:
    with pytest.raises(AssertionError):
        encode(Ignored("x"), Dialect.GA)  # type: ignore[arg-type]


# --- decoding: hand-made fixtures from the spec, both dialects --------------------------------

AUDIO = bytes(range(256)) * 4
AUDIO_B64 = base64.b64encode(AUDIO).decode()

GA_SESSION = {
    "id": "sess_ga1",
    "object": "realtime.session",
    "type": "realtime",
    "model": "gpt-realtime",
    "expires_at": 1767225600,
    "output_modalities": ["audio"],
    "instructions": "Be brief.",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500},
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
    },
}
PREVIEW_SESSION = {
    "id": "sess_pv1",
    "object": "realtime.session",
    "model": "gpt-4o-realtime-preview",
    "expires_at": 1767225600,
    "modalities": ["audio", "text"],
    "instructions": "Be brief.",
    "voice": "alloy",
    "input_audio_format": "pcm16",
    "output_audio_format": "pcm16",
    "input_audio_transcription": None,
    "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 200},
    "temperature": 0.8,
    "max_response_output_tokens": "inf",
    "tools": [],
    "tool_choice": "auto",
}
USAGE = {
    "total_tokens": 360,
    "input_tokens": 200,
    "output_tokens": 160,
    "input_token_details": {"text_tokens": 50, "audio_tokens": 150, "cached_tokens": 64},
    "output_token_details": {"text_tokens": 30, "audio_tokens": 130},
}
EXPECTED_USAGE = Usage(
    total_tokens=360,
    input_tokens=200,
    output_tokens=160,
    input_audio_tokens=150,
    output_audio_tokens=130,
    cached_tokens=64,
)


def server_fixtures(dialect: Dialect) -> list[tuple[dict[str, Any], ServerEvent]]:
    """(frame, expected event) for every server event type a voice device reads."""
    ga = dialect is Dialect.GA
    session = GA_SESSION if ga else PREVIEW_SESSION
    audio_prefix = "response.output_audio" if ga else "response.audio"
    transcript_prefix = "response.output_audio_transcript" if ga else "response.audio_transcript"
    text_prefix = "response.output_text" if ga else "response.text"
    ids = {"event_id": "evt_1", "response_id": "resp_1", "item_id": "item_1", "output_index": 0}
    assistant_item: dict[str, Any] = {
        "id": "item_1",
        "object": "realtime.item",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    user_item: dict[str, Any] = {
        "id": "item_0",
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }
    # The SDK models still list "audio" for GA content parts (the service may say
    # "output_audio"; a separate test covers both names).
    part_type = "audio"
    transcription_usage = {
        "type": "tokens",
        "input_tokens": 10,
        "output_tokens": 3,
        "total_tokens": 13,
    }
    return [
        (
            {"type": "session.created", "event_id": "evt_1", "session": session},
            SessionCreated(session=session),
        ),
        (
            {"type": "session.updated", "event_id": "evt_2", "session": session},
            SessionUpdated(session=session),
        ),
        (
            {
                "type": "error",
                "event_id": "evt_3",
                "error": {
                    "type": "invalid_request_error",
                    "code": "input_audio_buffer_commit_empty",
                    "message": "Error committing input audio buffer: buffer too small.",
                    "param": None,
                    "event_id": "client_7",
                },
            },
            ServerError(
                code="input_audio_buffer_commit_empty",
                message="Error committing input audio buffer: buffer too small.",
                error_type="invalid_request_error",
                param=None,
                event_id="client_7",
            ),
        ),
        (
            {
                "type": "error",
                "event_id": "evt_4",
                "error": {"type": "server_error", "code": None, "message": "Oops", "param": None},
            },
            ServerError(code="", message="Oops", error_type="server_error"),
        ),
        (
            {
                "type": "input_audio_buffer.speech_started",
                "event_id": "evt_5",
                "audio_start_ms": 1200,
                "item_id": "item_0",
            },
            ServerSpeechStarted(audio_start_ms=1200, item_id="item_0"),
        ),
        (
            {
                "type": "input_audio_buffer.speech_stopped",
                "event_id": "evt_6",
                "audio_end_ms": 3400,
                "item_id": "item_0",
            },
            ServerSpeechStopped(audio_end_ms=3400, item_id="item_0"),
        ),
        (
            {
                "type": "input_audio_buffer.committed",
                "event_id": "evt_7",
                "item_id": "item_0",
                "previous_item_id": None,
            },
            AudioCommitted(item_id="item_0"),
        ),
        ({"type": "input_audio_buffer.cleared", "event_id": "evt_8"}, AudioCleared()),
        (
            {
                "type": "response.created",
                "event_id": "evt_9",
                "response": {
                    "id": "resp_1",
                    "object": "realtime.response",
                    "status": "in_progress",
                    "status_details": None,
                    "output": [],
                    "usage": None,
                },
            },
            ResponseCreated(response_id="resp_1"),
        ),
        (
            {
                "type": "response.output_item.added",
                "event_id": "evt_10",
                "response_id": "resp_1",
                "output_index": 0,
                "item": assistant_item,
            },
            OutputItemAdded(response_id="resp_1", item_id="item_1", item_type="message"),
        ),
        (
            {**ids, "type": f"{audio_prefix}.delta", "content_index": 0, "delta": AUDIO_B64},
            AudioDelta(response_id="resp_1", item_id="item_1", content_index=0, pcm=AUDIO),
        ),
        (
            {**ids, "type": f"{audio_prefix}.done", "content_index": 0},
            AudioDone(response_id="resp_1", item_id="item_1", content_index=0),
        ),
        (
            {**ids, "type": f"{transcript_prefix}.delta", "content_index": 0, "delta": "It is "},
            TranscriptDelta(response_id="resp_1", item_id="item_1", delta="It is "),
        ),
        (
            {
                **ids,
                "type": f"{transcript_prefix}.done",
                "content_index": 0,
                "transcript": "It is three.",
            },
            TranscriptDone(response_id="resp_1", item_id="item_1", transcript="It is three."),
        ),
        (
            {**ids, "type": f"{text_prefix}.delta", "content_index": 0, "delta": "Hel"},
            TranscriptDelta(response_id="resp_1", item_id="item_1", delta="Hel"),
        ),
        (
            {**ids, "type": f"{text_prefix}.done", "content_index": 0, "text": "Hello."},
            TranscriptDone(response_id="resp_1", item_id="item_1", transcript="Hello."),
        ),
        (
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": "evt_11",
                "item_id": "item_0",
                "content_index": 0,
                "transcript": "what time is it",
                "usage": transcription_usage,
            },
            InputTranscript(item_id="item_0", transcript="what time is it"),
        ),
        (
            {
                "type": "response.done",
                "event_id": "evt_12",
                "response": {
                    "id": "resp_1",
                    "object": "realtime.response",
                    "status": "completed",
                    "status_details": None,
                    "output": [{**assistant_item, "status": "completed"}],
                    "usage": USAGE,
                },
            },
            ResponseDone(response_id="resp_1", status="completed", usage=EXPECTED_USAGE),
        ),
        (
            {
                "type": "response.done",
                "event_id": "evt_13",
                "response": {
                    "id": "resp_2",
                    "object": "realtime.response",
                    "status": "cancelled",
                    "status_details": {"type": "cancelled", "reason": "turn_detected"},
                    "output": [],
                    "usage": None,
                },
            },
            ResponseDone(response_id="resp_2", status="cancelled", reason="turn_detected"),
        ),
        (
            {
                "type": "response.done",
                "event_id": "evt_14",
                "response": {
                    "id": "resp_3",
                    "object": "realtime.response",
                    "status": "failed",
                    "status_details": {
                        "type": "failed",
                        "error": {"type": "server_error", "code": "rate_limit_exceeded"},
                    },
                    "output": [],
                },
            },
            ResponseDone(response_id="resp_3", status="failed", error_code="rate_limit_exceeded"),
        ),
        (
            {
                "type": "conversation.item.truncated",
                "event_id": "evt_15",
                "item_id": "item_1",
                "content_index": 0,
                "audio_end_ms": 1530,
            },
            ItemTruncated(item_id="item_1", audio_end_ms=1530),
        ),
        (
            {
                "type": "rate_limits.updated",
                "event_id": "evt_16",
                "rate_limits": [
                    {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60},
                    {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 0.5},
                ],
            },
            RateLimits(limits=(("requests", 1000, 999, 60.0), ("tokens", 50000, 49000, 0.5))),
        ),
        (
            {
                "type": "conversation.created",
                "event_id": "evt_17",
                "conversation": {"id": "conv_1", "object": "realtime.conversation"},
            },
            Ignored(type="conversation.created"),
        ),
        (
            {
                "type": "conversation.item.created",
                "event_id": "evt_18",
                "previous_item_id": None,
                "item": user_item,
            },
            Ignored(type="conversation.item.created"),
        ),
        (
            {
                **ids,
                "type": "response.content_part.added",
                "content_index": 0,
                "part": {"type": part_type, "transcript": ""},
            },
            Ignored(type="response.content_part.added"),
        ),
        (
            {
                "type": "response.output_item.done",
                "event_id": "evt_19",
                "response_id": "resp_1",
                "output_index": 0,
                "item": {**assistant_item, "status": "completed"},
            },
            Ignored(type="response.output_item.done"),
        ),
        (
            {
                "type": "response.output_item.done",
                "event_id": "evt_20",
                "response_id": "resp_1",
                "output_index": 1,
                "item": {
                    "id": "item_2",
                    "object": "realtime.item",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": "call_7",
                    "name": "get_current_time",
                    "arguments": "{}",
                },
            },
            FunctionCall("resp_1", "call_7", "get_current_time", "{}"),
        ),
    ]


ALL_FIXTURES = [
    pytest.param(dialect, frame, expected, id=f"{dialect.value}:{i}:{frame['type']}")
    for dialect in DIALECTS
    for i, (frame, expected) in enumerate(server_fixtures(dialect))
]


@pytest.mark.parametrize(("dialect", "frame", "expected"), ALL_FIXTURES)
def test_fixtures_are_faithful_to_the_service_models(
    dialect: Dialect, frame: dict[str, Any], expected: ServerEvent
) -> None:
    assert validate_server_event(dialect.value, frame) == []


@pytest.mark.parametrize(("dialect", "frame", "expected"), ALL_FIXTURES)
def test_decodes_every_server_event(
    dialect: Dialect, frame: dict[str, Any], expected: ServerEvent
) -> None:
    decoder = ServerEventDecoder()
    assert decoder.decode(json.dumps(frame)) == expected
    assert decoder.decode(json.dumps(frame).encode()) == expected  # a binary frame too
    assert (decoder.unknown_events, decoder.malformed_events) == (0, 0)


def test_ga_only_events_and_content_part_types_of_both_names() -> None:
    decoder = ServerEventDecoder()
    for part_type in ("audio", "output_audio", "text", "output_text"):
        frame = {
            "type": "response.content_part.added",
            "event_id": "e",
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": part_type},
        }
        assert decoder.decode(json.dumps(frame)) == Ignored("response.content_part.added")
    timeout = {
        "type": "input_audio_buffer.timeout_triggered",
        "event_id": "e",
        "audio_start_ms": 0,
        "audio_end_ms": 5000,
        "item_id": "i",
    }
    assert decoder.decode(json.dumps(timeout)) == Ignored("input_audio_buffer.timeout_triggered")
    assert decoder.malformed_events == 0


# --- robustness -------------------------------------------------------------------------------


def test_unknown_type_is_counted_logged_at_debug_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    decoder = ServerEventDecoder()
    with caplog.at_level(logging.DEBUG, logger="talkbox.realtime.protocol"):
        for _ in range(3):
            assert decoder.decode('{"type": "response.hologram.delta", "delta": "x"}') is None
    assert decoder.unknown_events == 3
    assert decoder.malformed_events == 0
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]  # once per new type
    assert "response.hologram.delta" in caplog.records[0].getMessage()


MALFORMED_FRAMES = {
    "not json": "{type: session.created",
    "empty": "",
    "invalid utf-8": b"\xff\xfe\xfa{",
    "array": "[1, 2]",
    "string": '"response.audio.delta"',
    "null": "null",
    "number": "42",
    "no type": '{"event_id": "e"}',
    "type not a string": '{"type": 7}',
    "type null": '{"type": null}',
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "delta not base64": json.dumps(
        {
            "type": "response.audio.delta",
            "response_id": "r",
            "item_id": "i",
            "content_index": 0,
            "delta": "@@not base64@@",
        }
    ),
    "delta a number": json.dumps(
        {
            "type": "response.output_audio.delta",
            "response_id": "r",
            "item_id": "i",
            "content_index": 0,
            "delta": 12,
        }
    ),
    "content_index a string": json.dumps(
        {
            "type": "response.output_audio.delta",
            "response_id": "r",
            "item_id": "i",
            "content_index": "0",
            "delta": AUDIO_B64,
        }
    ),
    "content_index a bool": json.dumps(
        {"type": "response.audio.done", "response_id": "r", "item_id": "i", "content_index": True}
    ),
    "missing item_id": json.dumps(
        {"type": "response.audio.delta", "response_id": "r", "content_index": 0, "delta": AUDIO_B64}
    ),
    "error not an object": '{"type": "error", "error": "boom"}',
    "error code a number": '{"type": "error", "error": {"code": 5, "message": "x"}}',
    "response missing": '{"type": "response.created"}',
    "response.done usage wrong": json.dumps(
        {
            "type": "response.done",
            "response": {"id": "r", "status": "completed", "usage": {"total_tokens": "many"}},
        }
    ),
    "response.done details a list": json.dumps(
        {"type": "response.done", "response": {"id": "r", "status": "failed", "status_details": []}}
    ),
    "session not an object": '{"type": "session.created", "session": []}',
    "speech_started ms a float string": json.dumps(
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": "12", "item_id": "i"}
    ),
    "rate_limits not a list": '{"type": "rate_limits.updated", "rate_limits": {}}',
    "rate limit entry not an object": '{"type": "rate_limits.updated", "rate_limits": [1]}',
    "reset_seconds a string": json.dumps(
        {
            "type": "rate_limits.updated",
            "rate_limits": [{"name": "tokens", "reset_seconds": "soon"}],
        }
    ),
    "truncated end missing": '{"type": "conversation.item.truncated", "item_id": "i"}',
}


@pytest.mark.parametrize("frame", list(MALFORMED_FRAMES.values()), ids=list(MALFORMED_FRAMES))
def test_malformed_frames_are_counted_and_skipped(frame: str | bytes) -> None:
    decoder = ServerEventDecoder()
    assert decoder.decode(frame) is None
    assert (decoder.malformed_events, decoder.unknown_events) == (1, 0)


def test_malformed_warnings_never_contain_the_payload_and_are_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_audio = base64.b64encode(b"PRIVATE-ROOM-AUDIO" * 10).decode()
    frame = json.dumps(
        {
            "type": "response.audio.delta",
            "response_id": "r",
            "item_id": "i",
            "content_index": "zero",
            "delta": secret_audio,
        }
    )
    broken_json = '{"type": "response.audio.delta", "delta": "' + secret_audio  # unterminated
    decoder = ServerEventDecoder()
    with caplog.at_level(logging.DEBUG, logger="talkbox.realtime.protocol"):
        for _ in range(250):
            decoder.decode(frame)
        decoder.decode(broken_json)
    assert decoder.malformed_events == 251
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # The first five, then every hundredth (100 and 200); the broken JSON is number 251.
    assert len(warnings) == 7
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert secret_audio[:16] not in text
    assert "content_index" in warnings[0].getMessage()


def test_known_fields_with_unexpected_extras_still_decode() -> None:
    # Newer service versions add fields; that must not cost us the event.
    frame = {
        "type": "input_audio_buffer.speech_started",
        "audio_start_ms": 5,
        "item_id": "i",
        "event_id": "e",
        "brand_new_field": {"x": [1, 2]},
    }
    assert ServerEventDecoder().decode(json.dumps(frame)) == ServerSpeechStarted(5, "i")


def test_optional_fields_may_be_null_or_absent() -> None:
    decoder = ServerEventDecoder()
    done = {
        "type": "response.done",
        "response": {"id": "r", "status": "completed", "status_details": None, "usage": None},
    }
    assert decoder.decode(json.dumps(done)) == ResponseDone("r", "completed")
    sparse_usage = {
        "type": "response.done",
        "response": {
            "id": "r",
            "status": "completed",
            "usage": {"total_tokens": 3, "input_token_details": None},
        },
    }
    assert decoder.decode(json.dumps(sparse_usage)) == ResponseDone(
        "r", "completed", usage=Usage(total_tokens=3)
    )
    error = {"type": "error", "error": {"message": "no code here"}}
    assert decoder.decode(json.dumps(error)) == ServerError(code="", message="no code here")
    assert decoder.malformed_events == 0


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
KNOWN_TYPES = st.sampled_from(
    sorted({frame["type"] for d in DIALECTS for frame, _ in server_fixtures(d)})
)


@settings(max_examples=300, deadline=None)
@given(frame=st.one_of(st.text(), st.binary()))
def test_arbitrary_text_or_bytes_never_raise(frame: str | bytes) -> None:
    decoder = ServerEventDecoder()
    event = decoder.decode(frame)
    assert (event is not None) + decoder.unknown_events + decoder.malformed_events == 1


@settings(max_examples=400, deadline=None)
@given(event_type=KNOWN_TYPES, fields=st.dictionaries(st.text(max_size=20), JSON_VALUES))
def test_known_types_with_arbitrary_fields_never_raise(
    event_type: str, fields: dict[str, Any]
) -> None:
    decoder = ServerEventDecoder()
    event = decoder.decode(json.dumps({**fields, "type": event_type}))
    assert (event is not None) + decoder.malformed_events == 1
    assert decoder.unknown_events == 0


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fixtures_with_one_field_replaced_never_raise(data: st.DataObject) -> None:
    dialect = data.draw(st.sampled_from(DIALECTS))
    frame, _ = data.draw(st.sampled_from(server_fixtures(dialect)))
    key = data.draw(st.sampled_from(sorted(k for k in frame if k != "type")))
    mutated = dict(frame)
    if data.draw(st.booleans()):
        del mutated[key]
    else:
        mutated[key] = data.draw(JSON_VALUES)
    decoder = ServerEventDecoder()
    event = decoder.decode(json.dumps(mutated))
    assert (event is not None) + decoder.malformed_events == 1
