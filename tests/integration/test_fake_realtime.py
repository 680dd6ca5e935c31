"""The fake Realtime service, driven by a raw `websockets` client (no talkbox code).

These tests pin the fake to the protocol notes: handshake routing and auth per path, both
dialects' session flow, strict client-event validation, audio in and out, cancel, truncate,
server VAD, every fault hook, TLS, and the threaded runner used by end-to-end tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect as sync_connect

from support.event_schema import Dialect, validate_client_event, validate_server_event
from support.fake_realtime import (
    BYTES_PER_MS,
    FakeRealtimeServer,
    InjectedError,
    synthetic_reply_pcm,
)

KEY = "sk-test-Zq81-never-log-me"
AZURE = "gpt-4o-realtime-preview"
OPENAI = "gpt-realtime"
PREVIEW_VERSION = "2024-10-01-preview"

# name -> (path template, auth headers, dialect)
ENDPOINTS: dict[str, tuple[str, dict[str, str], Dialect]] = {
    "azure_ga": ("/openai/v1/realtime?model={dep}", {"api-key": KEY}, "ga"),
    "azure_preview": (f"/openai/realtime?api-version={PREVIEW_VERSION}&deployment={{dep}}",
                      {"api-key": KEY}, "preview"),
    "azure_preview_2025": ("/openai/realtime?api-version=2025-04-01-preview&deployment={dep}",
                           {"api-key": KEY}, "preview"),
    "openai_v1": ("/v1/realtime?model={dep}", {"Authorization": f"Bearer {KEY}"}, "ga"),
    "openai_root": ("/realtime?model={dep}", {"Authorization": f"Bearer {KEY}"}, "ga"),
}

# A client logger that never writes handshake headers (websockets logs them at DEBUG).
_client_log = logging.getLogger("test_fake_realtime.client")
_client_log.setLevel(logging.INFO)


def endpoint_path(name: str, deployment: str | None = None) -> str:
    template, _, _ = ENDPOINTS[name]
    default = AZURE if name.startswith("azure") else OPENAI
    return template.format(dep=deployment or default)


def pcm_tone(duration_ms: int, dbfs: float = -12.0, freq: float = 300.0) -> bytes:
    samples = duration_ms * 24
    t = np.arange(samples) / 24_000
    amplitude = 32767 * 10 ** (dbfs / 20) * math.sqrt(2)  # RMS of a sine is peak / sqrt(2)
    return bytes((amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes())


def pcm_silence(duration_ms: int) -> bytes:
    return b"\x00\x00" * duration_ms * 24


class RawClient:
    """A thin JSON-over-WebSocket client, as any Realtime client would start."""

    def __init__(self, websocket: ClientConnection, dialect: Dialect) -> None:
        self.websocket = websocket
        self.dialect = dialect
        self.received: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any], *, check: bool = True) -> None:
        if check:  # our own well-formed events must be valid; malformed ones are sent raw
            assert validate_client_event(self.dialect, event) == []
        await self.websocket.send(json.dumps(event))

    async def append(self, pcm: bytes, chunk_ms: int = 20) -> None:
        step = chunk_ms * BYTES_PER_MS
        for offset in range(0, len(pcm), step):
            await self.send({"type": "input_audio_buffer.append",
                             "audio": base64.b64encode(pcm[offset:offset + step]).decode()})

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(self.websocket.recv(), timeout))
        self.received.append(event)
        return event

    async def recv_until(self, event_type: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every event up to and including the first of `event_type`."""
        events = []
        while True:
            event = await self.recv(timeout)
            events.append(event)
            if event["type"] == event_type:
                return events

    async def session_update(self, session: dict[str, Any]) -> dict[str, Any]:
        await self.send({"type": "session.update", "session": session})
        return (await self.recv_until("session.updated"))[-1]


@asynccontextmanager
async def client(server: FakeRealtimeServer, name: str = "azure_ga", *,
                 skip_created: bool = False, extra_headers: dict[str, str] | None = None
                 ) -> AsyncIterator[RawClient]:
    _, headers, dialect = ENDPOINTS[name]
    # max_queue=None: tests leave events unread, and a full queue would stop the client from
    # reading the server's close frame (its close() would then wait for its timeout).
    async with connect(server.ws_url_base + endpoint_path(name),
                       additional_headers={**headers, **(extra_headers or {})},
                       logger=_client_log, max_queue=None) as websocket:
        raw = RawClient(websocket, dialect)
        if not skip_created:
            first = await raw.recv()
            assert first["type"] == "session.created"
            if dialect == "preview":
                assert (await raw.recv())["type"] == "conversation.created"
        yield raw


