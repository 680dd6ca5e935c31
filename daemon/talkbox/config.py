"""talkbox's configuration: the TOML file contract, its validation, and its defaults.

This module owns the tables and keys of the config file (with their defaults, ranges and
cross-field rules), reading the file, and turning every tomllib/pydantic failure into one
`ConfigError` whose problems each name the dotted key and the line it is on. It also offers
`effective_settings` (what `talkbox check` prints) and `config_warnings` (settings that are
valid but have no effect with the chosen provider/protocol).

Not checked here: whether wake model names exist (the wake module knows which models ship)
and whether audio devices exist (the audio module looks them up).

Adding a table: write one `_Section` subclass and add one field for it on `Config`.
"""

from __future__ import annotations

import datetime
import difflib
import grp
import ipaddress
import json
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from talkbox.errors import ConfigError
from talkbox.locations import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH  # re-exported
from talkbox.owner_files import FileRefused, read_regular_file
from talkbox.safe_text import shown_value

OPENAI_DEFAULT_ENDPOINT = "https://api.openai.com/v1"
# The first dated protocol after 2024-10-01-preview (the December 2024 models).
FIRST_PREVIEW_SUCCESSOR = "2024-12-17"
DEFAULT_INSTRUCTIONS = "You are a friendly voice assistant in a living room. Answer briefly."
# sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL.
MAX_UNIX_SOCKET_PATH_BYTES = 107
# Limits on what is read and parsed, far above any real config (the documented one is 8 KB
# with about 50 keys): a wrong or hostile file is refused instead of eating memory and time.
MAX_CONFIG_BYTES = 256 * 1024
MAX_NESTING_LEVELS = 10
MAX_CONFIG_VALUES = 2000
MAX_PROBLEMS_SHOWN = 20

KeyPath = tuple[str | int, ...]
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


def _require_endpoint_url(value: str) -> str:
    """An endpoint must be https/wss; plain http/ws only to this machine (fake servers)."""
    if value == "":
        return value
    shown = shown_value(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        raise PydanticCustomError(
            "endpoint", "is not a valid URL, got {got}", {"got": shown}
        ) from None
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
            "must not contain credentials; give the API key through TALKBOX_API_KEY, "
            "the systemd credential api-key or realtime.api_key_file",
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


def _require_listed_model(models: tuple[str, ...]) -> tuple[str, ...]:
    if not models:
        raise PydanticCustomError(
            "empty", 'must list at least one wake word model, e.g. ["hey_jarvis"]'
        )
    return models


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
    temperature: Annotated[float, _between(0.6, 1.2)] = 0.8
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
        violations = []
        seen: set[str] = set()
        for index, name in enumerate(self.models):
            if name in seen:
                violations.append(
                    RuleViolation(("models", index), f"{json.dumps(name)} is listed twice")
                )
            seen.add(name)
        for name in self.thresholds:
            if name not in seen:
                violations.append(
                    RuleViolation(
                        ("thresholds", name),
                        f"{json.dumps(name)} is not in wake.models; thresholds can only "
                        "override models listed there",
                    )
                )
        return violations


class ConversationConfig(_Section):
    """[conversation]: how long a conversation lasts and how it can be interrupted."""

    follow_up_seconds: Annotated[float, _between(1, 60)] = 8.0
    # Every service ends a session at some maximum (30-60 min); stay well below it.
    max_conversation_seconds: Annotated[float, _between(30, 3000)] = 300.0
    barge_in: Literal["wake", "speech", "off"] = "wake"


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
    log: LogConfig = Field(default_factory=LogConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)


# --- loading ------------------------------------------------------------------------------


def load_config(path: Path | None = None) -> Config:
    """Read and validate the config file (default: DEFAULT_CONFIG_PATH).

    Only a regular file of at most MAX_CONFIG_BYTES is read (see `read_regular_file`); every
    failure, whatever the path points at, is a ConfigError naming the file.
    """
    path = DEFAULT_CONFIG_PATH if path is None else path
    source = str(path)
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError(
            [
                f"file not found; pass --config PATH, or run install.sh, which installs the "
                f"documented default (config/talkbox.toml) as {DEFAULT_CONFIG_PATH}"
            ],
            source=source,
        ) from None
    except PermissionError:
        raise ConfigError(
            [f"cannot read the file: permission denied; {_how_to_get_read_access(path)}"],
            source=source,
        ) from None
    except FileRefused as refusal:
        raise ConfigError(
            [f"cannot read the file: it {refusal}; the config must be a TOML text file"],
            source=source,
        ) from None
    except OSError as error:
        raise ConfigError([f"cannot read the file: {error.strerror}"], source=source) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            [f"the file is not UTF-8 text (line {line}); save it as UTF-8"], source=source
        ) from None
    # Some editors start UTF-8 files with a byte-order mark, which tomllib rejects.
    return parse_config(text.removeprefix("\ufeff"), source)


