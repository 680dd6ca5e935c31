"""Reading the config file, and the warnings about settings that have no effect.

Every failure, whatever the path points at, becomes one `ConfigError` naming the file.
"""

from __future__ import annotations

import grp
import stat
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from talkbox.config.messages import bounded, describe_problems, syntax_problem
from talkbox.config.schema import TEMPERATURE_IGNORED, Config, RealtimeConfig, TurnConfig
from talkbox.errors import ConfigError
from talkbox.locations import DEFAULT_CONFIG_PATH
from talkbox.owner_files import FileRefused, read_regular_file

# Limits on what is read and parsed, far above any real config (the documented one is 8 KB
# with about 50 keys): a wrong or hostile file is refused instead of eating memory and time.
MAX_CONFIG_BYTES = 256 * 1024
MAX_NESTING_LEVELS = 10
MAX_CONFIG_VALUES = 2000


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
        raise ConfigError([syntax_problem(error, text)], source=source) from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table.
        raise ConfigError([_TOO_DEEP], source=source) from None
    size_problem = _size_problem(document)
    if size_problem:
        raise ConfigError([size_problem], source=source)
    try:
        return Config.model_validate(document)
    except ValidationError as error:
        raise ConfigError(bounded(describe_problems(error, text)), source=source) from None


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


def effective_settings(cfg: Config) -> dict[str, Any]:
    """Every setting in force, as plain nested dicts/lists (for `talkbox check` to print)."""
    return cfg.model_dump(mode="json")


def config_warnings(cfg: Config) -> list[str]:
    """Settings that are valid but have no effect with the chosen provider and protocol."""
    realtime, turn = cfg.realtime, cfg.turn
    defaults = RealtimeConfig()
    warnings = []
    if realtime.provider != "echo":
        if realtime.ignores_temperature:
            warnings.append(TEMPERATURE_IGNORED)
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
    if cfg.conversation.barge_in == "speech" and not cfg.audio.echo_cancellation:
        warnings.append(
            'conversation.barge_in = "speech" with audio.echo_cancellation = false: unless the '
            "microphone does not hear the speaker (a headset, a board that cancels the echo "
            'itself), the answer\'s own voice interrupts it; set barge_in = "wake"'
        )
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
            "a newer api_version"
        )
    return warnings
