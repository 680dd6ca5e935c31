"""The tools talkbox offers the model on its own: each a declaration (what the model reads)
and, unless the core handles it, a function that answers a call.

`end_conversation` is declared here but never run: the core ends the conversation once the
farewell has played (`core.conversation.END_CONVERSATION_TOOL`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from talkbox.config import ToolsConfig
from talkbox.core.conversation import END_CONVERSATION_TOOL
from talkbox.core.events import NO_ARGUMENTS, ToolDeclaration
from talkbox.tools.alarms import DECLARATIONS as TIMER_DECLARATIONS
from talkbox.tools.alarms import AlarmTools
from talkbox.tools.volume import VOLUME, VolumeControl, run_volume_tool

END_CONVERSATION = ToolDeclaration(
    name=END_CONVERSATION_TOOL,
    description=(
        "End the conversation when the person says goodbye, thanks you and is done, or asks "
        "you to stop listening. Say a short farewell in the same response; the device stops "
        "listening after it has played."
    ),
    parameters=NO_ARGUMENTS,
)

CURRENT_TIME = ToolDeclaration(
    name="get_current_time",
    description=(
        "The current local date and time where the device is, with its time zone. Use it "
        "whenever the answer depends on the time, the date or the day of the week."
    ),
    parameters=NO_ARGUMENTS,
)


def current_time(now: Callable[[], dt.datetime] = lambda: dt.datetime.now().astimezone()
                 ) -> str:
    """The device's local time, date and zone as JSON for the model."""
    local = now()
    offset = local.strftime("%z")
    return json.dumps({
        "time": local.strftime("%H:%M"),
        "weekday": local.strftime("%A"),
        "date": local.date().isoformat(),
        "time_zone": local.tzname() or "",
        "utc_offset": f"{offset[:3]}:{offset[3:]}" if offset else "",
    })


@dataclass(frozen=True)
class LocalTool:
    """A tool answered on the device: `run` takes the parsed arguments, returns JSON text."""

    declaration: ToolDeclaration
    run: Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Toolbox:
    """The tools the config switches on: every one offered to the model, and those run here."""

    declarations: tuple[ToolDeclaration, ...]
    local: Mapping[str, LocalTool]


def toolbox(
    cfg: ToolsConfig, *, alarms: AlarmTools | None = None, volume: VolumeControl | None = None
) -> Toolbox:
    """The tools `cfg` switches on, every one declared; the timer tools run here only with
    `alarms` (the daemon's store), the volume tool only with a `volume` to set (without them
    only the declarations are wanted)."""
    declarations: list[ToolDeclaration] = []
    local: dict[str, LocalTool] = {}
    if cfg.end_conversation:
        declarations.append(END_CONVERSATION)
    if cfg.time:
        declarations.append(CURRENT_TIME)
        local[CURRENT_TIME.name] = LocalTool(CURRENT_TIME, lambda _arguments: current_time())
    if cfg.volume:
        declarations.append(VOLUME)
        if volume is not None:
            control = volume
            local[VOLUME.name] = LocalTool(VOLUME, lambda args: run_volume_tool(control, args))
    if cfg.timers:
        declarations.extend(TIMER_DECLARATIONS)
        if alarms is not None:
            runs = (alarms.set_timer, alarms.set_alarm, alarms.list_timers, alarms.cancel_timer)
            for declaration, run in zip(TIMER_DECLARATIONS, runs, strict=True):
                local[declaration.name] = LocalTool(declaration, run)
    return Toolbox(tuple(declarations), local)
