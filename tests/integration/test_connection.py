"""The WebSocket adapter against real sockets on loopback: the protocol-faithful fake service for
both dialects and every vendor path, plain and TLS, and a few scripted peers for the transport
edge cases the fake does not stage (bare close codes, a peer that never answers the close).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve

from support.fake_realtime import FakeRealtimeServer, InjectedClose
from talkbox.config import RealtimeConfig, parse_config
from talkbox.core.events import (
    AppendAudio,
    AudioDelta,
    CommitAudio,
    CreateResponse,
    CreateUserText,
    ResponseDone,
    ServerError,
    ServerEvent,
    SessionSettings,
    SessionUpdate,
    TurnDetection,
)
from talkbox.errors import (
    ConnectFailed,
    ConnectionDropped,
    HandshakeRejected,
    RealtimeError,
    ServerErrorEvent,
    SessionExpired,
    SessionSetupTimeout,
)
from talkbox.realtime.connection import RealtimeSession, open_session
from talkbox.realtime.endpoint import Endpoint, endpoint_for, session_settings_for
from talkbox.realtime.protocol import Dialect
from talkbox.secrets import ApiKey

API_KEY = "sk-fake-realtime-key-0123456789"
KEY_SOURCE = "TALKBOX_API_KEY"  # where the daemon found the key, as secrets.py names it
SETTINGS = SessionSettings(
    voice="echo",
    instructions="Be brief.",
    temperature=0.9,
    transcription_model="whisper-1",
    noise_reduction="far_field",
    turn_detection=TurnDetection(kind="local"),
)
FLAVOURS = ["azure-ga", "azure-preview", "openai"]
# A bound for "returned promptly" that no healthy machine misses, yet far below the
# library defaults (10 s open/close timeouts) that these tests guard against.
PROMPTLY = 3.0


def endpoint_of(url_base: str, flavour: str, key: str = API_KEY) -> Endpoint:
    if flavour == "azure-ga":
        cfg = RealtimeConfig(
            provider="azure", endpoint=url_base, deployment="gpt-realtime", api_version=""
        )
    elif flavour == "azure-preview":
        cfg = RealtimeConfig(
            provider="azure",
            endpoint=url_base,
            deployment="gpt-4o-realtime-preview",
            api_version="2024-10-01-preview",
        )
    else:
        cfg = RealtimeConfig(provider="openai", endpoint=f"{url_base}/v1", model="gpt-realtime")
    return endpoint_for(cfg, ApiKey(key, KEY_SOURCE))


async def connect(
    endpoint: Endpoint, *, ssl_context: ssl.SSLContext | None = None, close_timeout: float = 2.0
) -> RealtimeSession:
    """open_session with this file's settings and timeouts far beyond any healthy set-up."""
    return await open_session(
        endpoint,
        SETTINGS,
        ssl_context=ssl_context,
        connect_timeout=5.0,
        setup_timeout=5.0,
        close_timeout=close_timeout,
    )


async def ask_for_a_response(session: RealtimeSession) -> None:
    await session.send(AppendAudio(b"\x00\x00" * 2400))  # 100 ms, the minimum commit
    await session.send(CommitAudio())
    await session.send(CreateUserText("What time is it?"))
    await session.send(CreateResponse())


async def events_until_done(session: RealtimeSession) -> list[ServerEvent]:
    seen: list[ServerEvent] = []
    async with aclosing(session.events()) as events:
        async for event in events:
            seen.append(event)
            if isinstance(event, ResponseDone):
                break
    return seen


