"""The tables and keys of the config file: defaults, ranges and cross-field rules.

Each table is one `_Section` subclass with one field on `Config`; single-field rules live on
the fields, cross-field rules in `rule_violations`. What a valid setting means for the
service (the protocol a setting selects, whether it is ignored) is said here too, so that
the warnings of `talkbox check` and the session set-up read the same rule.

Not checked here: whether wake model files exist (the wake module looks for them) and
whether audio devices exist (the audio module looks them up).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from talkbox.config.api_key_places import API_KEY_PLACES
from talkbox.config.toml_lines import KeyPath, dotted_key
from talkbox.safe_text import shown_value

OPENAI_DEFAULT_ENDPOINT = "https://api.openai.com/v1"
# The first dated protocol after 2024-10-01-preview (the December 2024 models).
FIRST_PREVIEW_SUCCESSOR = "2024-12-17"
DEFAULT_INSTRUCTIONS = "You are a friendly voice assistant in a living room. Answer briefly."
# The default of realtime.temperature, and the service's own when none is sent.
DEFAULT_TEMPERATURE = 0.8
TEMPERATURE_IGNORED = (
    "realtime.temperature is ignored: only the Azure preview protocol "
    "(api_version ending in -preview) accepts a temperature"
)
# sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL.
MAX_UNIX_SOCKET_PATH_BYTES = 107

_Number = TypeVar("_Number", int, float)


# --- field-level checks ------------------------------------------------------------------


def _format_bound(value: float) -> str:
    return f"{value:g}"


def _format_number(value: float) -> str:
    # An int given for a float field arrives as a float; show it the way it was written.
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _between(low: float, high: float) -> AfterValidator:
    """An inclusive range check whose message states both ends (pydantic's ge/le name one)."""

    def check(value: _Number) -> _Number:
        # Written as a negated conjunction so NaN (valid TOML) is rejected too.
        if not (low <= value <= high):
            raise PydanticCustomError(
                "out_of_range",
                "must be between {low} and {high}, got {got}",
                {
                    "low": _format_bound(low),
                    "high": _format_bound(high),
                    "got": _format_number(value),
                },
            )
        return value

    return AfterValidator(check)


def _require_non_empty(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("empty", "must not be empty")
    return value


def _require_empty_or_absolute_path(value: str) -> str:
    # The value is never echoed: people paste API keys into this key by mistake.
    if value and not value.startswith("/"):
        raise PydanticCustomError(
            "not_absolute", 'must be "" or an absolute path (starting with /)'
        )
    return value


def _require_socket_path(value: str) -> str:
    if not value.startswith("/"):
        raise PydanticCustomError("not_absolute", "must be an absolute path (starting with /)")
    size = len(value.encode("utf-8"))
    if size > MAX_UNIX_SOCKET_PATH_BYTES:
        raise PydanticCustomError(
            "too_long",
            "must be at most {limit} bytes long (the limit for unix socket paths), got {size}",
            {"limit": MAX_UNIX_SOCKET_PATH_BYTES, "size": size},
        )
    return value


_API_VERSION_PATTERN = re.compile(r"(\d{4}-\d{2}-\d{2})(-preview)?")


def _require_api_version(value: str) -> str:
    if value == "":
        return value
    match = _API_VERSION_PATTERN.fullmatch(value)
    problem = match is None
    if match is not None:
        try:
            datetime.date.fromisoformat(match.group(1))
        except ValueError:
            problem = True
    if problem:
        raise PydanticCustomError(
            "api_version",
            'must be "" (GA protocol) or a date like "2025-04-01" or "2024-10-01-preview", '
            "got {got}",
            {"got": shown_value(value)},
        )
    return value


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an IP literal) is this machine: plain http/ws is allowed there."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_url(value: str, error_kind: str) -> SplitResult:
    """`value`'s parts; a PydanticCustomError of `error_kind` if it is no URL at all."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        raise PydanticCustomError(
            error_kind, "is not a valid URL, got {got}", {"got": shown_value(value)}
        ) from None
    return parts


def _require_endpoint_url(value: str) -> str:
    """An endpoint must be https/wss; plain http/ws only to this machine (fake servers)."""
    if value == "":
        return value
    shown = shown_value(value)
    parts = _split_url(value, "endpoint")
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in ("https", "wss", "http", "ws") or not host:
        raise PydanticCustomError(
            "endpoint",
            'must be a URL like "https://HOST" (https or wss), got {got}',
            {"got": shown},
        )
    if parts.username is not None or parts.password is not None:
        raise PydanticCustomError(
            "endpoint",
            "must not contain credentials; give the API key through {places}",
            {"places": API_KEY_PLACES},
        )
    if parts.query or parts.fragment:
        raise PydanticCustomError(
            "endpoint",
            "must not contain a query (?...) or fragment (#...); deployment and api_version "
            "are separate keys, got {got}",
            {"got": shown},
        )
    if scheme in ("http", "ws") and not is_loopback_host(host):
        raise PydanticCustomError(
            "endpoint",
            "TLS is required: use https:// or wss:// (plain {scheme}:// is only allowed to "
            "localhost, 127.0.0.0/8 or ::1), got {got}",
            {"scheme": scheme, "got": shown},
        )
    return value


WAKE_MODELS_EMPTY = 'must list at least one wake word model, e.g. ["hey_jarvis"]'


def _require_listed_model(models: tuple[str, ...]) -> tuple[str, ...]:
    if not models:
        raise PydanticCustomError("empty", WAKE_MODELS_EMPTY)
    return models


def is_wake_model_path(listed: str) -> bool:
    """Whether a wake.models entry names a model file rather than a shipped model."""
    return "/" in listed or listed.endswith(".tflite")


def wake_model_name(listed: str) -> str:
    """The name a wake.models entry goes by, and reports detections under: a model file's
    stem ("/opt/computer.tflite" -> "computer"), else the shipped model's name as written
    with any case, spaces or dashes ("Hey Jarvis" -> "hey_jarvis")."""
    if is_wake_model_path(listed):
        return PurePath(listed).stem
    return listed.strip().lower().replace(" ", "_").replace("-", "_")


def wake_model_violations(
    models: Sequence[str], threshold_keys: Iterable[str]
) -> list[RuleViolation]:
    """The rules between wake.models and wake.thresholds, keyed relative to [wake]: no model
    listed twice (two spellings of one model count), and a threshold only for a listed
    model, given as listed or by its name."""
    violations = []
    first_listed: dict[str, str] = {}
    for index, listed in enumerate(models):
        name = wake_model_name(listed)
        earlier = first_listed.get(name)
        if earlier is None:
            first_listed[name] = listed
            continue
        message = (
            f"{json.dumps(listed)} is listed twice"
            if earlier == listed
            else f"{json.dumps(listed)} is listed twice (as {json.dumps(earlier)} before)"
        )
        violations.append(RuleViolation(("models", index), message))
    for key in threshold_keys:
        if key not in models and key not in first_listed:
            violations.append(
                RuleViolation(
                    ("thresholds", key),
                    f"{json.dumps(key)} is not in wake.models; thresholds can only "
                    "override models listed there",
                )
            )
    return violations


def _require_program(argv: tuple[str, ...]) -> tuple[str, ...]:
    if argv and not argv[0].strip():
        raise PydanticCustomError(
            "empty", "the first element (the program to run) must not be empty"
        )
    if argv and not argv[0].startswith("/"):
        # The hook runs with a minimal PATH, from whatever directory systemd chose, and never
        # through a shell: only an absolute path names the same program every time.
        program = argv[0] if len(argv[0]) <= 60 else argv[0][:57] + "..."
        raise PydanticCustomError(
            "not_absolute",
            "the first element must be the absolute path of the program to run (like "
            '"/usr/local/bin/led-ring"), got {got}; talkbox runs it directly, not through a '
            'shell, so give each argument as its own string: ["/path/to/program", "arg"]',
            {"got": json.dumps(program)},
        )
    return argv


NonEmptyStr = Annotated[StrictStr, AfterValidator(_require_non_empty)]
# TOML arrays arrive as lists; tuples keep the frozen config immutable all the way down.
# strict=False lets the list be converted; the elements stay strict strings.
StrList = Annotated[tuple[StrictStr, ...], Field(strict=False)]
NonEmptyStrList = Annotated[tuple[NonEmptyStr, ...], Field(strict=False)]


# --- tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleViolation:
    """A broken cross-field rule. `key` is relative to its table; `see` names a related key
    whose line helps the reader when `key` itself is not in the file."""

    key: KeyPath
    message: str
    see: KeyPath = ()


class _Section(BaseModel):
    """Base of every table: immutable, unknown keys rejected, no type coercion."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def rule_violations(self) -> list[RuleViolation]:
        """Cross-field rules of this table; single-field rules live on the fields."""
        return []

    @model_validator(mode="after")
    def _enforce_rules(self) -> Self:
        violations = self.rule_violations()
        if violations:
            # All violations travel in one error; the loader expands them into problems.
            raise PydanticCustomError(
                "rule_violations",
                "{summary}",
                {
                    "summary": "; ".join(f"{dotted_key(v.key)}: {v.message}" for v in violations),
                    "violations": violations,
                },
            )
        return self


class RealtimeConfig(_Section):
    """[realtime]: which service to talk to and how the session is set up."""

    provider: Literal["azure", "openai", "echo"] = "echo"
    endpoint: Annotated[StrictStr, AfterValidator(_require_endpoint_url)] = ""
    deployment: StrictStr = ""
    model: NonEmptyStr = "gpt-realtime"
    api_version: Annotated[StrictStr, AfterValidator(_require_api_version)] = ""
    voice: NonEmptyStr = "alloy"
    instructions: StrictStr = DEFAULT_INSTRUCTIONS
    temperature: Annotated[float, _between(0.6, 1.2)] = DEFAULT_TEMPERATURE
    transcription_model: StrictStr = ""
    noise_reduction: Literal["far_field", "near_field", "off"] = "far_field"
    api_key_file: Annotated[StrictStr, AfterValidator(_require_empty_or_absolute_path)] = ""
    connect_timeout_seconds: Annotated[float, _between(1, 60)] = 10.0

    @model_validator(mode="before")
    @classmethod
    def _default_openai_endpoint(cls, data: Any) -> Any:
        # OpenAI has one public endpoint, so an empty value means that one.
        is_openai = isinstance(data, dict) and data.get("provider") == "openai"
        if is_openai and data.get("endpoint", "") == "":
            return {**data, "endpoint": OPENAI_DEFAULT_ENDPOINT}
        return data

    @property
    def uses_preview_protocol(self) -> bool:
        """Azure with a dated `-preview` api_version speaks the preview (beta-shaped) protocol."""
        return self.provider == "azure" and self.api_version.endswith("-preview")

    @property
    def uses_first_preview_protocol(self) -> bool:
        """The first preview (2024-10-01-preview): its turn_detection is server VAD with
        threshold, padding and silence only; create_response, interrupt_response and
        semantic VAD came with the December 2024 models. (Dated versions sort as strings.)"""
        return self.uses_preview_protocol and self.api_version < FIRST_PREVIEW_SUCCESSOR

    @property
    def ignores_temperature(self) -> bool:
        """A temperature other than the default is set for a service whose protocol takes
        none: only the preview protocol does (GA removed it), and echo has no service."""
        return (
            self.provider != "echo"
            and not self.uses_preview_protocol
            and self.temperature != DEFAULT_TEMPERATURE
        )

    def rule_violations(self) -> list[RuleViolation]:
        if self.provider != "azure":
            return []
        violations = []
        if not self.endpoint:
            violations.append(
                RuleViolation(
                    ("endpoint",),
                    'required when provider = "azure": your resource URL, '
                    'like "https://NAME.openai.azure.com"',
                    see=("provider",),
                )
            )
        elif "your-resource" in (urlsplit(self.endpoint).hostname or ""):
            violations.append(
                RuleViolation(
                    ("endpoint",),
                    "still has the placeholder YOUR-RESOURCE: put your Azure OpenAI resource name "
                    "there (Azure portal > your resource > Keys and Endpoint)",
                )
            )
        if not self.deployment.strip():
            violations.append(
                RuleViolation(
                    ("deployment",),
                    'required when provider = "azure": the name you gave the realtime model '
                    "deployment in Azure AI Foundry",
                    see=("provider",),
                )
            )
        return violations


class TurnConfig(_Section):
    """[turn]: who decides that the user has finished speaking, and how."""

    detection: Literal["local", "server_vad", "semantic_vad"] = "local"
    threshold: Annotated[float, _between(0, 1)] = 0.5
    prefix_padding_ms: Annotated[int, _between(0, 2000)] = 300
    silence_duration_ms: Annotated[int, _between(100, 5000)] = 500
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    vad_aggressiveness: Annotated[int, _between(0, 3)] = 2
    max_turn_seconds: Annotated[float, _between(1, 120)] = 30.0

    def rule_violations(self) -> list[RuleViolation]:
        max_turn_ms = self.max_turn_seconds * 1000
        if self.prefix_padding_ms >= max_turn_ms:
            return [
                RuleViolation(
                    ("prefix_padding_ms",),
                    f"must be shorter than turn.max_turn_seconds ({max_turn_ms:g} ms), "
                    f"got {self.prefix_padding_ms}",
                )
            ]
        return []


class AudioConfig(_Section):
    """[audio]: which ALSA devices to use, at which rates, and the chimes."""

    input_device: NonEmptyStr = "default"
    output_device: NonEmptyStr = "default"
    input_rate: Literal[8000, 16000, 22050, 24000, 32000, 44100, 48000] = 16000
    output_rate: Literal[8000, 16000, 22050, 24000, 32000, 44100, 48000] = 24000
    volume: Annotated[float, _between(0, 1)] = 0.6
    chimes: bool = True
    echo_cancellation: bool = True
    # false: the speaker stream stands by while nothing plays (shell/service.py says when).
    keep_speaker_running: bool = False
    # The ALSA simple mixer control the volume moves ("" = talkbox scales its own audio).
    mixer_control: StrictStr = ""
    mixer_device: NonEmptyStr = "default"


class WakeConfig(_Section):
    """[wake]: the wake word models and how sure they must be."""

    models: Annotated[NonEmptyStrList, AfterValidator(_require_listed_model)] = ("hey_jarvis",)
    threshold: Annotated[float, _between(0, 1)] = 0.5
    thresholds: dict[str, Annotated[float, _between(0, 1)]] = Field(default_factory=dict)
    refractory_seconds: Annotated[float, _between(0, 10)] = 2.0

    def threshold_for(self, model: str) -> float:
        """The score at which `model` counts as detected."""
        return self.thresholds.get(model, self.threshold)

    def rule_violations(self) -> list[RuleViolation]:
        return wake_model_violations(self.models, self.thresholds)


class ConversationConfig(_Section):
    """[conversation]: how long a conversation lasts and how it can be interrupted."""

    follow_up_seconds: Annotated[float, _between(1, 60)] = 8.0
    # Every service ends a session at some maximum (30-60 min); stay well below it.
    max_conversation_seconds: Annotated[float, _between(30, 3000)] = 300.0
    # "speech" once the whole process met issue 13's figures (docs/benchmarks.md): no
    # self-interruption in 5 minutes of answers in four rooms, p95 to silence under 300 ms.
    barge_in: Literal["wake", "speech", "off"] = "speech"


MCP_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,20}")


