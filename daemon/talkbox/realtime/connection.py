"""The one WebSocket adapter: opens a Realtime session and pumps frames through `protocol.py`.

This module owns the socket and nothing else: connecting (TLS always verified), the set-up
handshake (`session.created` → `session.update` → `session.updated`), sending client events,
yielding decoded server events, and a close that never hangs. Every failure of the layers below
(OSError, ssl, websockets) is translated here, once, into `talkbox.errors` with a sentence that
says what to do, and `failure_of` turns those into the plain `Failure` values the core is told.
There is no conversation logic here; the core decides what to send and when.

Calling contract:

- `session = await open_session(...)` returns only once the service acknowledged our session
  settings, or raises a `RealtimeError` (or `ConfigError` for an unusable URL). It never leaves
  a socket open behind an exception.
- Exactly one task iterates `session.events()`; any task may `await session.send(...)`.
- `events()` ends normally only after our own `close()`. Every other end raises:
  `SessionExpired` (close 1001 or error `session_expired`), `ServerErrorEvent` (close 4000: the
  service found a request invalid, on the preview path the beta shape), `ConnectionDropped` (no
  close frame, any other code, or the service closing with 1000 on its own).
- Text the service sends (close reasons, HTTP error bodies, session ids) enters our messages
  only through `safe_text.safe_line`: one printable line, bounded, the key masked.
- `await session.close()` is idempotent and returns within `close_timeout` seconds, even when the
  peer never answers the close (OpenAI often just drops TCP).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import AsyncGenerator, Awaitable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Final, Self, TypeVar
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.http11 import USER_AGENT

from talkbox import __version__
from talkbox.config import is_loopback_host
from talkbox.core.events import (
    ClientEvent,
    ServerError,
    ServerEvent,
    SessionCreated,
    SessionSettings,
    SessionUpdate,
    SessionUpdated,
    ToolDeclaration,
)
from talkbox.core.failures import (
    DIALECT_MISMATCH_CODES,
    SESSION_EXPIRED_CODE,
    Failure,
    FailureKind,
    server_code_retryable,
)
from talkbox.errors import (
    ConfigError,
    ConnectFailed,
    ConnectionDropped,
    HandshakeRejected,
    RealtimeError,
    ServerErrorEvent,
    SessionExpired,
    SessionSetupTimeout,
)
from talkbox.realtime.endpoint import Endpoint
from talkbox.realtime.protocol import Dialect, ServerEventDecoder, encode
from talkbox.safe_text import safe_line

_log = logging.getLogger(__name__)

# The largest message talkbox takes. Audio deltas are base64 JSON and the biggest thing the
# service sends; 4 MiB holds about 65 s of 24 kHz audio in ONE delta, where the service streams
# a fraction of a second per delta. Each message is held several times over while it is read
# and decoded (frame, text, JSON, PCM), so this bounds that cost; a larger one fails the
# conversation cleanly (close 1009).
MAX_FRAME_BYTES: Final = 4 * 2**20
# permessage-deflate off: measured on base64 speech frames it saves ~38 % of the upload
# (64 kB/s → 40 kB/s, negligible for a home uplink) for ~0.3 % of an x86 core, several times
# that on a Pi, where the wake-word model needs the CPU; it also costs a zlib context per socket.
_COMPRESSION: Final = None
_USER_AGENT: Final = f"talkbox/{__version__} {USER_AGENT}"

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # the service ends the session at its maximum duration
# OpenAI closes with 4000 when it rejects a request as invalid, the reason naming the error as
# "TYPE.CODE" (e.g. "invalid_request_error.beta_api_shape_disabled": the retired beta shape).
CLOSE_INVALID_REQUEST: Final = 4000
CLOSE_MESSAGE_TOO_BIG: Final = 1009  # sent by websockets when a frame exceeds max_size

_SetupEvent = TypeVar("_SetupEvent", SessionCreated, SessionUpdated)


class _WireLogger(logging.LoggerAdapter[logging.Logger]):
    """The logger handed to websockets, with DEBUG switched off for good.

    At DEBUG websockets logs every handshake header (our `api-key` / `Authorization`) and every
    frame (audio, transcripts). Refusing DEBUG here keeps both out of the journal even when
    someone turns on debug logging for everything.
    """

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_wire_logger = _WireLogger(logging.getLogger("talkbox.realtime.wire"))


@dataclass(frozen=True)
class SessionInfo:
    """What `session.created` said about the session (empty strings if it did not say)."""

    session_id: str
    model: str


class RealtimeSession:
    """An open, configured Realtime session. Made by `open_session`, never directly."""

    def __init__(
        self,
        websocket: ClientConnection,
        endpoint: Endpoint,
        *,
        close_timeout: float,
        decoder: ServerEventDecoder | None = None,
    ) -> None:
        self._websocket = websocket
        self._endpoint = endpoint
        self._close_timeout = close_timeout
        self.decoder = decoder or ServerEventDecoder()
        self.session_info = SessionInfo(session_id="", model="")
        self._closing = False

    @property
    def description(self) -> str:
        """Key-free words for the service this session talks to, for logs and messages."""
        return self._endpoint.description

    async def send(self, event: ClientEvent) -> None:
        """Send one client event in this endpoint's dialect; raise a `RealtimeError` if closed."""
        frame = encode(event, self._endpoint.dialect)
        try:
            await self._websocket.send(frame)
        except ConnectionClosed as exc:
            raise self._closed_error(exc) or ConnectionDropped(
                "cannot send: the Realtime session was already closed by talkbox"
            ) from exc

    async def events(self) -> AsyncGenerator[ServerEvent, None]:
        """Yield decoded server events until the session ends (see the module docstring)."""
        while True:
            try:
                frame = await self._websocket.recv()
            except ConnectionClosed as exc:
                error = self._closed_error(exc)
                if error is None:
                    return
                raise error from exc
            event = self.decoder.decode(frame)
            if event is None:
                continue
            if isinstance(event, ServerError) and event.code == SESSION_EXPIRED_CODE:
                raise _session_expired(event.message)
            yield event

    async def close(self) -> None:
        """Close the session; returns within `close_timeout` seconds whatever the peer does."""
        self._closing = True
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._websocket.close(CLOSE_NORMAL)
        except TimeoutError:
            _log.info(
                "%s did not answer the close within %g s; dropping the connection",
                self.description,
                self._close_timeout,
            )
            self._websocket.transport.abort()
        except (OSError, WebSocketException):
            # Closing a socket that already failed; nothing left to do but let it go.
            self._websocket.transport.abort()

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake (e.g. on cancellation)."""
        self._closing = True
        self._websocket.transport.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- set-up, used once by open_session -------------------------------------------------

    async def _set_up(
        self,
        settings: SessionSettings,
        setup_timeout: float,
        more_tools: Awaitable[tuple[ToolDeclaration, ...]] | None = None,
    ) -> None:
        waiting_for = "session.created"
        try:
            async with asyncio.timeout(setup_timeout):
                created = await self._next_setup_event(SessionCreated)
                self.session_info = _session_info(created.session)
            if more_tools is not None:
                # Listed while the socket opened, and bounded by whoever lists them.
                settings = replace(settings, tools=settings.tools + await more_tools)
            async with asyncio.timeout(setup_timeout):
                waiting_for = "session.updated"
                await self.send(SessionUpdate(settings))
                await self._next_setup_event(SessionUpdated)
        except TimeoutError:
            raise SessionSetupTimeout(
                f"{self.description} accepted the connection but sent no {waiting_for} within "
                f"{setup_timeout:g} s; the service may be overloaded, try again later"
            ) from None

    async def _next_setup_event(self, wanted: type[_SetupEvent]) -> _SetupEvent:
        while True:
            try:
                frame = await self._websocket.recv()
            except ConnectionClosed as exc:
                raise self._closed_error(exc) or ConnectionDropped(
                    "the Realtime session was closed during set-up"
                ) from exc
            event = self.decoder.decode(frame)
            if isinstance(event, wanted):
                return event
            if isinstance(event, ServerError):
                raise _setup_error(event)
            # Anything else before the acknowledgement (conversation.created, ...) is not ours.

    # --- failure translation ----------------------------------------------------------------

    def _closed_error(self, exc: ConnectionClosed) -> RealtimeError | None:
        """The error that says why the socket closed; None if it was our own close."""
        if self._closing:
            return None  # whatever the peer said last, the session ends because we asked
        received = exc.rcvd
        if received is None and exc.sent is not None and exc.sent.code == CLOSE_MESSAGE_TOO_BIG:
            # websockets failed the connection itself: the peer sent more than max_size. This
            # is no network problem, and saying "dropped" would send the user hunting one.
            return ConnectionDropped(
                f"{self.description} sent a message larger than talkbox accepts "
                f"({MAX_FRAME_BYTES // 2**20} MiB), so talkbox closed the connection; "
                "check any proxy in between, talkbox will reconnect on the next request"
            )
        if received is None:
            return ConnectionDropped(
                f"the connection to {self.description} dropped without a close frame; "
                "check the network, talkbox will reconnect on the next request"
            )
        code, reason = received.code, safe_line(received.reason)
        if code == CLOSE_GOING_AWAY:
            return _session_expired(reason)
        if code == CLOSE_INVALID_REQUEST:
            return self._invalid_request_closed(reason)
        said = f" ({reason})" if reason else ""
        return ConnectionDropped(
            f"{self.description} closed the connection with code {code}{said}; "
            "talkbox will reconnect on the next request"
        )

    def _invalid_request_closed(self, reason: str) -> ServerErrorEvent:
        error_type, _, code = reason.rpartition(".")
        said = f"close 4000: {reason}" if reason else "close 4000"
        if self._endpoint.dialect is Dialect.PREVIEW:
            code = code or "beta_api_shape_disabled"
            return ServerErrorEvent(
                code,
                f"{self.description} refused the preview (beta-shaped) protocol ({said}); "
                'use the GA protocol: set realtime.api_version = ""',
                error_type,
                retryable=server_code_retryable(code),
            )
        # talkbox already speaks GA here, so api_version is not the cause: the request was
        # refused for what it asked (the reason names the error).
        code = code or "invalid_request"
        return ServerErrorEvent(
            code,
            f"{self.description} ended the session over a request it found invalid ({said}); "
            "check that realtime.deployment (Azure) or realtime.model (OpenAI) names a GA "
            "realtime model such as gpt-realtime, and that no proxy in between rewrites "
            "the request",
            error_type,
            retryable=server_code_retryable(code),
        )


async def open_session(
    endpoint: Endpoint,
    settings: SessionSettings,
    *,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float,
    setup_timeout: float,
    close_timeout: float = 2.0,
    more_tools: Awaitable[tuple[ToolDeclaration, ...]] | None = None,
) -> RealtimeSession:
    """Connect, configure and return a session ready for audio (see the module docstring).

    `ssl_context` is for wss:// only; None means the system trust store with full verification
    (there is deliberately no way to turn verification off). `connect_timeout` bounds TCP, TLS
    and the HTTP upgrade; `setup_timeout` bounds the wait for session.created plus
    session.updated. `more_tools`, when given, are tools found while the socket opened (an MCP
    server's): they are awaited before session.update and offered after `settings.tools`.
    """
    try:
        websocket = await _connect(endpoint, ssl_context, connect_timeout, close_timeout)
    except BaseException:
        if more_tools is not None:
            asyncio.ensure_future(more_tools).cancel()
        raise
    session = RealtimeSession(websocket, endpoint, close_timeout=close_timeout)
    try:
        await session._set_up(settings, setup_timeout, more_tools)
    except asyncio.CancelledError:
        session.abort()  # no awaiting inside a cancelled task
        raise
    except SessionSetupTimeout:
        # The peer stayed silent for the whole set-up time: waiting up to close_timeout more
        # for it to answer a close would only hold back the error chime.
        session.abort()
        raise
    except BaseException:
        await session.close()
        raise
    _log.info(
        "realtime session %s open (model %s) at %s",
        session.session_info.session_id or "?",
        session.session_info.model or "?",
        endpoint.description,
    )
    return session


async def _connect(
    endpoint: Endpoint,
    ssl_context: ssl.SSLContext | None,
    connect_timeout: float,
    close_timeout: float,
) -> ClientConnection:
    options: dict[str, Any] = {}
    if endpoint.url.startswith("wss://"):
        options["ssl"] = ssl_context if ssl_context is not None else ssl.create_default_context()
    if is_loopback_host(urlsplit(endpoint.url).hostname or ""):
        # A local service (a test double, a local relay) is never reached through the
        # https_proxy of the environment; remote ones honour it as websockets does by default.
        options["proxy"] = None
    where = endpoint.description
    try:
        async with asyncio.timeout(connect_timeout):
            return await connect(
                endpoint.url,
                additional_headers=endpoint.headers,
                user_agent_header=_USER_AGENT,
                compression=_COMPRESSION,
                open_timeout=None,  # bounded by the asyncio.timeout above, one clock
                close_timeout=close_timeout,
                max_size=MAX_FRAME_BYTES,
                logger=_wire_logger,
                **options,
            )
    except InvalidStatus as exc:
        raise _handshake_rejected(exc.response.status_code, exc.response.body, endpoint) from None
    except TimeoutError:
        # Before OSError: TimeoutError is one, and "no answer" deserves its own words.
        raise ConnectFailed(
            f"could not reach {where} within {connect_timeout:g} s; "
            "check the network connection and realtime.endpoint"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise ConnectFailed(
            f"the TLS certificate of {where} could not be verified ({exc.verify_message}); "
            "check the system clock and the CA certificates (ca-certificates package), "
            "or a proxy that intercepts TLS"
        ) from None
    except ssl.SSLError as exc:
        raise ConnectFailed(
            f"TLS with {where} failed ({exc.reason or type(exc).__name__}); "
            "check realtime.endpoint and any proxy in between"
        ) from None
    except socket.gaierror:
        raise ConnectFailed(
            f"could not resolve the host name of {where}; "
            "check the network's DNS and the spelling of realtime.endpoint"
        ) from None
    except ConnectionRefusedError:
        raise ConnectFailed(
            f"{where} refused the connection; check realtime.endpoint (host and port)"
        ) from None
    except OSError as exc:
        raise ConnectFailed(
            f"could not connect to {where} ({exc.strerror or type(exc).__name__}); "
            "check the network connection"
        ) from None
    except InvalidURI as exc:
        raise ConfigError([f"realtime.endpoint: not a usable WebSocket URL ({exc.msg})"]) from None
    except (InvalidHandshake, WebSocketException) as exc:
        raise ConnectFailed(
            f"{where} did not complete the WebSocket handshake ({type(exc).__name__}); "
            "check realtime.endpoint and any proxy in between"
        ) from None


def _handshake_rejected(
    status: int, body: bytes | bytearray, endpoint: Endpoint
) -> HandshakeRejected:
    where = endpoint.description
    said = _http_error_text(body)
    said = f" ({said})" if said else ""
    if status in (401, 403):
        advice = (
            f"check the key from {endpoint.key_source or 'the configured source'}: it must "
            "belong to this resource (Azure keys and OpenAI keys are not interchangeable)"
        )
    elif status == 404:
        advice = (
            "check realtime.deployment (Azure) or realtime.model (OpenAI), and realtime.api_version"
        )
    elif status == 400:
        advice = "check realtime.api_version and realtime.deployment / realtime.model"
    elif status == 429:
        advice = "the service is rate-limiting this key; talkbox will try again later"
    elif status >= 500:
        advice = "the service has a problem; talkbox will try again later"
    else:
        advice = "check realtime.endpoint"
    return HandshakeRejected(
        status, f"{where} rejected the connection: HTTP {status}{said}; {advice}"
    )


def _http_error_text(body: bytes | bytearray) -> str:
    """The service's own explanation from an error response body, as one safe line."""
    if not body:
        return ""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        text = body.decode("utf-8", "replace")
    else:
        error = document.get("error") if isinstance(document, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
        else:
            return ""
    return safe_line(text)


def _session_info(session: Mapping[str, Any]) -> SessionInfo:
    session_id, model = session.get("id"), session.get("model")
    return SessionInfo(
        session_id=safe_line(session_id) if isinstance(session_id, str) else "",
        model=safe_line(model) if isinstance(model, str) else "",
    )


def _session_expired(detail: str) -> SessionExpired:
    said = f" ({safe_line(detail)})" if detail else ""
    return SessionExpired(
        f"the service ended the session at its maximum duration{said}; "
        "a new session starts on the next request"
    )


def _setup_error(error: ServerError) -> RealtimeError:
    if error.code == SESSION_EXPIRED_CODE:
        return _session_expired(error.message)
    hint = ""
    # Set-up sends nothing but session.update, so a parameter error there is almost always a
    # dialect mix-up (GA fields to a dated api-version, or the other way round).
    if error.code in DIALECT_MISMATCH_CODES:
        hint = (
            "; the endpoint may speak the other protocol dialect: check realtime.api_version "
            "(set = Azure preview, unset = GA)"
        )
    code = error.code or "no code"
    return ServerErrorEvent(
        error.code,
        f"the service refused the session settings: {error.message} ({code}){hint}",
        error.error_type,
        retryable=server_code_retryable(error.code),
    )


def failure_of(error: BaseException) -> Failure:
    """What the core is told of a failure of a session: a plain value, never the exception.

    An exception no layer below named (a bug's, an unexpected library's) still ends only its
    conversation, told as "unexpected"; a library's text may quote the peer, so it is cleaned.
    """
    if not isinstance(error, RealtimeError):
        message = f"unexpected failure: {type(error).__name__}: {safe_line(str(error))}"
        return Failure("unexpected", message)
    code = ""
    kind: FailureKind
    match error:
        case ConnectFailed():
            kind = "connect"
        case HandshakeRejected():
            kind = "rejected"
        case SessionSetupTimeout():
            kind = "setup_timeout"
        case ServerErrorEvent():
            kind, code = "server_error", error.code
        case SessionExpired():
            kind = "session_expired"
        case ConnectionDropped():
            kind = "dropped"
        case _:
            kind = "unexpected"
    return Failure(kind, str(error), server_code=code, retryable=error.retryable)
