"""Where and how to reach the Realtime service, and which session settings to ask for.

This module owns the URL, authentication-header and dialect rules of the three ways in
(Azure GA, Azure preview, OpenAI GA; see realtime-protocol.md section 1) and the mapping from
the config file's [realtime]/[turn]/[conversation] tables to `SessionSettings`. Pure functions:
no sockets, no files.

The API key ends up in `Endpoint.headers` and nowhere else: not in the URL, not in
`description`, not in the dataclass repr. Never log `headers`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, urlencode, urlsplit

from talkbox.config import OPENAI_DEFAULT_ENDPOINT, TEMPERATURE_IGNORED, is_loopback_host
from talkbox.core.events import SessionSettings, ToolDeclaration, TurnDetection
from talkbox.errors import ConfigError
from talkbox.realtime.protocol import Dialect
from talkbox.safe_text import MAX_PROSE_CHARS, safe_line, shown_value

if TYPE_CHECKING:
    from talkbox.config import Config, RealtimeConfig
    from talkbox.secrets import ApiKey

_log = logging.getLogger(__name__)

_WS_SCHEMES: Final = {"https": "wss", "wss": "wss", "http": "ws", "ws": "ws"}


@dataclass(frozen=True)
class Endpoint:
    """One way into the service: the wss:// URL, the auth headers, and the dialect it speaks.

    `headers` holds the API key. It is left out of repr() so that logging or printing an
    Endpoint (or an exception carrying one) cannot leak it; still, never log `headers` itself.
    `description` is a key-free sentence fragment for logs and error messages; `key_source`
    says where the key came from (e.g. "TALKBOX_API_KEY"), for advice when it is refused.
    """

    url: str
    headers: dict[str, str] = field(repr=False)
    dialect: Dialect
    description: str
    key_source: str = ""


def endpoint_for(cfg: RealtimeConfig, api_key: ApiKey) -> Endpoint:
    """The endpoint for `cfg.provider` ("azure" or "openai"). Raises ConfigError for a URL
    that is not usable (not https/wss, or plain http/ws to a host other than this machine).

    Provider "echo" talks to no service, so asking for its endpoint is a programming error
    (ValueError).
    """
    if cfg.provider == "azure":
        base = _websocket_base(cfg.endpoint)
        if cfg.uses_preview_protocol:
            query = urlencode(
                {"api-version": cfg.api_version, "deployment": cfg.deployment}, quote_via=quote
            )
            return Endpoint(
                url=f"{base}/openai/realtime?{query}",
                headers={"api-key": api_key.reveal()},
                dialect=Dialect.PREVIEW,
                description=_description(
                    f"Azure OpenAI (preview {cfg.api_version}) deployment {cfg.deployment} "
                    f"at {_origin(base)}"
                ),
                key_source=api_key.source,
            )
        # GA: no api-version at all (Azure answers 401 when one is given on /openai/v1).
        query = urlencode({"model": cfg.deployment}, quote_via=quote)
        return Endpoint(
            url=f"{base}/openai/v1/realtime?{query}",
            headers={"api-key": api_key.reveal()},
            dialect=Dialect.GA,
            description=_description(
                f"Azure OpenAI (GA) deployment {cfg.deployment} at {_origin(base)}"
            ),
            key_source=api_key.source,
        )
    if cfg.provider == "openai":
        base = _websocket_base(cfg.endpoint or OPENAI_DEFAULT_ENDPOINT)
        query = urlencode({"model": cfg.model}, quote_via=quote)
        # No OpenAI-Beta header: that selects the retired beta shape (close 4000).
        return Endpoint(
            url=f"{base}/realtime?{query}",
            headers={"Authorization": f"Bearer {api_key.reveal()}"},
            dialect=Dialect.GA,
            description=_description(f"OpenAI (GA) model {cfg.model} at {_origin(base)}"),
            key_source=api_key.source,
        )
    raise ValueError(f"provider {cfg.provider!r} has no Realtime endpoint")


def session_settings_for(
    cfg: Config, tools: tuple[ToolDeclaration, ...] = ()
) -> SessionSettings:
    """The session settings the config asks for, shaped for the configured dialect.

    Temperature is passed only on the preview protocol (GA removed it); a non-default value on
    GA is logged once as ignored. noise_reduction "off" becomes None. The server may interrupt
    its own answer on speech (`interrupt_response`) only when [conversation] barge_in is
    "speech" (the default), where what it hears is what the echo canceller left: with "wake"
    or "off" a speaker that hears itself must not cut its own answer off.
    """
    realtime, turn = cfg.realtime, cfg.turn
    # The first preview protocol knows neither flag: leave both out (config warns about it).
    first_preview = realtime.uses_first_preview_protocol
    temperature: float | None = None
    if realtime.uses_preview_protocol:
        temperature = realtime.temperature
    elif realtime.ignores_temperature:
        # The log has no file beside it: say the value too.
        _warn_once(f"{TEMPERATURE_IGNORED} (got {realtime.temperature:g})")
    return SessionSettings(
        voice=realtime.voice,
        instructions=realtime.instructions,
        temperature=temperature,
        transcription_model=realtime.transcription_model,
        noise_reduction=None if realtime.noise_reduction == "off" else realtime.noise_reduction,
        turn_detection=TurnDetection(
            kind=turn.detection,
            threshold=turn.threshold,
            prefix_padding_ms=turn.prefix_padding_ms,
            silence_duration_ms=turn.silence_duration_ms,
            eagerness=turn.eagerness,
            create_response=None if first_preview else True,
            interrupt_response=None if first_preview else cfg.conversation.barge_in == "speech",
        ),
        tools=tools,
    )


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    # Settings are rebuilt for every session; one warning per process is enough.
    if message not in _warned:
        _warned.add(message)
        _log.warning("%s", message)


def _websocket_base(endpoint: str) -> str:
    """`endpoint` with its scheme turned into ws/wss and without trailing slashes.

    Config validation already enforces these rules; they are checked again here because this
    is where a mistake would send the key in clear text.
    """
    parts = urlsplit(endpoint.strip())
    scheme = _WS_SCHEMES.get(parts.scheme.lower())
    host = parts.hostname or ""
    shown = shown_value(endpoint)
    if scheme is None or not host:
        raise ConfigError([f'realtime.endpoint: must be a URL like "https://HOST", got {shown}'])
    if parts.username is not None or parts.password is not None:
        # Never echo this one: the credentials are in it.
        raise ConfigError(["realtime.endpoint: must not contain user:password@"])
    if scheme == "ws" and not is_loopback_host(host):
        raise ConfigError(
            [
                "realtime.endpoint: TLS is required: use https:// (plain http:// is only "
                f"allowed to localhost, 127.0.0.0/8 or ::1), got {shown}"
            ]
        )
    path = parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{path}"


def _description(text: str) -> str:
    # Names from the config file go into every log line about the service: one safe line.
    return safe_line(text, MAX_PROSE_CHARS)


def _origin(websocket_url: str) -> str:
    parts = urlsplit(websocket_url)
    return f"{parts.scheme}://{parts.netloc}"
