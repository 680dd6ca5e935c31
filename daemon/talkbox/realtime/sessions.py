"""Where a config and a key become a session: the one opener of Realtime sessions.

The daemon, `talkbox check --connect` and `talkbox ask` all open their sessions here, so the
endpoint, the session settings and the timeouts they use cannot drift apart. The endpoint and
settings are worked out once, when the sessions of a config are asked for; each `open()` then
only connects.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from talkbox.config import Config
from talkbox.core.events import SessionSettings, ToolDeclaration
from talkbox.realtime.connection import RealtimeSession, open_session
from talkbox.realtime.echo import EchoSession, open_echo_session
from talkbox.realtime.endpoint import Endpoint, endpoint_for, session_settings_for
from talkbox.secrets import ApiKey

ECHO_DESCRIPTION = "echo provider (each turn is played back; no service is used)"

# Tools found anew for each session (an MCP server's), looked for while its socket opens.
MoreTools = Callable[[], Awaitable[tuple[ToolDeclaration, ...]]]


@dataclass(frozen=True)
class ServiceSessions:
    """Sessions with the configured service (Azure OpenAI or OpenAI)."""

    endpoint: Endpoint
    settings: SessionSettings
    # Bounds TCP, TLS and the upgrade, and then the session set-up.
    timeout: float
    # None: the system trust store, fully verified (see `open_session`).
    ssl_context: ssl.SSLContext | None = None
    more_tools: MoreTools | None = None

    @property
    def description(self) -> str:
        return self.endpoint.description

    async def open(self) -> RealtimeSession:
        # In parallel with the connection: a warm list is there at once, a cold one bounded.
        listing = None if self.more_tools is None else asyncio.ensure_future(self.more_tools())
        return await open_session(
            self.endpoint,
            self.settings,
            ssl_context=self.ssl_context,
            connect_timeout=self.timeout,
            setup_timeout=self.timeout,
            more_tools=listing,
        )


@dataclass(frozen=True)
class EchoSessions:
    """Sessions with the local echo provider: no key, no network."""

    description: str = ECHO_DESCRIPTION

    async def open(self) -> EchoSession:
        return await open_echo_session()


def service_sessions(
    cfg: Config,
    key: ApiKey,
    *,
    ssl_context: ssl.SSLContext | None = None,
    tools: tuple[ToolDeclaration, ...] = (),
    more_tools: MoreTools | None = None,
) -> ServiceSessions:
    """Sessions with the service `cfg` names, offering `tools` and what `more_tools` finds for
    each session to the model; ConfigError if its endpoint is not usable."""
    return ServiceSessions(
        endpoint_for(cfg.realtime, key),
        session_settings_for(cfg, tools),
        cfg.realtime.connect_timeout_seconds,
        ssl_context,
        more_tools,
    )


def configured_sessions(
    cfg: Config,
    key: ApiKey | None,
    tools: tuple[ToolDeclaration, ...] = (),
    more_tools: MoreTools | None = None,
) -> ServiceSessions | EchoSessions:
    """The sessions the daemon opens with `cfg`: the echo stand-in (which needs no key and
    calls no tools), or the configured service."""
    if cfg.realtime.provider == "echo" or key is None:
        return EchoSessions()
    return service_sessions(cfg, key, tools=tools, more_tools=more_tools)