def manual_turns(dialect: Dialect) -> dict[str, Any]:
    if dialect == "ga":
        return {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    return {"turn_detection": None}


def audio_delta_type(dialect: Dialect) -> str:
    return "response.output_audio.delta" if dialect == "ga" else "response.audio.delta"


def assert_all_server_events_valid(server: FakeRealtimeServer) -> None:
    for session in server.sessions:
        for event in session.server_events:
            problems = validate_server_event(session.dialect, event)
            assert problems == [], (event["type"], problems)


@pytest.fixture
async def server() -> AsyncIterator[FakeRealtimeServer]:
    async with FakeRealtimeServer(api_key=KEY, deployments={AZURE, OPENAI}) as fake:
        yield fake


async def expect_status(server: FakeRealtimeServer, path: str, headers: dict[str, str]) -> int:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(server.ws_url_base + path, additional_headers=headers,
                           logger=_client_log):
            pass
    return caught.value.response.status_code


# --- handshake --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENDPOINTS))
async def test_handshake_accepts_the_right_credentials(server: FakeRealtimeServer,
                                                       name: str) -> None:
    async with client(server, name):
        pass
    session = server.sessions[0]
    assert session.dialect == ENDPOINTS[name][2]
    assert session.vendor == ("azure" if name.startswith("azure") else "openai")
    assert session.auth_method == ("api-key" if name.startswith("azure") else "bearer")
    assert KEY not in repr(session)
    await server.wait_for(lambda: session.closed)
    assert session.close_code == 1000


@pytest.mark.parametrize("name", list(ENDPOINTS))
@pytest.mark.parametrize(("case", "expected"), [("wrong_key", 401), ("no_auth", 401),
                                                ("unknown_deployment", 404)])
async def test_handshake_rejections(server: FakeRealtimeServer, name: str, case: str,
                                    expected: int) -> None:
    _, headers, _ = ENDPOINTS[name]
    path = endpoint_path(name)
    if case == "wrong_key":
        headers = {k: v.replace(KEY, "sk-wrong") for k, v in headers.items()}
    elif case == "no_auth":
        headers = {}
    else:
        path = endpoint_path(name, "no-such-deployment")
    assert await expect_status(server, path, headers) == expected
    assert server.sessions == []
    assert [r.status for r in server.rejected_handshakes] == [expected]
    assert KEY not in repr(server.rejected_handshakes)


async def test_handshake_auth_styles_and_path_rules(server: FakeRealtimeServer) -> None:
    bearer = {"Authorization": f"Bearer {KEY}"}
    # Azure also takes the key as a bearer token or (for browsers) a query parameter.
    async with connect(f"{server.ws_url_base}/openai/v1/realtime?model={AZURE}",
                       additional_headers=bearer, logger=_client_log) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    async with connect(f"{server.ws_url_base}/openai/v1/realtime?model={AZURE}&api-key={KEY}",
                       logger=_client_log) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    assert [s.auth_method for s in server.sessions] == ["bearer", "api-key-query"]
    assert KEY not in server.sessions[1].path
    # OpenAI does not take Azure's api-key header.
    assert await expect_status(server, f"/v1/realtime?model={OPENAI}", {"api-key": KEY}) == 401
    # A leftover api-version on Azure's GA path is refused with 401, as Azure does.
    assert await expect_status(
        server, f"/openai/v1/realtime?model={AZURE}&api-version={PREVIEW_VERSION}",
        {"api-key": KEY}) == 401
    assert await expect_status(server, f"/openai/realtime?deployment={AZURE}",
                               {"api-key": KEY}) == 400
    assert await expect_status(server, "/openai/deployments/x/realtime", {"api-key": KEY}) == 404


# --- session flow -----------------------------------------------------------------------------


async def test_preview_session_flow(server: FakeRealtimeServer) -> None:
    async with client(server, "azure_preview", skip_created=True) as raw:
        created, conversation = await raw.recv(), await raw.recv()
        assert (created["type"], conversation["type"]) == ("session.created",
                                                           "conversation.created")
        session = created["session"]
        assert session["id"].startswith("sess_")
        assert session["model"] == AZURE
        assert session["expires_at"] > time.time()
        assert session["turn_detection"]["type"] == "server_vad"
        assert session["turn_detection"]["silence_duration_ms"] == 200
        updated = await raw.session_update({"voice": "verse", "instructions": "Be brief.",
                                            "turn_detection": {"type": "server_vad",
                                                               "silence_duration_ms": 600}})
    merged = updated["session"]
    assert (merged["voice"], merged["instructions"]) == ("verse", "Be brief.")
    assert merged["turn_detection"]["silence_duration_ms"] == 600
    assert merged["turn_detection"]["threshold"] == 0.5  # kept from the default
    assert merged["input_audio_format"] == "pcm16"  # untouched keys stay
    assert server.protocol_violations == []
    assert_all_server_events_valid(server)


async def test_ga_session_flow(server: FakeRealtimeServer) -> None:
    async with client(server, "openai_v1", skip_created=True) as raw:
        created = await raw.recv()
        session = created["session"]
        assert (session["type"], session["object"]) == ("realtime", "realtime.session")
        assert session["model"] == OPENAI
        detection = session["audio"]["input"]["turn_detection"]
        assert (detection["type"], detection["silence_duration_ms"]) == ("server_vad", 500)
        updated = await raw.session_update({
            "type": "realtime", "instructions": "You are a kitchen speaker.",
            "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}},
                      "output": {"voice": "cedar"}}})
        # A second event after session.created must not be conversation.created in GA.
        assert "conversation.created" not in [e["type"] for e in raw.received]
    merged = updated["session"]
    assert merged["audio"]["output"]["voice"] == "cedar"
    assert merged["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert merged["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": "low", "create_response": True,
        "interrupt_response": True}
    assert server.protocol_violations == []
    assert_all_server_events_valid(server)


async def test_ga_rejects_the_whole_update_with_a_beta_key(server: FakeRealtimeServer) -> None:
    async with client(server, "azure_ga") as raw:
        await raw.send({"type": "session.update", "event_id": "evt_beta",
                        "session": {"type": "realtime", "instructions": "Changed.",
                                    "temperature": 0.7}}, check=False)
        error = (await raw.recv())["error"]
        assert error["type"] == "invalid_request_error"
        assert (error["code"], error["param"]) == ("unknown_parameter", "session.temperature")
        assert error["event_id"] == "evt_beta"
        updated = await raw.session_update({"type": "realtime", "tools": []})
    assert updated["session"]["instructions"] != "Changed."
    [violation] = server.protocol_violations
    assert violation.event["event_id"] == "evt_beta"
    assert any("session.temperature" in p for p in violation.problems)


async def test_preview_rejects_ga_keys_and_ga_needs_session_type(
        server: FakeRealtimeServer) -> None:
    async with client(server, "azure_preview") as raw:
        await raw.send({"type": "session.update",
                        "session": {"output_modalities": ["audio"]}}, check=False)
        error = (await raw.recv())["error"]
        assert (error["code"], error["param"]) == ("unknown_parameter",
                                                   "session.output_modalities")
    async with client(server, "azure_ga") as raw:
        await raw.send({"type": "session.update", "session": {"voice": "alloy"}}, check=False)
        error = (await raw.recv())["error"]
        assert (error["code"], error["param"]) == ("missing_required_parameter", "session.type")
    assert len(server.protocol_violations) == 2


