"""Running one function call the model asked for, never failing: whatever happens (an
unknown tool, arguments that are not a JSON object, an exception, a time-out) becomes an
output the model can talk about, and one log line naming the tool.

Two kinds of tool: the device's own (`LocalTool`, run in a worker thread: it may block) and
a `RemoteTool` answered elsewhere (an MCP server), awaited on the loop. A remote call that
runs out of time is abandoned, not waited for: its clean-up (a server process to stop) may
take seconds more, which the model must not wait out.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from talkbox.safe_text import safe_line
from talkbox.tools.builtin import LocalTool

log = logging.getLogger(__name__)

# Arguments longer than this are not parsed: no tool of ours takes more than a few words.
MAX_ARGUMENTS_CHARS = 16 * 1024


def error_output(message: str) -> str:
    return json.dumps({"error": message})


class ToolError(Exception):
    """A tool's own failure; its message is for the model and the log (no secret in it)."""


@dataclass(frozen=True)
class RemoteTool:
    """A tool answered elsewhere: `call` takes the parsed arguments and returns JSON text, or
    raises (ToolError with words for the model, anything else as a failure)."""

    call: Callable[[dict[str, Any]], Awaitable[str]]


def no_remote_tool(name: str) -> RemoteTool | None:
    return None


class ToolRunner:
    """Runs the device's tools by name, and the remote ones `remote` finds by name, each call
    bounded by `timeout_seconds`."""

    def __init__(
        self,
        tools: Mapping[str, LocalTool],
        timeout_seconds: float,
        remote: Callable[[str], RemoteTool | None] = no_remote_tool,
    ) -> None:
        self.tools = dict(tools)
        self.timeout_seconds = timeout_seconds
        self.remote = remote
        # Remote calls given up on, kept until their clean-up ends (or the loop forgets them).
        self._abandoned: set[asyncio.Task[str]] = set()

    async def run(self, name: str, arguments: str) -> str:
        tool = self.tools.get(name)
        remote = self.remote(name) if tool is None else None
        if remote is not None:
            parsed = _parse_arguments(arguments)
            if isinstance(parsed, str):
                log.warning("tool %s: %s", name, parsed)
                return error_output(parsed)
            return await self._run_remote(name, remote, parsed)
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
            return _failed(name, error)

    async def _run_remote(self, name: str, tool: RemoteTool, arguments: dict[str, Any]) -> str:
        call = asyncio.ensure_future(tool.call(arguments))
        try:
            await asyncio.wait({call}, timeout=self.timeout_seconds)
        finally:
            if not call.done():  # timed out, or the conversation ended meanwhile
                call.cancel()
                self._abandoned.add(call)
                call.add_done_callback(self._abandoned.discard)
                call.add_done_callback(_forget_outcome)
        if not call.done():
            log.warning("tool %s did not finish within %g s", name, self.timeout_seconds)
            return error_output(f"the tool did not finish within {self.timeout_seconds:g} s")
        try:
            return call.result()
        except Exception as error:
            return _failed(name, error)


def _failed(name: str, error: Exception) -> str:
    """The log line and the model's output for a tool that raised `error`."""
    if isinstance(error, ToolError):
        log.warning("tool %s failed: %s", name, safe_line(str(error)))
        return error_output(str(error))
    log.warning("tool %s failed: %s", name, safe_line(f"{type(error).__name__}: {error}"))
    return error_output(f"the tool failed: {type(error).__name__}")


def _forget_outcome(task: asyncio.Task[str]) -> None:
    # An abandoned call's end is of no interest; reading it keeps asyncio from logging it.
    if not task.cancelled():
        task.exception()


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
