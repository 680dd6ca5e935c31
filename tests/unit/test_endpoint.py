"""Endpoint URL/header/dialect rules for the three ways in, and the config → session mapping."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from talkbox.config import Config, RealtimeConfig, parse_config
from talkbox.core.events import SessionSettings, TurnDetection
from talkbox.errors import ConfigError
from talkbox.realtime.endpoint import Endpoint, endpoint_for, session_settings_for
from talkbox.realtime.protocol import Dialect
from talkbox.secrets import ApiKey

KEY_VALUE = "sk-test-0123456789abcdefSECRET"
KEY = ApiKey(KEY_VALUE, "test")


def azure(**fields: Any) -> RealtimeConfig:
    base: dict[str, Any] = {
        "provider": "azure",
        "endpoint": "https://myres.openai.azure.com",
        "deployment": "gpt-4o-realtime-preview",
    }
    return RealtimeConfig(**{**base, **fields})


def unvalidated(**fields: Any) -> RealtimeConfig:
    # Builds a config that skips validation, to prove endpoint_for checks on its own.
    defaults = RealtimeConfig().model_dump()
    return RealtimeConfig.model_construct(**{**defaults, **fields})


# --- URLs, headers and dialects -----------------------------------------------------------------


def test_azure_preview() -> None:
    endpoint = endpoint_for(azure(api_version="2024-10-01-preview"), KEY)
    assert endpoint.url == (
        "wss://myres.openai.azure.com/openai/realtime"
        "?api-version=2024-10-01-preview&deployment=gpt-4o-realtime-preview"
    )
    assert endpoint.headers == {"api-key": KEY_VALUE}
    assert endpoint.dialect is Dialect.PREVIEW
    assert endpoint.description == (
        "Azure OpenAI (preview 2024-10-01-preview) deployment gpt-4o-realtime-preview "
        "at wss://myres.openai.azure.com"
    )


@pytest.mark.parametrize("api_version", ["", "2025-08-28"])
def test_azure_ga_has_no_api_version(api_version: str) -> None:
    endpoint = endpoint_for(azure(api_version=api_version, deployment="gpt-realtime"), KEY)
    assert endpoint.url == "wss://myres.openai.azure.com/openai/v1/realtime?model=gpt-realtime"
    assert "api-version" not in endpoint.url
    assert endpoint.headers == {"api-key": KEY_VALUE}
    assert endpoint.dialect is Dialect.GA
    assert endpoint.description == (
        "Azure OpenAI (GA) deployment gpt-realtime at wss://myres.openai.azure.com"
    )


def test_openai_default_endpoint() -> None:
    endpoint = endpoint_for(RealtimeConfig(provider="openai", model="gpt-realtime"), KEY)
    assert endpoint.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert endpoint.headers == {"Authorization": f"Bearer {KEY_VALUE}"}
    assert endpoint.dialect is Dialect.GA
    assert endpoint.description == "OpenAI (GA) model gpt-realtime at wss://api.openai.com"


def test_openai_with_an_empty_endpoint_uses_the_public_one() -> None:
    endpoint = endpoint_for(unvalidated(provider="openai", endpoint=""), KEY)
    assert endpoint.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"


def test_openai_never_sends_the_beta_header() -> None:
    endpoint = endpoint_for(RealtimeConfig(provider="openai"), KEY)
    assert "openai-beta" not in {name.lower() for name in endpoint.headers}


@pytest.mark.parametrize(
    ("given", "expected_base"),
    [
        ("https://myres.openai.azure.com/", "wss://myres.openai.azure.com"),
        ("https://myres.openai.azure.com///", "wss://myres.openai.azure.com"),
        ("wss://myres.openai.azure.com", "wss://myres.openai.azure.com"),
        ("https://myres.openai.azure.com:8443/", "wss://myres.openai.azure.com:8443"),
        ("http://127.0.0.1:8080/", "ws://127.0.0.1:8080"),
        ("http://localhost:8080", "ws://localhost:8080"),
        ("ws://127.0.0.5:9", "ws://127.0.0.5:9"),
        ("http://[::1]:8080", "ws://[::1]:8080"),
    ],
)
def test_schemes_ports_and_trailing_slashes(given: str, expected_base: str) -> None:
    endpoint = endpoint_for(azure(endpoint=given, api_version=""), KEY)
    assert endpoint.url == f"{expected_base}/openai/v1/realtime?model=gpt-4o-realtime-preview"


def test_openai_base_path_is_kept() -> None:
    cfg = RealtimeConfig(provider="openai", endpoint="http://127.0.0.1:4000/proxy/v1/")
    assert endpoint_for(cfg, KEY).url == "ws://127.0.0.1:4000/proxy/v1/realtime?model=gpt-realtime"


def test_query_values_are_url_encoded() -> None:
    endpoint = endpoint_for(azure(deployment="my dep/1&x=2", api_version="2024-10-01-preview"), KEY)
    assert endpoint.url.endswith(
        "/openai/realtime?api-version=2024-10-01-preview&deployment=my%20dep%2F1%26x%3D2"
    )
    model = endpoint_for(RealtimeConfig(provider="openai", model="a+b c"), KEY)
    assert model.url.endswith("/realtime?model=a%2Bb%20c")


@pytest.mark.parametrize(
    "url",
    ["http://myres.openai.azure.com", "ws://10.0.0.2:8080", "http://localhost.example.com"],
)
def test_plain_http_to_another_machine_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        endpoint_for(unvalidated(provider="azure", endpoint=url, deployment="d"), KEY)
    assert "realtime.endpoint" in str(raised.value)
    assert "TLS" in str(raised.value)


@pytest.mark.parametrize("url", ["ftp://host", "myres.openai.azure.com", "https://", ""])
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"realtime\.endpoint"):
        endpoint_for(unvalidated(provider="azure", endpoint=url, deployment="d"), KEY)


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    url = "https://user:hunter2@myres.openai.azure.com"
    with pytest.raises(ConfigError) as raised:
        endpoint_for(unvalidated(provider="azure", endpoint=url, deployment="d"), KEY)
    assert "hunter2" not in str(raised.value)


def test_echo_provider_has_no_endpoint() -> None:
    with pytest.raises(ValueError, match="echo"):
        endpoint_for(RealtimeConfig(provider="echo"), KEY)


@pytest.mark.parametrize(
    "cfg",
    [
        azure(api_version="2024-10-01-preview"),
        azure(api_version=""),
        RealtimeConfig(provider="openai"),
    ],
    ids=["azure-preview", "azure-ga", "openai"],
)
def test_the_key_appears_only_in_the_headers(cfg: RealtimeConfig) -> None:
    endpoint = endpoint_for(cfg, KEY)
    assert KEY_VALUE not in endpoint.url
    assert KEY_VALUE not in endpoint.description
    assert KEY_VALUE not in repr(endpoint)
    assert KEY_VALUE not in str(endpoint)
    assert KEY_VALUE in "".join(endpoint.headers.values())


def test_endpoint_repr_leaves_out_headers() -> None:
    endpoint = Endpoint("wss://h/x", {"api-key": "k3y"}, Dialect.GA, "somewhere")
    assert "k3y" not in repr(endpoint)
    assert "somewhere" in repr(endpoint)


# --- session settings -------------------------------------------------------------------------


def config(toml: str) -> Config:
    return parse_config(toml, "test.toml")


def test_defaults_give_local_turns_and_speech_barge_in() -> None:
    settings = session_settings_for(config(""))
    assert settings == SessionSettings(
        voice="alloy",
        instructions=settings.instructions,
        temperature=None,  # provider "echo" speaks no preview protocol
        transcription_model="",
        noise_reduction="far_field",
        turn_detection=TurnDetection(
            kind="local",
            threshold=0.5,
            prefix_padding_ms=300,
            silence_duration_ms=500,
            eagerness="auto",
            create_response=True,
            interrupt_response=True,  # barge_in = "speech" (with local turns, never sent)
        ),
    )
    assert settings.instructions


def test_every_key_is_carried_over() -> None:
    settings = session_settings_for(
        config(
            """
            [realtime]
            provider = "azure"
            endpoint = "https://myres.openai.azure.com"
            deployment = "gpt-realtime"
            api_version = ""
            voice = "marin"
            instructions = "Answer in one sentence."
            transcription_model = "gpt-4o-mini-transcribe"
            noise_reduction = "near_field"
            [turn]
            detection = "server_vad"
            threshold = 0.7
            prefix_padding_ms = 250
            silence_duration_ms = 900
            [conversation]
            barge_in = "speech"
            """
        )
    )
    assert settings == SessionSettings(
        voice="marin",
        instructions="Answer in one sentence.",
        temperature=None,
        transcription_model="gpt-4o-mini-transcribe",
        noise_reduction="near_field",
        turn_detection=TurnDetection(
            kind="server_vad",
            threshold=0.7,
            prefix_padding_ms=250,
            silence_duration_ms=900,
            eagerness="auto",
            create_response=True,
            interrupt_response=True,  # barge_in = "speech": the server may cut itself off
        ),
    )


def test_semantic_vad_eagerness_and_noise_reduction_off() -> None:
    settings = session_settings_for(
        config(
            """
            [realtime]
            noise_reduction = "off"
            [turn]
            detection = "semantic_vad"
            eagerness = "high"
            """
        )
    )
    assert settings.noise_reduction is None
    assert settings.turn_detection.kind == "semantic_vad"
    assert settings.turn_detection.eagerness == "high"
    assert settings.turn_detection.interrupt_response is True  # barge_in = "speech"
    waking = session_settings_for(config('[turn]\ndetection = "semantic_vad"\n'
                                         '[conversation]\nbarge_in = "wake"\n'))
    assert waking.turn_detection.interrupt_response is False


@pytest.mark.parametrize(
    ("api_version", "flags"),
    [
        ("2024-10-01-preview", (None, None)),
        ("2025-04-01-preview", (True, True)),
        ("", (True, True)),
    ],
)
def test_server_vad_flags_only_where_the_protocol_has_them(
    api_version: str, flags: tuple[bool | None, bool | None]
) -> None:
    settings = session_settings_for(
        config(
            f"""
            [realtime]
            provider = "azure"
            endpoint = "https://myres.openai.azure.com"
            deployment = "gpt-4o-realtime-preview"
            api_version = "{api_version}"
            [turn]
            detection = "server_vad"
            """
        )
    )
    turn = settings.turn_detection
    assert (turn.create_response, turn.interrupt_response) == flags


def test_temperature_goes_only_to_the_preview_protocol() -> None:
    preview = config(
        """
        [realtime]
        provider = "azure"
        endpoint = "https://myres.openai.azure.com"
        deployment = "gpt-4o-realtime-preview"
        api_version = "2024-10-01-preview"
        temperature = 0.7
        """
    )
    assert session_settings_for(preview).temperature == 0.7


def test_temperature_on_ga_is_dropped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    ga = config(
        """
        [realtime]
        provider = "openai"
        temperature = 1.13
        """
    )
    with caplog.at_level(logging.WARNING, logger="talkbox.realtime.endpoint"):
        first = session_settings_for(ga)
        second = session_settings_for(ga)
    assert first.temperature is None and second.temperature is None
    warnings = [r.getMessage() for r in caplog.records if "temperature" in r.getMessage()]
    assert len(warnings) == 1
    assert "1.13" in warnings[0] and "ignored" in warnings[0]


def test_default_temperature_on_ga_is_not_worth_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="talkbox.realtime.endpoint"):
        settings = session_settings_for(config('[realtime]\nprovider = "openai"\n'))
    assert settings.temperature is None
    assert caplog.records == []