async def test_the_first_preview_has_only_plain_server_vad(server: FakeRealtimeServer) -> None:
    newer = {"type": "server_vad", "silence_duration_ms": 600, "create_response": True,
             "interrupt_response": False}
    async with client(server, "azure_preview") as raw:
        await raw.send({"type": "session.update", "session": {"turn_detection": newer}})
        error = (await raw.recv())["error"]
        assert (error["code"], error["param"]) == ("unknown_parameter",
                                                   "session.turn_detection.create_response")
        await raw.send({"type": "session.update",
                        "session": {"turn_detection": {"type": "semantic_vad"}}})
        error = (await raw.recv())["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "session.turn_detection.type")
    async with client(server, "azure_preview_2025") as raw:
        updated = await raw.session_update({"turn_detection": newer})
        assert updated["session"]["turn_detection"]["interrupt_response"] is False
    assert len(server.protocol_violations) == 2


async def test_malformed_client_events_are_violations_and_answered(
        server: FakeRealtimeServer) -> None:
    async with client(server, "azure_ga") as raw:
        await raw.websocket.send("{not json")
        await raw.send({"type": "input_audio_buffer.append", "event_id": "e2"}, check=False)
        await raw.send({"type": "response.explode"}, check=False)
        await raw.send({"type": "input_audio_buffer.append", "audio": "@@@"}, check=False)
        await raw.send({"type": "output_audio_buffer.clear"}, check=False)
        errors = [(await raw.recv())["error"] for _ in range(5)]
        # The session is still usable afterwards.
        await raw.session_update({"type": "realtime"})
    assert [e["code"] for e in errors] == ["invalid_json", "missing_required_parameter",
                                           "invalid_value", "invalid_value", "invalid_value"]
    assert errors[1]["event_id"] == "e2"
    assert [e["param"] for e in errors[1:4]] == ["audio", "type", "audio"]
    assert len(server.protocol_violations) == 5
    assert len(server.sessions[0].client_events) == 6


# --- audio in, audio out ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["azure_ga", "azure_preview"])
async def test_append_commit_response_round_trip(server: FakeRealtimeServer, name: str) -> None:
    reply = np.random.default_rng(7).integers(-2000, 2000, 29_617, dtype="<i2").tobytes()
    server.reply_pcm = reply
    server.reply_transcript = "The kitchen timer is set for ten minutes."
    spoken = pcm_tone(500)
    async with client(server, name) as raw:
        await raw.session_update(manual_turns(raw.dialect))
        await raw.append(spoken)
        await raw.send({"type": "input_audio_buffer.commit"})
        committed = await raw.recv_until("input_audio_buffer.committed")
        await raw.send({"type": "response.create"})
        events = await raw.recv_until("response.done")
    kinds = [e["type"] for e in events]
    # Before the response: only the rest of the user item's events (GA: .added/.done).
    start = kinds.index("response.created")
    assert set(kinds[:start]) <= {"conversation.item.created", "conversation.item.added",
                                  "conversation.item.done"}
    events, kinds = events[start:], kinds[start:]
    assert kinds.index("response.content_part.added") < kinds.index(audio_delta_type(raw.dialect))
    deltas = [base64.b64decode(e["delta"]) for e in events
              if e["type"] == audio_delta_type(raw.dialect)]
    assert b"".join(deltas) == reply
    assert all(len(d) == 100 * BYTES_PER_MS for d in deltas[:-1])  # 100 ms chunks
    transcript_type = ("response.output_audio_transcript.delta" if raw.dialect == "ga"
                       else "response.audio_transcript.delta")
    assert "".join(e["delta"] for e in events if e["type"] == transcript_type) == (
        server.reply_transcript)
    done = events[-1]["response"]
    assert done["status"] == "completed"
    usage = done["usage"]
    assert usage["output_token_details"]["audio_tokens"] == math.ceil(len(reply) / 48 / 50)
    assert usage["input_token_details"]["audio_tokens"] == 5  # 500 ms of user audio
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    session = server.sessions[0]
    assert session.sent_audio == reply
    assert session.appended_audio == spoken
    assert [c.audio for c in session.commits] == [spoken]
    assert committed[-1]["item_id"] == session.commits[0].item_id
    assert session.response_count == 1
    assert server.protocol_violations == []
    assert_all_server_events_valid(server)


async def test_default_reply_is_synthetic_and_scriptable_per_turn(
        server: FakeRealtimeServer) -> None:
    async with client(server, "openai_v1") as raw:
        await raw.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "What time is it?"}]}})
        created = await raw.recv_until("conversation.item.created")
        assert created[-1]["item"]["content"][0]["text"] == "What time is it?"
        await raw.send({"type": "response.create"})
        first = await raw.recv_until("response.done")
        server.reply_pcm = lambda turn: bytes([turn, 0]) * 2400 * turn
        server.reply_transcript = lambda turn: f"Answer number {turn}."
        await raw.send({"type": "response.create"})
        second = await raw.recv_until("response.done")
    session = server.sessions[0]
    first_audio, second_audio = (bytes(r.audio) for r in session.responses)
    assert first_audio == synthetic_reply_pcm(1200, 1)
    assert len(first_audio) == 1200 * BYTES_PER_MS
    assert second_audio == bytes([2, 0]) * 4800
    assert second[-1]["response"]["output"][0]["content"][0]["transcript"] == "Answer number 2."
    # The second response bills the first one's 1200 ms of reply audio again, as input.
    first_input = first[-1]["response"]["usage"]["input_token_details"]
    second_input = second[-1]["response"]["usage"]["input_token_details"]
    assert second_input["audio_tokens"] - first_input["audio_tokens"] == 1200 // 50
    assert_all_server_events_valid(server)


async def test_text_only_response(server: FakeRealtimeServer) -> None:
    async with client(server, "azure_preview") as raw:
        await raw.send({"type": "response.create", "response": {"modalities": ["text"]}})
        events = await raw.recv_until("response.done")
    assert not any(e["type"] == "response.audio.delta" for e in events)
    text = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
    assert text == server.reply_transcript
    assert server.sessions[0].sent_audio == b""
    assert_all_server_events_valid(server)


def transcribed_manual_turns(dialect: Dialect) -> dict[str, Any]:
    model = {"model": "gpt-4o-mini-transcribe"}
    if dialect == "ga":
        return {"type": "realtime", "audio": {"input": {"turn_detection": None,
                                                        "transcription": model}}}
    return {"turn_detection": None, "input_audio_transcription": model}


TRANSCRIPT_COMPLETED = "conversation.item.input_audio_transcription.completed"