def _how_to_get_read_access(path: Path) -> str:
    """What an owner can do about a config file they may not read (the installed one is
    root's, readable by group talkbox): sudo, or joining the group that may read it."""
    advice = "run the command with sudo"
    try:
        info = path.stat()
    except OSError:
        info = None
    if info is not None and info.st_mode & stat.S_IRGRP:
        try:
            group = grp.getgrgid(info.st_gid).gr_name
        except KeyError:
            group = str(info.st_gid)
        advice += (
            f", or join group {group}, which may read it "
            f"(`sudo usermod -aG {group} $USER`, then log in again)"
        )
    return f"{advice}; the daemon needs it readable by the user it runs as"


def parse_config(text: str, source: str) -> Config:
    """Validate TOML text; `source` names it in the ConfigError (usually the file path)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([_syntax_problem(error, text)], source=source) from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table.
        raise ConfigError([_TOO_DEEP], source=source) from None
    size_problem = _size_problem(document)
    if size_problem:
        raise ConfigError([size_problem], source=source)
    try:
        return Config.model_validate(document)
    except ValidationError as error:
        raise ConfigError(_bounded(_describe_problems(error, text)), source=source) from None


_TOO_DEEP = (
    f"values are nested more than {MAX_NESTING_LEVELS} levels deep; talkbox's tables go "
    "3 deep (like wake.thresholds.hey_jarvis)"
)


def _size_problem(document: dict[str, Any]) -> str:
    """Whether the parsed document is beyond what any talkbox config needs ("" if not).

    Walked without recursion, so no document can exhaust the stack here.
    """
    values = 0
    pending: list[tuple[Any, int]] = [(document, 0)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_NESTING_LEVELS:
            return _TOO_DEEP
        if isinstance(value, dict | list):
            for child in value.values() if isinstance(value, dict) else value:
                values += 1
                if values > MAX_CONFIG_VALUES:
                    return (
                        f"more than {MAX_CONFIG_VALUES} keys and array elements; talkbox's "
                        "documented config has about 50"
                    )
                pending.append((child, depth + 1))
    return ""


def _bounded(problems: list[str]) -> list[str]:
    """At most MAX_PROBLEMS_SHOWN problems, and how many more there are."""
    if len(problems) <= MAX_PROBLEMS_SHOWN:
        return problems
    hidden = len(problems) - MAX_PROBLEMS_SHOWN
    return [*problems[:MAX_PROBLEMS_SHOWN], f"... and {hidden} more problems not shown"]


def effective_settings(cfg: Config) -> dict[str, Any]:
    """Every setting in force, as plain nested dicts/lists (for `talkbox check` to print)."""
    return cfg.model_dump(mode="json")


def config_warnings(cfg: Config) -> list[str]:
    """Settings that are valid but have no effect with the chosen provider and protocol."""
    realtime, turn = cfg.realtime, cfg.turn
    defaults = RealtimeConfig()
    warnings = []
    if realtime.provider != "echo":
        if realtime.temperature != defaults.temperature and not realtime.uses_preview_protocol:
            warnings.append(
                "realtime.temperature is ignored: only the Azure preview protocol "
                "(api_version ending in -preview) accepts a temperature"
            )
        if realtime.noise_reduction != defaults.noise_reduction and (
            realtime.uses_preview_protocol
        ):
            warnings.append(
                "realtime.noise_reduction is ignored: the Azure preview protocol "
                'does not take it (set api_version = "" for GA)'
            )
    if realtime.provider == "openai":
        if realtime.deployment:
            warnings.append('realtime.deployment is ignored: it is for provider = "azure"')
        if realtime.api_version != defaults.api_version:
            warnings.append('realtime.api_version is ignored: it is for provider = "azure"')
    if realtime.provider == "azure" and realtime.uses_preview_protocol:
        warnings.append(
            f'realtime.api_version = "{realtime.api_version}" selects the preview protocol, '
            "which Azure deprecated on 2026-04-30: move the deployment to a GA realtime model "
            'and set api_version = ""'
        )
    if realtime.provider == "azure" and realtime.model != defaults.model:
        warnings.append("realtime.model is ignored with Azure: realtime.deployment names the model")
    if turn.threshold != TurnConfig().threshold and turn.detection != "server_vad":
        warnings.append('turn.threshold is ignored: it is for detection = "server_vad"')
    if turn.eagerness != TurnConfig().eagerness and turn.detection != "semantic_vad":
        warnings.append('turn.eagerness is ignored: it is for detection = "semantic_vad"')
    if (
        turn.detection == "server_vad"
        and realtime.uses_first_preview_protocol
        and cfg.conversation.barge_in != "speech"
    ):
        warnings.append(
            f'conversation.barge_in = "{cfg.conversation.barge_in}" cannot stop the service '
            f'interrupting itself: with turn.detection = "server_vad", api_version '
            f'"{realtime.api_version}" has no interrupt_response, so any speech it hears (its '
            'own voice from the speaker too) cuts the answer off; use detection = "local" or '
            'a newer api_version'
        )
    return warnings


# --- problem reports ----------------------------------------------------------------------


_SYNTAX_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TUPLE_TABLE_NAME = re.compile(r"\(('[^']*',? ?)+\)")


def _syntax_problem(error: tomllib.TOMLDecodeError, text: str) -> str:
    message = str(error)
    position = _SYNTAX_POSITION.search(message)
    if position is not None:
        reason = message[: position.start()]
        where = f"line {position.group(1)}, column {position.group(2)}"
    else:
        reason = message.removesuffix(" (at end of document)")
        where = f"line {max(1, len(text.splitlines()))}, end of file"
    # tomllib names tables as Python tuples: "Cannot declare ('audio',) twice".
    reason = _TUPLE_TABLE_NAME.sub(_as_table_header, reason)
    return f"TOML syntax error ({where}): {reason}"


def _as_table_header(match: re.Match[str]) -> str:
    return "[" + ".".join(re.findall(r"'([^']*)'", match[0])) + "]"


def dotted_key(path: KeyPath) -> str:
    """`("wake", "models", 1)` -> `wake.models[1]`; unusual keys are quoted as TOML does."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{name}" if text else name
    return text