# --- the happy path, every way in ----------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_set_up_then_a_response_streams_audio(flavour: str) -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        endpoint = endpoint_of(server.url_base, flavour)
        async with await connect(endpoint) as session:
            recorded = server.sessions[0]
            assert recorded.dialect == ("preview" if flavour == "azure-preview" else "ga")
            assert session.session_info.session_id == recorded.session_id
            assert session.session_info.model == recorded.model
            # The service took our settings before open_session returned.
            assert recorded.client_events_of("session.update")
            assert "session.updated" in recorded.server_event_types()

            await ask_for_a_response(session)
            events = await events_until_done(session)

        deltas = [e.pcm for e in events if isinstance(e, AudioDelta)]
        assert len(deltas) > 1
        assert b"".join(deltas) == bytes(recorded.sent_audio)
        done = events[-1]
        assert isinstance(done, ResponseDone) and done.status == "completed"
        assert done.usage is not None and done.usage.output_audio_tokens > 0
        assert server.protocol_violations == []
        assert (session.decoder.unknown_events, session.decoder.malformed_events) == (0, 0)
        await server.wait_for(lambda: recorded.closed)
        assert recorded.close_code == 1000


async def test_session_settings_reach_the_service_in_each_dialect() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        for flavour in ("azure-ga", "azure-preview"):
            async with await connect(endpoint_of(server.url_base, flavour)):
                pass
        ga, preview = server.sessions[0].session, server.sessions[1].session
    assert ga["audio"]["output"]["voice"] == "echo"
    assert ga["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert ga["audio"]["input"]["turn_detection"] is None
    assert preview["voice"] == "echo"
    assert preview["temperature"] == 0.9
    assert preview["turn_detection"] is None
    assert server.protocol_violations == []


@pytest.mark.parametrize(
    ("api_version", "sent_flags"),
    [
        ("2024-10-01-preview", set()),
        ("2025-04-01-preview", {"create_response", "interrupt_response"}),
    ],
)
async def test_server_vad_from_the_config_is_accepted_by_each_preview_version(
    api_version: str, sent_flags: set[str]
) -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        cfg = parse_config(
            f'[realtime]\nprovider = "azure"\nendpoint = "{server.url_base}"\n'
            f'deployment = "gpt-4o-realtime-preview"\napi_version = "{api_version}"\n'
            '[turn]\ndetection = "server_vad"\n',
            "test",
        )
        endpoint = endpoint_for(cfg.realtime, ApiKey(API_KEY, "test"))
        session = await open_session(
            endpoint, session_settings_for(cfg), connect_timeout=5.0, setup_timeout=5.0
        )
        await session.close()
        update = next(e for e in server.sessions[0].client_events if e["type"] == "session.update")
    assert server.protocol_violations == []
    plain = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}
    assert set(update["session"]["turn_detection"]) == plain | sent_flags


async def test_a_malformed_frame_mid_stream_is_counted_and_skipped() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        server.faults.malformed_json_before_response = True
        async with await connect(endpoint_of(server.url_base, "azure-ga")) as session:
            await ask_for_a_response(session)
            events = await events_until_done(session)
    assert isinstance(events[-1], ResponseDone)
    assert session.decoder.malformed_events == 1


async def test_the_api_key_never_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("talkbox.realtime.wire").setLevel(logging.DEBUG)
        try:
            async with FakeRealtimeServer(api_key=API_KEY) as server:
                endpoint = endpoint_of(server.url_base, "openai")
                async with await connect(endpoint) as session:
                    await ask_for_a_response(session)
                    await events_until_done(session)
                with pytest.raises(HandshakeRejected) as rejected:
                    await connect(endpoint_of(server.url_base, "openai", key=API_KEY[::-1]))
        finally:
            logging.getLogger("talkbox.realtime.wire").setLevel(logging.NOTSET)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert caplog.records  # debug logging really was on
    assert API_KEY not in logged and API_KEY[::-1] not in logged
    assert API_KEY[::-1] not in str(rejected.value)


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def test_wss_with_a_trusted_ca(
    certificate_authority: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    client_tls = ssl.create_default_context()
    certificate_authority.configure_trust(client_tls)
    async with FakeRealtimeServer(api_key=API_KEY, ssl=server_tls) as server:
        endpoint = endpoint_of(server.url_base, "azure-ga")
        assert endpoint.url.startswith("wss://127.0.0.1:")
        async with await connect(endpoint, ssl_context=client_tls) as session:
            await ask_for_a_response(session)
            events = await events_until_done(session)
    assert any(isinstance(e, AudioDelta) for e in events)


async def test_wss_with_the_system_trust_store_rejects_an_unknown_ca(
    server_tls: ssl.SSLContext,
) -> None:
    async with FakeRealtimeServer(api_key=API_KEY, ssl=server_tls) as server:
        with pytest.raises(ConnectFailed, match="certificate") as raised:
            await connect(endpoint_of(server.url_base, "azure-ga"))
        assert server.sessions == []
    assert raised.value.retryable


# --- failing to connect -------------------------------------------------------------------------


async def test_refused_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there now (bound, never listened, closed).
    endpoint = endpoint_of(f"http://127.0.0.1:{port}", "azure-ga")
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match="refused") as raised:
        await connect(endpoint)
    assert time.monotonic() - started < PROMPTLY
    assert "realtime.endpoint" in str(raised.value)