@pytest.mark.parametrize("name", ["azure_ga", "azure_preview"])
async def test_input_transcripts_follow_each_commit_scripted_per_turn(
        server: FakeRealtimeServer, name: str) -> None:
    server.input_transcript = lambda turn: f"Question number {turn}."
    server.reply_duration_ms = 200
    async with client(server, name) as raw:
        await raw.session_update(transcribed_manual_turns(raw.dialect))
        for _ in range(2):
            await raw.append(pcm_tone(300))
            await raw.send({"type": "input_audio_buffer.commit"})
            await raw.send({"type": "response.create"})
            await raw.recv_until("response.done")
    session = server.sessions[0]
    transcripts = session.server_events_of(TRANSCRIPT_COMPLETED)
    assert [e["transcript"] for e in transcripts] == ["Question number 1.",
                                                      "Question number 2."]
    assert [e["item_id"] for e in transcripts] == [c.item_id for c in session.commits]
    # Undelayed, each comes with its commit, before the answer to it begins.
    kinds = session.server_event_types()
    first_answer = kinds.index("response.created")
    assert kinds.index(TRANSCRIPT_COMPLETED) < first_answer
    assert [(r.turn, r.transcript) for r in session.input_transcripts] == [
        (1, "Question number 1."), (2, "Question number 2.")]
    assert server.protocol_violations == []
    assert_all_server_events_valid(server)


async def test_a_delayed_input_transcript_comes_while_the_answer_streams(
        server: FakeRealtimeServer) -> None:
    server.input_transcript = "Stop."
    server.input_transcript_delay_ms = 300
    server.pace_factor = 1.0  # a 1.2 s answer streamed in real time
    async with client(server, "azure_ga") as raw:
        await raw.session_update(transcribed_manual_turns("ga"))
        await raw.append(pcm_tone(300))
        await raw.send({"type": "input_audio_buffer.commit"})
        committed_at = time.monotonic()
        await raw.send({"type": "response.create"})
        events = await raw.recv_until(TRANSCRIPT_COMPLETED)
        arrived_at = time.monotonic()
        await raw.send({"type": "response.cancel"})
        tail = await raw.recv_until("response.done")
    kinds = [e["type"] for e in events]
    assert kinds.index("response.created") < kinds.index("response.output_audio.delta")
    assert events[-1]["transcript"] == "Stop."
    assert events[-1]["item_id"] == server.sessions[0].commits[0].item_id
    assert 0.3 <= arrived_at - committed_at < 1.0
    assert tail[-1]["response"]["status"] == "cancelled"
    [record] = server.sessions[0].input_transcripts
    assert record.transcript == "Stop."
    assert_all_server_events_valid(server)


async def test_a_delayed_input_transcript_is_dropped_with_its_connection(
        server: FakeRealtimeServer) -> None:
    server.input_transcript_delay_ms = 400
    async with client(server, "azure_preview") as raw:
        await raw.session_update(transcribed_manual_turns("preview"))
        await raw.append(pcm_tone(300))
        await raw.send({"type": "input_audio_buffer.commit"})
        await raw.recv_until("input_audio_buffer.committed")
    await server.wait_for(lambda: server.sessions[0].closed)
    await asyncio.sleep(0.6)
    assert server.sessions[0].input_transcripts == []
    assert TRANSCRIPT_COMPLETED not in server.sessions[0].server_event_types()


async def test_commit_of_less_than_100_ms_is_an_error(server: FakeRealtimeServer) -> None:
    async with client(server, "azure_ga") as raw:
        await raw.session_update(manual_turns("ga"))
        await raw.append(pcm_tone(60))
        await raw.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
        error = (await raw.recv())["error"]
        await raw.append(pcm_tone(200))
        await raw.send({"type": "input_audio_buffer.clear"})
        assert (await raw.recv())["type"] == "input_audio_buffer.cleared"
        await raw.send({"type": "input_audio_buffer.commit"})
        after_clear = (await raw.recv())["error"]
    assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "c1")
    assert "60.00ms" in error["message"]
    assert after_clear["code"] == "input_audio_buffer_commit_empty"
    assert server.sessions[0].commits == []
    assert server.protocol_violations == []  # a timing mistake, not a malformed event
    assert_all_server_events_valid(server)


async def test_cancel_and_overlapping_response(server: FakeRealtimeServer) -> None:
    server.pace_factor = 1.0  # real time, so the response is surely still running
    server.reply_duration_ms = 5000
    async with client(server, "azure_ga") as raw:
        await raw.send({"type": "response.create"})
        await raw.recv_until("response.output_audio.delta")
        await raw.send({"type": "response.create", "event_id": "second"})
        busy = await raw.recv_until("error")
        await raw.send({"type": "response.cancel"})
        tail = await raw.recv_until("response.done")
        await raw.send({"type": "response.cancel", "event_id": "again"})
        not_active = (await raw.recv())["error"]
    assert busy[-1]["error"]["code"] == "conversation_already_has_active_response"
    assert busy[-1]["error"]["event_id"] == "second"
    done = tail[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    assert (not_active["code"], not_active["event_id"]) == ("response_cancel_not_active", "again")
    session = server.sessions[0]
    assert 0 < len(session.sent_audio) < 5000 * BYTES_PER_MS
    assert session.responses[0].status == "cancelled"
    assert session.response_count == 1
    assert server.protocol_violations == []
    assert_all_server_events_valid(server)


async def test_truncate_within_and_past_the_item_audio(server: FakeRealtimeServer) -> None:
    async with client(server, "azure_preview") as raw:
        await raw.send({"type": "response.create"})
        events = await raw.recv_until("response.done")
        item_id = events[-1]["response"]["output"][0]["id"]
        await raw.send({"type": "conversation.item.truncate", "item_id": item_id,
                        "content_index": 0, "audio_end_ms": 500})
        ok = await raw.recv()
        await raw.send({"type": "conversation.item.truncate", "item_id": item_id,
                        "content_index": 0, "audio_end_ms": 4000, "event_id": "t2"})
        overshoot_error, clamped = await raw.recv(), await raw.recv()
        await raw.send({"type": "conversation.item.truncate", "item_id": "item_missing",
                        "content_index": 0, "audio_end_ms": 10})
        missing = await raw.recv()
    assert ok == {**ok, "type": "conversation.item.truncated", "item_id": item_id,
                  "audio_end_ms": 500}
    assert overshoot_error["error"]["message"] == (
        "Audio content of 1200ms is already shorter than 4000ms")
    assert overshoot_error["error"]["event_id"] is None  # as the service reports it
    assert (clamped["type"], clamped["audio_end_ms"]) == ("conversation.item.truncated", 1200)
    assert missing["type"] == "error"
    truncates = server.sessions[0].truncates
    assert [(t.audio_end_ms, t.applied_ms, t.overshoot) for t in truncates] == [
        (500, 500, False), (4000, 1200, True)]
    assert server.protocol_violations == []
    assert_all_server_events_valid(server)


# --- server VAD -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "silence_ms"), [("azure_ga", 500), ("azure_preview", 200)])
async def test_server_vad_detects_the_turn_and_answers(server: FakeRealtimeServer, name: str,
                                                       silence_ms: int) -> None:
    speech = pcm_silence(300) + pcm_tone(600) + pcm_silence(800)
    async with client(server, name) as raw:
        await raw.append(speech)
        events = await raw.recv_until("response.done")
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                         "input_audio_buffer.committed"]
    started, stopped, committed = events[:3]
    assert started["audio_start_ms"] == 300
    assert stopped["audio_end_ms"] == 900
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert kinds.index("response.created") > kinds.index("conversation.item.created")
    session = server.sessions[0]
    [commit] = session.commits
    assert commit.by == "server_vad"
    # Committed: everything up to the frame that completed the silence (audio time).
    assert commit.duration_ms == 900 + silence_ms
    assert server.protocol_violations == []
    assert_all_server_events_valid(server)