@dataclass(frozen=True)
class _Problem:
    key: KeyPath
    message: str
    see: KeyPath = ()


_SECRET_WORDS = ("key", "secret", "token", "password")


def _may_echo(path: KeyPath) -> bool:
    # Values of keys that could hold a secret are never repeated back (they end up in logs).
    names = [part.lower() for part in path if isinstance(part, str)]
    return not any(word in name for name in names for word in _SECRET_WORDS)


def _describe_input(value: Any, echo: bool) -> str:
    if isinstance(value, bool):
        return f"got {str(value).lower()}"
    if isinstance(value, int | float):
        return f"got the number {value!r}"
    if isinstance(value, str):
        if not echo:
            return "got a string"
        shown = shown_value(value)
        shown = shown if len(shown) <= 42 else shown[:38] + '..."'
        return f"got the string {shown}"
    if isinstance(value, list):
        return "got an array"
    if isinstance(value, dict):
        return "got a table"
    if isinstance(value, datetime.date | datetime.time):
        return "got a date/time (put it in quotes to make it a string)"
    return f"got {type(value).__name__}"


_TYPE_EXPECTATIONS = {
    "string_type": "must be a string (in quotes)",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "tuple_type": 'must be an array, like ["a", "b"]',
    "list_type": 'must be an array, like ["a", "b"]',
    "dict_type": "must be a table, like { name = 0.5 }",
    "model_type": "must be a table",
}


