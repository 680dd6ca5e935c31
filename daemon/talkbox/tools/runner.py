"""Running one function call the model asked for, never failing: whatever happens (an
unknown tool, arguments that are not a JSON object, an exception, a time-out) becomes an
output the model can talk about, and one log line naming the tool."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from talkbox.safe_text import safe_line
from talkbox.tools.builtin import LocalTool

log = logging.getLogger(__name__)

# Arguments longer than this are not parsed: no tool of ours takes more than a few words.
MAX_ARGUMENTS_CHARS = 16 * 1024


def error_output(message: str) -> str:
    return json.dumps({"error": message})


class ToolRunner:
    """Runs the device's tools by name, each call bounded by `timeout_seconds`."""

    def __init__(self, tools: Mapping[str, LocalTool], timeout_seconds: float) -> None:
        self.tools = dict(tools)
        self.timeout_seconds = timeout_seconds

    async def run(self, name: str, arguments: str) -> str:
        tool = self.tools.get(name)
        if tool is None:
            log.warning("the model called tool %r, which talkbox does not offer", safe_line(name))
            return error_output(f"there is no tool named {name!r}")
        parsed = _parse_arguments(arguments)
        if isinstance(parsed, str):
            log.warning("tool %s: %s", name, parsed)
            return error_output(parsed)
        try:
            # Off the event loop: a tool may block (a file, a mixer, a socket).
            return await asyncio.wait_for(asyncio.to_thread(tool.run, parsed),
                                          self.timeout_seconds)
        except TimeoutError:
            log.warning("tool %s did not finish within %g s", name, self.timeout_seconds)
            return error_output(f"the tool did not finish within {self.timeout_seconds:g} s")
        except Exception as error:  # a broken tool must not end the conversation
            log.warning("tool %s failed: %s", name, safe_line(f"{type(error).__name__}: {error}"))
            return error_output(f"the tool failed: {type(error).__name__}")


def _parse_arguments(arguments: str) -> dict[str, Any] | str:
    """The arguments as a dict, or what is wrong with them."""
    if len(arguments) > MAX_ARGUMENTS_CHARS:
        return f"arguments of {len(arguments)} characters are too long"
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        return "arguments are not valid JSON"
    if not isinstance(parsed, dict):
        return "arguments are not a JSON object"
    return parsed