async def test_server_vad_honours_silence_duration(server: FakeRealtimeServer) -> None:
    # A 600 ms pause inside the utterance: one turn at 700 ms silence, two at the 500 ms default.
    utterance = pcm_tone(300) + pcm_silence(600) + pcm_tone(300) + pcm_silence(900)
    server.reply_duration_ms = 200
    async with client(server, "openai_v1") as raw:
        await raw.session_update({"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": 700}}}})
        await raw.append(utterance)
        await raw.recv_until("response.done")
    async with client(server, "openai_v1") as raw:
        await raw.append(utterance)
        await raw.recv_until("response.done")
        await raw.recv_until("input_audio_buffer.committed")
    assert len(server.sessions[0].commits) == 1
    assert len(server.sessions[1].commits) == 2


async def test_server_vad_barge_in_cancels_the_response(server: FakeRealtimeServer) -> None:
    server.pace_factor = 1.0
    server.reply_duration_ms = 5000
    async with client(server, "azure_ga") as raw:
        await raw.send({"type": "response.create"})
        await raw.recv_until("response.output_audio.delta")
        await raw.append(pcm_tone(200))
        events = await raw.recv_until("response.done")
    assert events[-1]["response"]["status_details"]["reason"] == "turn_detected"
    assert "input_audio_buffer.speech_started" in [e["type"] for e in events]
    assert_all_server_events_valid(server)


async def test_turn_detection_null_means_manual_only(server: FakeRealtimeServer) -> None:
    async with client(server, "azure_preview") as raw:
        await raw.session_update(manual_turns("preview"))
        await raw.append(pcm_tone(600) + pcm_silence(1000))
        await raw.send({"type": "input_audio_buffer.commit"})
        events = await raw.recv_until("input_audio_buffer.committed")
    # Events are handled in order, so any VAD event would have come before the commit.
    assert [e["type"] for e in events] == ["input_audio_buffer.committed"]
    assert server.sessions[0].commits[0].by == "client"
    assert server.sessions[0].response_count == 0


# --- fault injection --------------------------------------------------------------------------


async def test_fault_drop_without_close_frame(server: FakeRealtimeServer) -> None:
    server.faults.drop_after_audio_deltas = 2
    async with client(server, "azure_ga") as raw:
        await raw.send({"type": "response.create"})
        with pytest.raises(ConnectionClosedError) as caught:
            await raw.recv_until("response.done")
    assert caught.value.rcvd is None  # no close frame
    assert [e["type"] for e in raw.received].count("response.output_audio.delta") == 2
    session = server.sessions[0]
    await server.wait_for(lambda: session.closed)
    assert session.dropped and session.close_code == 1006
    assert server.faults.drop_after_audio_deltas is None  # one-shot


async def test_fault_session_expiry(server: FakeRealtimeServer) -> None:
    async with client(server, "openai_v1") as raw:
        await server.expire_sessions(minutes=60)
        error = (await raw.recv())["error"]
        with pytest.raises(ConnectionClosed):
            await raw.recv()
        assert raw.websocket.close_code == 1001
    assert error["code"] == "session_expired"
    assert "60 minutes" in error["message"]
    await server.wait_for(lambda: server.sessions[0].closed)
    assert server.sessions[0].close_code == 1001


async def test_fault_no_session_created(server: FakeRealtimeServer) -> None:
    server.faults.skip_session_created = True
    async with client(server, "azure_preview", skip_created=True) as raw:
        await raw.send({"type": "session.update", "session": {"instructions": "Hi."}})
        assert (await raw.recv())["type"] == "session.updated"


async def test_fault_malformed_json_then_normal_response(server: FakeRealtimeServer) -> None:
    server.faults.malformed_json_before_response = True
    async with client(server, "azure_ga") as raw:
        await raw.send({"type": "response.create"})
        broken = await raw.websocket.recv()
        with pytest.raises(json.JSONDecodeError):
            json.loads(broken)
        assert (await raw.recv())["type"] == "response.created"
        await raw.recv_until("response.done")
        await server.send_raw("[[[")
        assert await raw.websocket.recv() == "[[["


async def test_fault_error_instead_of_response(server: FakeRealtimeServer) -> None:
    server.faults.error_instead_of_response = InjectedError(
        "server_error", "The server had an error while processing your request.")
    async with client(server, "azure_ga") as raw:
        await raw.send({"type": "response.create", "event_id": "r1"})
        error = (await raw.recv())["error"]
        await raw.send({"type": "response.create"})
        assert (await raw.recv())["type"] == "response.created"
        await raw.recv_until("response.done")
    assert (error["type"], error["code"], error["event_id"]) == ("server_error", "server_error",
                                                                 "r1")
    assert server.sessions[0].response_count == 1
    assert_all_server_events_valid(server)