def _fields_of(path: KeyPath) -> dict[str, Any] | None:
    """The field definitions of the model found at `path` under Config, if it is a model."""
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return dict(model.model_fields)


# Unknown [realtime] keys that look like someone pasting the API key into the file.
_NAMES_A_SECRET = re.compile(r"(azure[_-]?|openai[_-]?)?(api[_-]?)?(key|secret|token)")


def _unknown_key_message(path: KeyPath, value: Any) -> str:
    parent, name = path[:-1], str(path[-1])
    known = sorted(_fields_of(parent) or {})
    what = "unknown table" if not parent and isinstance(value, dict) else "unknown key"
    if _NAMES_A_SECRET.fullmatch(name.lower()) and parent == ("realtime",):
        return (
            f"{what}; the API key must not be in the config file: use TALKBOX_API_KEY, "
            "the systemd credential api-key, or realtime.api_key_file"
        )
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"{what}; did you mean {dotted_key((*parent, close[0]))}?"
    homes = [
        table
        for table in Config.model_fields
        if name in (_fields_of((table,)) or {}) and (table,) != parent
    ]
    if homes:
        return (
            f"{what}; it belongs in a table: put it under [{homes[0]}] "
            f"as {dotted_key((homes[0], name))}"
        )
    listing = "tables" if not parent else "keys"
    return f"{what}; known {listing}: {', '.join(known)}"


def _problems_from_error(error: ErrorDetails) -> list[_Problem]:
    path: KeyPath = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    if kind == "rule_violations":
        violations: list[RuleViolation] = error.get("ctx", {})["violations"]
        return [
            _Problem((*path, *v.key), v.message, (*path, *v.see) if v.see else ())
            for v in violations
        ]
    if kind == "extra_forbidden":
        return [_Problem(path, _unknown_key_message(path, value))]
    echo = _may_echo(path)
    if kind in _TYPE_EXPECTATIONS:
        return [_Problem(path, f"{_TYPE_EXPECTATIONS[kind]}, {_describe_input(value, echo)}")]
    if kind == "literal_error":
        # pydantic lists choices in Python quotes; the file uses TOML's double quotes.
        choices = re.sub(r"'([^']*)'", r'"\1"', error.get("ctx", {}).get("expected", ""))
        return [_Problem(path, f"must be one of {choices}, {_describe_input(value, echo)}")]
    return [_Problem(path, error["msg"])]


def _describe_problems(error: ValidationError, text: str) -> list[str]:
    problems = [p for e in error.errors() for p in _problems_from_error(e)]
    try:
        lines = locate_keys(text)
    except (IndexError, ValueError, tomllib.TOMLDecodeError):
        # The locator only serves the messages; a gap in it must not hide the problems.
        lines = {}
    located = [_locate(problem, lines) for problem in problems]
    located.sort(key=lambda item: item[0])  # stable: file order, then pydantic's order
    return [message for _, message in located]


def _locate(problem: _Problem, lines: dict[KeyPath, int]) -> tuple[float, str]:
    name = dotted_key(problem.key)
    if problem.key in lines:
        line = lines[problem.key]
        return line, f"{name} (line {line}): {problem.message}"
    anchors = [problem.see] if problem.see else []
    anchors += [problem.key[:size] for size in range(len(problem.key) - 1, 0, -1)]
    for anchor in anchors:
        if anchor in lines:
            line = lines[anchor]
            return (
                line,
                f"{name} (not set; see {dotted_key(anchor)} at line {line}): {problem.message}",
            )
    return float("inf"), f"{name} (not set): {problem.message}"


# --- key locations ------------------------------------------------------------------------


def locate_keys(text: str) -> dict[KeyPath, int]:
    """Map every key path of a valid TOML document to the 1-based line where it is defined.

    Tables, dotted keys, inline tables and array elements (as int parts) are all included;
    an implicit parent table maps to the line of its first descendant.
    """
    return _KeyLocator(text).run()