async def test_a_peer_that_never_answers_the_upgrade_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # swallow the request, answer nothing, until the client leaves
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ConnectFailed, match=r"within 0\.5 s"):
            await open_session(
                endpoint_of(f"http://127.0.0.1:{port}", "openai"),
                SETTINGS,
                connect_timeout=0.5,
                setup_timeout=5.0,
            )
        assert time.monotonic() - started < PROMPTLY


async def test_wrong_key_is_401_and_not_retryable() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        for flavour in FLAVOURS:
            endpoint = endpoint_of(server.url_base, flavour, key="sk-wrong-key-000000000000")
            with pytest.raises(HandshakeRejected) as raised:
                await connect(endpoint)
            assert raised.value.status == 401
            assert not raised.value.retryable
            # The advice names where this key came from, not a key file it never came from.
            assert f"check the key from {KEY_SOURCE}" in str(raised.value)
            assert "api_key_file" not in str(raised.value)


async def test_unknown_deployment_is_404_naming_the_setting() -> None:
    async with FakeRealtimeServer(api_key=API_KEY, deployments={"other"}) as server:
        with pytest.raises(HandshakeRejected) as raised:
            await connect(endpoint_of(server.url_base, "azure-ga"))
    assert raised.value.status == 404
    assert not raised.value.retryable
    message = str(raised.value)
    assert "realtime.deployment" in message
    assert "The API deployment 'gpt-realtime' does not exist." in message  # the service's words


async def test_rate_limited_handshake_is_retryable() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        server.faults.reject_handshake_status = 429
        with pytest.raises(HandshakeRejected) as raised:
            await connect(endpoint_of(server.url_base, "openai"))
    assert raised.value.status == 429
    assert raised.value.retryable


# --- failing during set-up ------------------------------------------------------------------------


async def test_no_session_created_times_out_and_closes_the_socket() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        server.faults.skip_session_created = True
        started = time.monotonic()
        with pytest.raises(SessionSetupTimeout, match=r"no session\.created within 0.5 s"):
            await open_session(
                endpoint_of(server.url_base, "azure-ga"),
                SETTINGS,
                connect_timeout=5.0,
                setup_timeout=0.5,
            )
        assert time.monotonic() - started < PROMPTLY
        await server.wait_for(lambda: server.sessions[0].closed)


async def test_slow_session_updated_times_out() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        server.faults.session_updated_delay_s = 1.0
        with pytest.raises(SessionSetupTimeout, match=r"session\.updated"):
            await open_session(
                endpoint_of(server.url_base, "azure-preview"),
                SETTINGS,
                connect_timeout=5.0,
                setup_timeout=0.5,
            )


async def test_session_shape_of_the_wrong_dialect_is_an_error_during_set_up() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        right = endpoint_of(server.url_base, "azure-ga")
        mixed_up = Endpoint(right.url, right.headers, Dialect.PREVIEW, right.description)
        with pytest.raises(ServerErrorEvent) as raised:
            await connect(mixed_up)
    assert raised.value.code  # the service's code, e.g. missing_required_parameter
    assert "realtime.api_version" in str(raised.value)


