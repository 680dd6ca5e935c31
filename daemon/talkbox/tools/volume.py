"""The volume of the assistant's voice as a tool: what the model reads, how its arguments and
`talkbox ctl volume`'s are read, and the arithmetic of levels (0..100 %, louder and quieter
saturate at the ends, an absolute level outside them is an error naming the range).

Where the level goes (an ALSA mixer control or talkbox's own gain) and how it is kept across
restarts is the shell's (shell/volume.py): here it is a `VolumeControl`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from talkbox.core.events import ToolDeclaration

log = logging.getLogger(__name__)

MIN_LEVEL = 0
MAX_LEVEL = 100
DEFAULT_STEP = 10
LEVEL_RANGE = f"an integer from {MIN_LEVEL} to {MAX_LEVEL} (percent)"
STEP_RANGE = f"an integer from 1 to {MAX_LEVEL} (percentage points)"
ACTIONS = ("get", "set", "louder", "quieter")

VOLUME = ToolDeclaration(
    name="speaker_volume",
    description=(
        "Read or change how loud your own voice plays on this device, in percent "
        f"({MIN_LEVEL} silent, {MAX_LEVEL} loudest). action 'get': the current level; 'set': "
        "to `level`; 'louder' / 'quieter': by `step` percentage points (default "
        f"{DEFAULT_STEP}). Use it when the person asks for a volume, or to speak up or down. "
        "The change applies from your next words; confirm it in a few words."
    ),
    parameters={
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": list(ACTIONS)},
            "level": {
                "type": "integer",
                "minimum": MIN_LEVEL,
                "maximum": MAX_LEVEL,
                "description": "For 'set': the new volume in percent.",
            },
            "step": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LEVEL,
                "description": (
                    f"For 'louder' / 'quieter': percentage points, default {DEFAULT_STEP}."
                ),
            },
        },
        "required": ["action"],
        "additionalProperties": False,
    },
)


class VolumeControl(Protocol):
    """The device's volume: the level in percent, and setting it (returns the level set)."""

    @property
    def level(self) -> int: ...

    def set_level(self, level: int) -> int: ...


class VolumeArgumentError(ValueError):
    """An argument that is not a volume: the message names what is allowed."""


def clamp(level: int) -> int:
    return max(MIN_LEVEL, min(MAX_LEVEL, level))


def _integer(value: object) -> int | None:
    """`value` as an int if it is a whole number (JSON may write 50 as 50.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def checked_level(value: object) -> int:
    """An absolute level, or VolumeArgumentError naming the range."""
    level = _integer(value)
    if level is None or not MIN_LEVEL <= level <= MAX_LEVEL:
        raise VolumeArgumentError(f"level must be {LEVEL_RANGE}; got {value!r}")
    return level


def _checked_step(value: object) -> int:
    step = _integer(value)
    if step is None or not 1 <= step <= MAX_LEVEL:
        raise VolumeArgumentError(f"step must be {STEP_RANGE}; got {value!r}")
    return step


def requested_level(current: int, arguments: dict[str, Any]) -> int | None:
    """The level the tool's `arguments` ask for, starting from `current` (None: just get).
    VolumeArgumentError says what is wrong with them."""
    unknown = sorted(set(arguments) - {"action", "level", "step"})
    if unknown:
        raise VolumeArgumentError(f"unknown argument {', '.join(map(repr, unknown))}")
    action = arguments.get("action")
    if action not in ACTIONS:
        raise VolumeArgumentError(f"action must be one of {', '.join(ACTIONS)}; got {action!r}")
    if action == "get":
        return None
    if action == "set":
        if "level" not in arguments:
            raise VolumeArgumentError(f"'set' needs level, {LEVEL_RANGE}")
        return checked_level(arguments["level"])
    step = _checked_step(arguments.get("step", DEFAULT_STEP))
    return clamp(current + step if action == "louder" else current - step)


def level_from_command(current: int, text: str) -> int:
    """`talkbox ctl volume TEXT`: "N" sets N, "+N" / "-N" change the level by N (saturating
    at the ends). VolumeArgumentError says what is allowed."""
    usage = f"the volume is {LEVEL_RANGE}, or +N / -N to change it by N"
    body = text.strip()
    sign = body[:1] if body[:1] in ("+", "-") else ""
    digits = body[len(sign):]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 3:
        raise VolumeArgumentError(f"{usage}; got {text!r}")
    number = int(digits)
    if sign:
        return clamp(current + number if sign == "+" else current - number)
    if number > MAX_LEVEL:
        raise VolumeArgumentError(f"{usage}; got {text!r}")
    return number


def run_volume_tool(control: VolumeControl, arguments: dict[str, Any]) -> str:
    """Answer one call of `speaker_volume`: the level now (and before, if it changed), or an
    error the model can repeat."""
    previous = control.level
    try:
        wanted = requested_level(previous, arguments)
    except VolumeArgumentError as error:
        log.warning("tool %s: %s", VOLUME.name, error)
        return json.dumps({"error": str(error)})
    if wanted is None:
        return json.dumps({"volume": previous})
    return json.dumps({"volume": control.set_level(wanted), "previous": previous})