class _KeyLocator:
    """A small scanner over TOML text that tomllib has already accepted.

    tomllib gives values without positions; this walks the same text only far enough to
    note where each key starts, skipping over values (strings may span lines).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.found: dict[KeyPath, int] = {}
        self.array_table_counts: dict[KeyPath, int] = {}

    def run(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self._skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return self.found
            if self.text.startswith("[[", self.pos):
                self.pos += 2
                key = self._read_key()
                self._expect("]]")
                index = self.array_table_counts.get(key, 0)
                self.array_table_counts[key] = index + 1
                table = (*key, index)
                self._note(table, start=0)
            elif self.text.startswith("[", self.pos):
                self.pos += 1
                table = self._read_key()
                self._expect("]")
                self._note(table, start=0)
            else:
                self._read_pair(table)

    def _note(self, path: KeyPath, start: int) -> None:
        # Record the path and any implicit parents it creates below `start` parts.
        for size in range(max(start, 1), len(path) + 1):
            self.found.setdefault(path[:size], self.line)

    def _expect(self, token: str) -> None:
        self._skip_blank(newlines=False)
        if not self.text.startswith(token, self.pos):
            raise ValueError(f"expected {token!r} at line {self.line}")
        self.pos += len(token)

    def _skip_blank(self, newlines: bool) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r":
                self.pos += 1
            elif char == "\n" and newlines:
                self.line += 1
                self.pos += 1
            elif char == "#" and newlines:
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _read_key(self) -> KeyPath:
        parts: list[str | int] = []
        while True:
            self._skip_blank(newlines=False)
            parts.append(self._read_simple_key())
            self._skip_blank(newlines=False)
            if self.text.startswith(".", self.pos):
                self.pos += 1
            else:
                return tuple(parts)

    def _read_simple_key(self) -> str:
        start = self.pos
        char = self.text[start]
        if char in "\"'":
            self._skip_string()
            # Let tomllib decode escapes exactly as it did for the document.
            decoded: str = tomllib.loads(f"k = {self.text[start : self.pos]}")["k"]
            return decoded
        while self.pos < len(self.text) and _BARE_KEY.match(self.text[self.pos]):
            self.pos += 1
        if self.pos == start:
            raise ValueError(f"expected a key at line {self.line}")
        return self.text[start : self.pos]

    def _read_pair(self, table: KeyPath) -> None:
        key = (*table, *self._read_key())
        self._note(key, start=len(table) + 1)
        self._expect("=")
        self._skip_blank(newlines=False)
        self._skip_value(key)

    def _skip_value(self, path: KeyPath) -> None:
        char = self.text[self.pos]
        if char in "\"'":
            self._skip_string()
        elif char == "[":
            self._skip_array(path)
        elif char == "{":
            self._skip_inline_table(path)
        else:
            # Numbers, booleans, dates: they end at a separator, a comment or the line end.
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}#\n":
                self.pos += 1

    def _skip_array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self._skip_blank(newlines=True)
            if self.text[self.pos] == "]":
                self.pos += 1
                return
            self._note((*path, index), start=len(path) + 1)
            self._skip_value((*path, index))
            index += 1
            self._skip_blank(newlines=True)
            if self.text[self.pos] == ",":
                self.pos += 1

    def _skip_inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        while True:
            self._skip_blank(newlines=True)
            if self.text[self.pos] == "}":
                self.pos += 1
                return
            self._read_pair(path)
            self._skip_blank(newlines=True)
            if self.text[self.pos] == ",":
                self.pos += 1

    def _skip_string(self) -> None:
        text, quote = self.text, self.text[self.pos]
        escapes = quote == '"'
        if text.startswith(quote * 3, self.pos):
            closing = self._find_unescaped(quote * 3, self.pos + 3, escapes)
            # Up to two quotes right before the closing delimiter belong to the content,
            # so the closing run of quotes can be up to five long.
            end = closing
            while end < len(text) and text[end] == quote and end - closing < 5:
                end += 1
        else:
            end = self._find_unescaped(quote, self.pos + 1, escapes) + 1
        self.line += text.count("\n", self.pos, end)
        self.pos = end

    def _find_unescaped(self, delimiter: str, start: int, escapes: bool) -> int:
        """Index of the first `delimiter` at or after `start` that no backslash escapes."""
        index = start
        text = self.text
        while not text.startswith(delimiter, index):
            if index >= len(text):
                raise ValueError("unterminated string")
            index += 2 if escapes and text[index] == "\\" else 1
        return index