def _require_mcp_server_name(value: str) -> str:
    # The name prefixes each of its tools' names, which the Realtime API limits to
    # ^[a-zA-Z0-9_-]{1,64}$: the short name leaves the tool's own name the rest.
    if not MCP_SERVER_NAME.fullmatch(value):
        raise PydanticCustomError(
            "mcp_name",
            "must be 1 to 20 letters, digits, _ or -, like \"home\", got {got}",
            {"got": shown_value(value)},
        )
    return value


def _require_mcp_url(value: str) -> str:
    """An MCP server's URL: http or https. Plain http is allowed to any host: Home Assistant
    on the owner's network speaks it by default (see README.md for https)."""
    if value == "":
        return value
    shown = shown_value(value)
    parts = _split_url(value, "url")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError(
            "url",
            'must be a URL like "http://homeassistant.local:8123/api/mcp", got {got}',
            {"got": shown},
        )
    if parts.username is not None or parts.password is not None:
        raise PydanticCustomError(
            "url", "must not contain credentials; put the token in a file named by token_file"
        )
    return value


class McpServerConfig(_Section):
    """One [[tools.mcp]] table: an MCP server whose tools the model may call, either a program
    talkbox starts (stdio) or a URL (streamable HTTP) with an optional bearer token."""

    name: Annotated[StrictStr, AfterValidator(_require_mcp_server_name)]
    command: Annotated[StrList, AfterValidator(_require_program)] = ()
    url: Annotated[StrictStr, AfterValidator(_require_mcp_url)] = ""
    # The token is never in this file: only where to read it (see tools/mcp_servers.py).
    token_file: Annotated[StrictStr, AfterValidator(_require_empty_or_absolute_path)] = ""

    def rule_violations(self) -> list[RuleViolation]:
        if bool(self.command) == bool(self.url):
            return [
                RuleViolation(
                    ("url",) if self.url else ("command",),
                    "give either command (a program that speaks MCP over stdio, as "
                    '["/path/to/server", "arg"]) or url (a streamable-HTTP server), not '
                    + ("both" if self.url else "neither"),
                    see=("name",),
                )
            ]
        if self.token_file and not self.url:
            return [
                RuleViolation(
                    ("token_file",), "is only for a server reached by url, not by command"
                )
            ]
        return []


