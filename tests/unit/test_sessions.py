"""The one session opener: which sessions a config opens, and with what.

Opening a real session against the fake service is tested where it is used: `talkbox ask`
and `talkbox check --connect` (tests/integration/test_cli_*.py) and the daemon (test_faults).
"""

from __future__ import annotations

import ssl

import pytest

from talkbox.config import parse_config
from talkbox.errors import ConfigError
from talkbox.realtime.echo import EchoSession
from talkbox.realtime.endpoint import endpoint_for, session_settings_for
from talkbox.realtime.sessions import (
    ECHO_DESCRIPTION,
    EchoSessions,
    ServiceSessions,
    configured_sessions,
    service_sessions,
)
from talkbox.secrets import ApiKey

KEY = ApiKey("sk-sessions-test-0123456789", "test")
AZURE = """
[realtime]
provider = "azure"
endpoint = "{endpoint}"
deployment = "gpt-realtime"
api_version = ""
connect_timeout_seconds = 7
"""


async def test_the_echo_provider_needs_no_key_and_opens_an_echo_session() -> None:
    sessions = configured_sessions(parse_config("", "test"), None)

    assert sessions == EchoSessions()
    assert sessions.description == ECHO_DESCRIPTION
    session = await sessions.open()
    assert isinstance(session, EchoSession)
    await session.close()


def test_a_service_config_opens_its_endpoint_with_its_settings_and_timeout() -> None:
    cfg = parse_config(AZURE.format(endpoint="https://res.openai.azure.com"), "test")

    sessions = configured_sessions(cfg, KEY)

    assert isinstance(sessions, ServiceSessions)
    assert sessions.endpoint == endpoint_for(cfg.realtime, KEY)
    assert sessions.settings == session_settings_for(cfg)
    assert sessions.timeout == 7
    assert sessions.ssl_context is None, "the system trust store, fully verified"
    assert sessions.description == (
        "Azure OpenAI (GA) deployment gpt-realtime at wss://res.openai.azure.com"
    )


def test_an_ssl_context_is_kept_for_the_connection() -> None:
    cfg = parse_config(AZURE.format(endpoint="https://res.openai.azure.com"), "test")
    context = ssl.create_default_context()

    assert service_sessions(cfg, KEY, ssl_context=context).ssl_context is context


def test_an_unusable_endpoint_is_refused_before_anything_is_opened() -> None:
    cfg = parse_config(AZURE.format(endpoint="https://res.openai.azure.com"), "test")
    plain_http = cfg.realtime.model_copy(update={"endpoint": "http://example.com"})

    with pytest.raises(ConfigError, match="TLS is required"):
        service_sessions(cfg.model_copy(update={"realtime": plain_http}), KEY)