async def test_error_event_during_set_up_carries_its_code() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        server.faults.session_updated_delay_s = 1.0
        opening = asyncio.create_task(connect(endpoint_of(server.url_base, "openai")))
        session = await server.wait_for_session()
        await server.wait_for(lambda: bool(session.client_events_of("session.update")))
        error = {
            "type": "error",
            "event_id": "event_x",
            "error": {
                "type": "server_error",
                "code": "server_error",
                "message": "The server had an error while processing your request.",
                "param": None,
                "event_id": None,
            },
        }
        await server.send_raw(json.dumps(error))
        with pytest.raises(ServerErrorEvent) as raised:
            await opening
    assert raised.value.code == "server_error"
    assert raised.value.error_type == "server_error"
    assert raised.value.retryable
    assert "The server had an error" in str(raised.value)


async def test_retired_beta_shape_is_refused_with_a_hint() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        endpoint = endpoint_of(server.url_base, "openai")
        beta = Endpoint(
            endpoint.url,
            {**endpoint.headers, "OpenAI-Beta": "realtime=v1"},
            Dialect.PREVIEW,
            endpoint.description,
        )
        with pytest.raises(ServerErrorEvent) as raised:
            await connect(beta)
    assert raised.value.code == "beta_api_shape_disabled"
    assert not raised.value.retryable


@pytest.mark.parametrize("flavour", ["azure-ga", "openai"])
async def test_close_4000_on_ga_names_the_refused_request_not_api_version(flavour: str) -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        session = await connect(endpoint_of(server.url_base, flavour))
        server.faults.close_after_session_updated = InjectedClose(
            4000, "invalid_request_error.unknown_parameter"
        )
        # A second session.update is what makes the service close this time.
        await session.send(SessionUpdate(SETTINGS))
        with pytest.raises(ServerErrorEvent) as raised:
            async for _ in session.events():
                pass
        await session.close()
    message = str(raised.value)
    assert raised.value.code == "unknown_parameter"
    assert raised.value.error_type == "invalid_request_error"
    assert not raised.value.retryable
    assert "invalid_request_error.unknown_parameter" in message
    assert "api_version" not in message  # GA already: removing it is no advice at all
    assert "realtime.deployment (Azure) or realtime.model (OpenAI)" in message


async def test_close_4000_on_the_preview_path_advises_the_ga_protocol() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        session = await connect(endpoint_of(server.url_base, "azure-preview"))
        server.faults.close_after_session_updated = InjectedClose(
            4000, "invalid_request_error.beta_api_shape_disabled"
        )
        await session.send(SessionUpdate(SETTINGS))
        with pytest.raises(ServerErrorEvent) as raised:
            async for _ in session.events():
                pass
        await session.close()
    assert raised.value.code == "beta_api_shape_disabled"
    assert 'set realtime.api_version = ""' in str(raised.value)


# --- the session ending ---------------------------------------------------------------------------


async def test_drop_without_close_frame_mid_response_is_connection_dropped() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        server.faults.drop_after_audio_deltas = 2
        session = await connect(endpoint_of(server.url_base, "openai"))
        await ask_for_a_response(session)
        deltas = 0
        with pytest.raises(ConnectionDropped, match="without a close frame"):
            async for event in session.events():
                deltas += isinstance(event, AudioDelta)
        assert deltas == 2
        started = time.monotonic()
        await session.close()  # on a dead socket: quick and quiet
        assert time.monotonic() - started < PROMPTLY


@pytest.mark.parametrize("flavour", ["azure-ga", "azure-preview"])
async def test_session_expiry_is_session_expired(flavour: str) -> None:
    async with (
        FakeRealtimeServer(api_key=API_KEY) as server,
        await connect(endpoint_of(server.url_base, flavour)) as session,
    ):
        await server.expire_sessions(minutes=30)
        with pytest.raises(SessionExpired, match="30 minutes") as raised:
            async for _ in session.events():
                pass
    assert raised.value.retryable