async def test_fault_delayed_session_updated(server: FakeRealtimeServer) -> None:
    server.faults.session_updated_delay_s = 0.3
    async with client(server, "azure_ga") as raw:
        started = time.monotonic()
        await raw.session_update({"type": "realtime"})
        assert time.monotonic() - started >= 0.3


async def test_fault_handshake_status(server: FakeRealtimeServer) -> None:
    server.faults.reject_handshake_status = 503
    server.faults.reject_handshake_times = 1
    _, headers, _ = ENDPOINTS["azure_ga"]
    assert await expect_status(server, endpoint_path("azure_ga"), headers) == 503
    async with client(server, "azure_ga"):
        pass
    assert [r.status for r in server.rejected_handshakes] == [503]


async def test_openai_beta_header_is_refused_with_4000(server: FakeRealtimeServer) -> None:
    async with client(server, "openai_v1", skip_created=True,
                      extra_headers={"OpenAI-Beta": "realtime=v1"}) as raw:
        error = (await raw.recv())["error"]
        with pytest.raises(ConnectionClosed):
            await raw.recv()
        assert raw.websocket.close_code == 4000
    assert error["code"] == "beta_api_shape_disabled"
    assert "session.created" not in server.sessions[0].server_event_types()


# --- TLS, threads, secrets --------------------------------------------------------------------


async def test_wss_with_a_trusted_ca_and_rejection_without() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with FakeRealtimeServer(api_key=KEY, ssl=server_context) as fake:
        assert fake.url_base.startswith("https://127.0.0.1:")
        url = fake.ws_url_base + endpoint_path("azure_ga")
        async with connect(url, additional_headers={"api-key": KEY}, ssl=client_context,
                           logger=_client_log) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(url, additional_headers={"api-key": KEY},
                               ssl=ssl.create_default_context(), logger=_client_log):
                pass
    assert len(fake.sessions) == 1


def test_start_in_thread_serves_a_blocking_client() -> None:
    fake = FakeRealtimeServer(api_key=KEY)
    with fake.start_in_thread() as handle:
        url = handle.ws_url_base + endpoint_path("azure_ga")
        with sync_connect(url, additional_headers={"api-key": KEY}, logger=_client_log,
                          max_queue=None) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
            ws.send(json.dumps({"type": "response.create"}))
            handle.wait_for(lambda: fake.sessions[0].response_count == 1 and
                            fake.sessions[0].responses[0].status == "completed")
            handle.expire_sessions()
            kinds = []
            with pytest.raises(ConnectionClosed):
                while True:
                    kinds.append(json.loads(ws.recv(timeout=5))["type"])
        assert kinds[-1] == "error" and "response.done" in kinds
        assert handle.call(lambda: fake.sessions[0].close_code) == 1001
    assert not handle._thread.is_alive()


async def test_api_key_never_logged(server: FakeRealtimeServer,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with client(server, "azure_preview") as raw:
        await raw.send({"type": "bogus.event"}, check=False)
        await raw.recv()
    await expect_status(server, f"/openai/v1/realtime?model={AZURE}&api-key=sk-wrong", {})
    await server.wait_for(lambda: server.sessions[0].closed)
    assert "session 0 opened" in caplog.text  # the fake's logging was captured
    assert "protocol violation" in caplog.text
    assert KEY not in caplog.text and "sk-wrong" not in caplog.text
    assert server.sessions[0].headers["api-key"] == "<redacted>"


# --- the validators themselves ----------------------------------------------------------------


GA_SPEAKER_UPDATE: dict[str, Any] = {"type": "session.update", "session": {
    "type": "realtime", "output_modalities": ["audio"], "instructions": "Answer briefly.",
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                        "noise_reduction": {"type": "far_field"},
                        "transcription": {"model": "gpt-4o-mini-transcribe"},
                        "turn_detection": {"type": "server_vad", "threshold": 0.6,
                                           "silence_duration_ms": 500}},
              "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}},
    "tools": [{"type": "function", "name": "set_timer", "description": "Start a timer",
               "parameters": {"type": "object", "properties": {"seconds": {"type": "integer"}},
                              "required": ["seconds"]}}]}}


@pytest.mark.parametrize(("dialect", "event", "expected"), [
    ("ga", GA_SPEAKER_UPDATE, []),
    ("preview", {"type": "session.update", "session": {
        "modalities": ["audio", "text"], "voice": "alloy", "input_audio_format": "pcm16",
        "turn_detection": None}}, []),
    ("ga", {"type": "session.update", "session": {"type": "realtime", "temperature": 0.8}},
     ["unknown_parameter: Unknown parameter: 'session.temperature'."]),
    ("preview", {"type": "session.update", "session": {"temperature": 2.0}},
     ["invalid_value: Invalid 'session.temperature': expected a value between 0.6 and 1.2,"
      " but got 2.0 instead."]),
    ("preview", {"type": "session.update", "session": {"input_audio_format": "g711-ulaw"}},
     ["invalid_value"]),
    ("ga", {"type": "session.update", "session": {"type": "realtime",
                                                  "output_modalities": ["audio", "text"]}},
     ["invalid_value"]),
    ("ga", {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0},
     ["missing_required_parameter: Missing required parameter: 'audio_end_ms'."]),
    ("ga", {"type": "input_audio_buffer.append", "audio": "not base64!"},
     ["invalid_value: Invalid value for 'audio': not valid base64."]),
])
def test_validate_client_event(dialect: Dialect, event: dict[str, Any],
                               expected: list[str]) -> None:
    problems = validate_client_event(dialect, event)
    if expected == ["invalid_value"]:  # the wording comes from pydantic; the code is ours
        assert len(problems) == 1 and problems[0].startswith("invalid_value")
    else:
        assert problems == expected


@pytest.mark.parametrize(("dialect", "wrong_dialect_event"), [
    ("ga", "response.audio.delta"), ("preview", "response.output_audio.delta")])