class ToolsConfig(_Section):
    """[tools]: what the assistant can do on the device besides talking."""

    end_conversation: bool = True
    time: bool = True
    volume: bool = True
    timeout_seconds: Annotated[float, _between(1, 120)] = 10.0
    timers: bool = True
    alarm_ring_seconds: Annotated[float, _between(5, 1800)] = 180.0
    mcp: Annotated[tuple[McpServerConfig, ...], Field(strict=False)] = ()

    def rule_violations(self) -> list[RuleViolation]:
        names = [server.name for server in self.mcp]
        return [
            RuleViolation(("mcp", index, "name"), f"{json.dumps(name)} is used twice")
            for index, name in enumerate(names)
            if name in names[:index]
        ]


class LogConfig(_Section):
    """[log]: how much to log."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    transcripts: bool = False


class HooksConfig(_Section):
    """[hooks]: programs run on events (e.g. to drive an LED ring)."""

    on_state: Annotated[StrList, AfterValidator(_require_program)] = ()
    timeout_seconds: Annotated[float, _between(0.1, 60)] = 5.0


class ControlConfig(_Section):
    """[control]: the local control socket."""

    socket: Annotated[StrictStr, AfterValidator(_require_socket_path)] = "/run/talkbox/control.sock"
    persist_mute: bool = False


_DEVICE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def _require_device_name(value: str) -> str:
    # It is an MQTT client id and a topic level: no "/", "+", "#", spaces or capitals.
    if value and not _DEVICE_NAME_PATTERN.fullmatch(value):
        raise PydanticCustomError(
            "device_name",
            'must be "" or 1 to 32 of a-z, 0-9, "_" and "-", starting with a letter or digit, '
            "got {got}",
            {"got": shown_value(value)},
        )
    return value


class MqttConfig(_Section):
    """[mqtt]: the house's broker (Home Assistant, and which speaker answers a wake)."""

    enabled: bool = False
    host: StrictStr = ""
    port: Annotated[int, _between(1, 65535)] = 1883
    tls: bool = False
    ca_file: Annotated[StrictStr, AfterValidator(_require_empty_or_absolute_path)] = ""
    username: StrictStr = ""
    password_file: Annotated[StrictStr, AfterValidator(_require_empty_or_absolute_path)] = ""
    device: Annotated[StrictStr, AfterValidator(_require_device_name)] = ""
    discovery_prefix: NonEmptyStr = "homeassistant"
    arbitration_ms: Annotated[int, _between(0, 200)] = 150

    def rule_violations(self) -> list[RuleViolation]:
        if not self.enabled:
            return []
        violations = [
            RuleViolation((key,), f"must be set when mqtt.enabled = true ({what})")
            for key, value, what in (
                ("host", self.host, "the broker's name or address"),
                ("device", self.device, 'the name of this speaker in the house, e.g. "kitchen"'),
            )
            if not value.strip()
        ]
        if self.ca_file and not self.tls:
            violations.append(RuleViolation(
                ("ca_file",), "is only used with tls = true: set tls = true, or remove ca_file"
            ))
        return violations


class Config(_Section):
    """The whole file. Every table is optional; missing keys take their defaults."""

    def rule_violations(self) -> list[RuleViolation]:
        if self.turn.detection == "semantic_vad" and self.realtime.uses_first_preview_protocol:
            return [
                RuleViolation(
                    ("turn", "detection"),
                    f'"semantic_vad" needs a newer protocol than realtime.api_version = '
                    f'"{self.realtime.api_version}": use "server_vad" or "local", or set '
                    'api_version = "" (GA)',
                    see=("realtime", "api_version"),
                )
            ]
        return []

    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    turn: TurnConfig = Field(default_factory=TurnConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    wake: WakeConfig = Field(default_factory=WakeConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