async def test_events_end_quietly_after_our_own_close() -> None:
    async with FakeRealtimeServer(api_key=API_KEY) as server:
        session = await connect(endpoint_of(server.url_base, "azure-ga"))

        async def collect() -> list[ServerEvent]:
            return [event async for event in session.events()]

        collecting = asyncio.create_task(collect())
        await asyncio.sleep(0.05)  # let it wait in recv()
        await session.close()
        assert await asyncio.wait_for(collecting, PROMPTLY) == []
        with pytest.raises(RealtimeError, match="already closed"):
            await session.send(CommitAudio())
        await session.close()  # idempotent
        await server.wait_for(lambda: server.sessions[0].close_code == 1000)


# --- transport edge cases the fake does not stage: a scripted peer -------------------------------

AfterSetUp = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def scripted_peer(after_set_up: AfterSetUp) -> AsyncIterator[Endpoint]:
    """A bare WebSocket peer that does the set-up handshake, then runs `after_set_up`."""

    async def handler(websocket: ServerConnection) -> None:
        session: dict[str, Any] = {"id": "sess_scripted", "model": "scripted"}
        await websocket.send(json.dumps({"type": "session.created", "session": session}))
        update = json.loads(await websocket.recv())
        await websocket.send(json.dumps({"type": "session.updated", "session": update["session"]}))
        await after_set_up(websocket)

    async with serve(handler, "127.0.0.1", 0, close_timeout=0.5) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield Endpoint(f"ws://127.0.0.1:{port}/", {}, Dialect.GA, "the scripted peer")


async def next_event_error(after_set_up: AfterSetUp) -> BaseException:
    async with scripted_peer(after_set_up) as endpoint, await connect(endpoint) as session:
        assert session.session_info.session_id == "sess_scripted"
        with pytest.raises(RealtimeError) as raised:
            async for _ in session.events():
                pass
    return raised.value


def closing_with(code: int, reason: str) -> AfterSetUp:
    async def close(websocket: ServerConnection) -> None:
        await websocket.close(code, reason)

    return close


async def test_bare_close_1001_is_session_expired() -> None:
    error = await next_event_error(closing_with(1001, "maximum duration reached"))
    assert isinstance(error, SessionExpired)
    assert "maximum duration reached" in str(error)


async def test_close_4000_is_the_beta_shape_refusal() -> None:
    error = await next_event_error(closing_with(4000, "beta_api_shape_disabled"))
    assert isinstance(error, ServerErrorEvent)
    assert error.code == "beta_api_shape_disabled"
    assert not error.retryable
    assert "GA" in str(error)


async def test_abnormal_close_code_is_connection_dropped() -> None:
    error = await next_event_error(closing_with(1011, "internal error"))
    assert isinstance(error, ConnectionDropped)
    assert "1011" in str(error) and "internal error" in str(error)


async def test_the_service_closing_normally_on_its_own_is_still_visible() -> None:
    # websockets' own iterator would just stop here; talkbox must learn why the session ended.
    error = await next_event_error(closing_with(1000, ""))
    assert isinstance(error, ConnectionDropped)
    assert "code 1000" in str(error)


async def test_events_before_the_close_are_delivered_first() -> None:
    async def error_then_close(websocket: ServerConnection) -> None:
        await websocket.send(
            json.dumps({"type": "error", "error": {"code": "x", "message": "first"}})
        )
        await websocket.close(1011, "then this")

    async with scripted_peer(error_then_close) as endpoint, await connect(endpoint) as session:
        received: list[ServerEvent] = []
        with pytest.raises(ConnectionDropped):
            async for event in session.events():
                received.append(event)
    assert received == [ServerError(code="x", message="first")]


async def test_close_is_time_boxed_when_the_peer_never_answers() -> None:
    async def go_deaf(websocket: ServerConnection) -> None:
        websocket.transport.pause_reading()  # our close frame is never read, never answered
        await websocket.wait_closed()

    async with scripted_peer(go_deaf) as endpoint:
        session = await connect(endpoint, close_timeout=0.5)
        await asyncio.sleep(0.05)  # the peer is now deaf
        started = time.monotonic()
        await session.close()
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < PROMPTLY  # it did wait for an answer, but not for long