def test_validate_server_event_splits_dialects(dialect: Dialect,
                                               wrong_dialect_event: str) -> None:
    ids = {"event_id": "event_1", "response_id": "resp_1", "item_id": "item_1",
           "output_index": 0, "content_index": 0, "delta": "AAAA"}
    assert validate_server_event(dialect, {"type": wrong_dialect_event, **ids}) != []
    right = "response.output_audio.delta" if dialect == "ga" else "response.audio.delta"
    assert validate_server_event(dialect, {"type": right, **ids}) == []
    assert validate_server_event(dialect, {"type": right, **ids, "extra": 1}) == [
        "unknown_parameter: Unknown parameter: 'extra'."]


# --- function calls ---------------------------------------------------------------------------

TOOLS = [
    {"type": "function", "name": "get_time", "description": "The local time in a time zone.",
     "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                    "required": ["zone"]}},
    {"type": "function", "name": "set_timer", "description": "Start a kitchen timer.",
     "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"},
                                                     "label": {"type": "string"}}}},
]
TWO_CALLS = [("get_time", '{"zone": "Europe/Berlin"}'),
             ("set_timer", '{"minutes": 10, "label": "the pasta water is boiling"}')]


def with_tools(dialect: Dialect, tools: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "realtime", "tools": tools} if dialect == "ga" else {"tools": tools}


def call_events(dialect: Dialect, deltas: int) -> list[str]:
    """One function call's events, in the order the service sends them."""
    ga = dialect == "ga"
    return ["response.output_item.added", "conversation.item.created",
            *(["conversation.item.added"] if ga else []),
            *["response.function_call_arguments.delta"] * deltas,
            "response.function_call_arguments.done",
            *(["conversation.item.done"] if ga else []),
            "response.output_item.done"]


def output_item_create(call_id: str, output: str, **extra: Any) -> dict[str, Any]:
    return {"type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
            **extra}


@pytest.mark.parametrize("name", ["azure_ga", "azure_preview"])
async def test_a_scripted_response_makes_two_function_calls(server: FakeRealtimeServer,
                                                            name: str) -> None:
    server.function_calls = [list(TWO_CALLS)]
    async with client(server, name) as raw:
        await raw.session_update(with_tools(raw.dialect, TOOLS))
        await raw.send({"type": "response.create"})
        events = await raw.recv_until("response.done")
    kinds = [e["type"] for e in events]
    deltas = [[e for e in events if e["type"] == "response.function_call_arguments.delta"
               and e["output_index"] == index] for index in (0, 1)]
    assert all(len(d) >= 2 for d in deltas)
    assert kinds == ["response.created", "rate_limits.updated",
                     *call_events(raw.dialect, len(deltas[0])),
                     *call_events(raw.dialect, len(deltas[1])), "response.done"]
    assert not any("audio" in kind or "content_part" in kind for kind in kinds)
    response_id = events[0]["response"]["id"]
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    finished = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    done = events[-1]["response"]
    for index, (function, arguments) in enumerate(TWO_CALLS):
        assert (added[index]["type"], added[index]["status"]) == ("function_call", "in_progress")
        assert (added[index]["name"], added[index]["arguments"]) == (function, "")
        call_id, item_id = added[index]["call_id"], added[index]["id"]
        assert call_id.startswith("call_")
        assert "".join(e["delta"] for e in deltas[index]) == arguments
        assert all((e["call_id"], e["item_id"], e["response_id"]) == (call_id, item_id,
                                                                       response_id)
                   for e in deltas[index])
        assert (finished[index]["call_id"], finished[index]["item_id"],
                finished[index]["output_index"], finished[index]["arguments"]) == (
            call_id, item_id, index, arguments)
        assert finished[index].get("name") == (function if raw.dialect == "ga" else None)
        assert items[index] == {**added[index], "status": "completed", "arguments": arguments}
    assert added[0]["call_id"] != added[1]["call_id"]
    assert (done["status"], done["output"]) == ("completed", items)
    session = server.sessions[0]
    assert session.tools == TOOLS
    assert session.function_calls_made == [
        {"call_id": item["call_id"], "name": item["name"], "arguments": item["arguments"],
         "response_id": response_id} for item in items]
    assert session.responses[0].kind == "function_calls"
    assert session.responses[0].call_ids == [item["call_id"] for item in items]
    assert session.sent_audio == b""
    assert server.function_calls == []
    assert server.protocol_violations == []
    assert_all_server_events_valid(server)


@pytest.mark.parametrize("name", ["azure_ga", "azure_preview"])
async def test_function_outputs_are_recorded_and_the_reply_follows(server: FakeRealtimeServer,
                                                                   name: str) -> None:
    server.function_calls = [list(TWO_CALLS)]
    server.reply_pcm = bytes(range(200)) * 48
    server.reply_transcript = lambda turn: f"Answer {turn}."
    async with client(server, name) as raw:
        await raw.session_update(with_tools(raw.dialect, TOOLS))
        await raw.send({"type": "response.create"})
        calls = [e["item"] for e in await raw.recv_until("response.done")
                 if e["type"] == "response.output_item.done"]
        await raw.send(output_item_create(calls[0]["call_id"], '{"time": "16:20"}',
                                          previous_item_id=calls[1]["id"]))
        first = await raw.recv_until("conversation.item.created")
        await raw.send(output_item_create(calls[1]["call_id"], ""))
        second = await raw.recv_until("conversation.item.created")
        await raw.send({"type": "response.create"})
        reply = await raw.recv_until("response.done")
    for created, call in zip((first[-1], second[-1]), calls, strict=True):
        item = created["item"]
        assert (item["type"], item["call_id"], item["status"]) == (
            "function_call_output", call["call_id"], "completed")
    assert first[-1]["previous_item_id"] == calls[1]["id"]
    assert audio_delta_type(raw.dialect) in [e["type"] for e in reply]
    done = reply[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["type"] == "message"
    assert done["output"][0]["content"][0]["transcript"] == "Answer 1."  # the turn's reply
    session = server.sessions[0]
    assert session.function_outputs == [
        {"call_id": calls[0]["call_id"], "output": '{"time": "16:20"}'},
        {"call_id": calls[1]["call_id"], "output": ""}]
    assert [r.kind for r in session.responses] == ["function_calls", "reply"]
    assert bytes(session.responses[1].audio) == server.reply_pcm
    if raw.dialect == "ga":  # GA adds and finishes the output item like any other
        later = [e["type"] for e in raw.received if e["type"].startswith("conversation.item.")]
        assert later.count("conversation.item.done") >= 4
    assert server.protocol_violations == []
    assert_all_server_events_valid(server)


@pytest.mark.parametrize("name", ["azure_ga", "azure_preview"])
async def test_an_unknown_or_answered_call_id_is_refused(server: FakeRealtimeServer,
                                                         name: str) -> None:
    server.function_calls = [[("get_time", '{"zone": "UTC"}')]]
    async with client(server, name) as raw:
        await raw.session_update(with_tools(raw.dialect, TOOLS[:1]))
        await raw.send(output_item_create("call_never_issued", "x", event_id="before"))
        before = (await raw.recv_until("error"))[-1]["error"]
        await raw.send({"type": "response.create"})
        [call] = [e["item"] for e in await raw.recv_until("response.done")
                  if e["type"] == "response.output_item.done"]
        await raw.send(output_item_create("call_made_up", "x", event_id="unknown"))
        unknown = (await raw.recv_until("error"))[-1]["error"]
        await raw.send(output_item_create(call["call_id"], "12:00"))
        await raw.recv_until("conversation.item.created")
        await raw.send(output_item_create(call["call_id"], "12:01", event_id="repeat"))
        repeated = (await raw.recv_until("error"))[-1]["error"]
    for error, event_id in ((before, "before"), (unknown, "unknown"), (repeated, "repeat")):
        assert (error["type"], error["code"], error["param"], error["event_id"]) == (
            "invalid_request_error", "invalid_value", "item.call_id", event_id)
    assert "already has an output" in repeated["message"]
    session = server.sessions[0]
    assert session.function_outputs == [{"call_id": call["call_id"], "output": "12:00"}]
    assert [v.event["event_id"] for v in server.protocol_violations] == [
        "before", "unknown", "repeat"]
    assert all(v.problems[0].startswith("invalid_value") for v in server.protocol_violations)
    assert_all_server_events_valid(server)


@pytest.mark.parametrize("name", ["azure_ga", "azure_preview"])
@pytest.mark.parametrize(("tool", "code", "param"), [
    ({**TOOLS[0], "strict": True}, "unknown_parameter", "session.tools[0].strict"),
    ({**TOOLS[0], "parameters": {"type": "string"}}, "invalid_value",
     "session.tools[0].parameters.type"),
    ({**TOOLS[0], "parameters": {"properties": {}}}, "invalid_value",
     "session.tools[0].parameters.type"),
    ({**TOOLS[0], "parameters": "zone: str"}, "invalid_type", "session.tools[0].parameters"),
    ({k: v for k, v in TOOLS[0].items() if k != "name"}, "missing_required_parameter",
     "session.tools[0].name"),
    ({k: v for k, v in TOOLS[0].items() if k != "type"}, "missing_required_parameter",
     "session.tools[0].type"),
    ({**TOOLS[0], "name": "get time"}, "invalid_value", "session.tools[0].name"),
])
async def test_an_invalid_tool_declaration_refuses_the_update(
        server: FakeRealtimeServer, name: str, tool: dict[str, Any], code: str,
        param: str) -> None:
    async with client(server, name) as raw:
        await raw.send({"type": "session.update", "event_id": "tools",
                        "session": with_tools(raw.dialect, [tool])}, check=False)
        error = (await raw.recv())["error"]
        await raw.session_update(with_tools(raw.dialect, TOOLS[1:]))  # still usable
    assert (error["type"], error["code"], error["param"], error["event_id"]) == (
        "invalid_request_error", code, param, "tools")
    [violation] = server.protocol_violations
    assert violation.event["event_id"] == "tools"
    assert server.sessions[0].tools == TOOLS[1:]


@pytest.mark.parametrize("dialect", ["ga", "preview"])
def test_function_call_output_items_are_checked_strictly(dialect: Dialect) -> None:
    good = output_item_create("call_1", "done", previous_item_id="item_1")
    assert validate_client_event(dialect, good) == []
    extra = output_item_create("call_1", "done")
    extra["item"]["role"] = "user" if dialect == "preview" else None
    extra["item"]["bogus"] = 1
    problems = validate_client_event(dialect, extra)
    assert any("item.bogus" in p for p in problems), problems
    missing = {"type": "conversation.item.create",
               "item": {"type": "function_call_output", "output": "done"}}
    assert validate_client_event(dialect, missing) == [
        "missing_required_parameter: Missing required parameter: 'item.call_id'."]
    not_text = output_item_create("call_1", {"time": "16:20"})  # type: ignore[arg-type]
    assert validate_client_event(dialect, not_text) != []


@pytest.mark.parametrize("name", ["azure_ga", "azure_preview"])
async def test_a_cancelled_function_call_response_ends_cancelled(server: FakeRealtimeServer,
                                                                 name: str) -> None:
    server.pace_factor = 0.5  # 200 ms after each arguments delta
    long_arguments = json.dumps({"label": "x" * 200, "minutes": 10})
    server.function_calls = [[("set_timer", long_arguments), ("get_time", "{}")]]
    async with client(server, name) as raw:
        await raw.send({"type": "response.create"})
        await raw.recv_until("response.function_call_arguments.delta")
        await raw.send({"type": "response.cancel"})
        tail = await raw.recv_until("response.done")
    done = tail[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    [item] = done["output"]  # the second call never started
    assert (item["type"], item["status"]) == ("function_call", "incomplete")
    assert len(item["arguments"]) < len(long_arguments)
    session = server.sessions[0]
    assert session.responses[0].status == "cancelled"
    assert [c["arguments"] for c in session.function_calls_made] == [item["arguments"]]
    assert server.protocol_violations == []
    assert_all_server_events_valid(server)


async def test_server_vad_answers_a_turn_with_the_scripted_calls(
        server: FakeRealtimeServer) -> None:
    server.function_calls = [[("get_time", '{"zone": "UTC"}')]]
    async with client(server, "azure_ga") as raw:
        await raw.append(pcm_tone(600) + pcm_silence(800))
        events = await raw.recv_until("response.done")
    done = events[-1]["response"]
    assert [i["type"] for i in done["output"]] == ["function_call"]
    assert audio_delta_type("ga") not in [e["type"] for e in events]
    assert server.sessions[0].function_calls_made[0]["name"] == "get_time"
    assert_all_server_events_valid(server)
