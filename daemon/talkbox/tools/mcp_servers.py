"""MCP servers as tool sources: their tools offered to the model, its calls forwarded to them.

Each configured server ([[tools.mcp]]) is a program talkbox starts and talks to over its
stdin/stdout, or a URL (streamable HTTP) with an optional bearer token read from a file.

Listing. The servers are listed first when the daemon starts or takes a new config (`warm`).
A session asks `McpServers.declarations` for the servers' tools while its WebSocket opens.
What is known is answered at once: a listing is fresh for `FRESH_SECONDS`, and a stale one is
still offered while a new one is fetched in the background for the next conversation. Only a
server's first listing, if still running at the first conversation after a start or a config
change, is waited for, and for at most `FIRST_LISTING_WAIT_SECONDS`: a slow server misses
that conversation, not the answer to the wake word; later ones never wait for it. A listing
that fails keeps the tools listed before it (or none), costs one log line, and is tried again
after `RETRY_SECONDS`.

Calls. Each call (and each listing) opens its own connection and closes it after: a stdio
server runs only while it answers. A speaker sits idle most of the day, and a child process
kept running would count against the unit's memory cap and need watching; a server that hangs
or leaks is gone after each use. The price is the server's start-up on every call (for a
Python server on a Pi, about a second: the person hears the tool chime meanwhile). An HTTP
server (Home Assistant) costs a few requests on the LAN.

The SDK's client modules are imported past the `mcp` package's own __init__, which imports
its server side too (an ASGI app, its web server, OAuth): the daemon's install leaves those
out (requirements/lock.py), and a daemon without MCP servers imports none of the SDK.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talkbox.config import McpServerConfig
from talkbox.core.events import ToolDeclaration
from talkbox.core.tool_names import function_names
from talkbox.errors import ConfigError
from talkbox.safe_text import safe_line
from talkbox.secrets import read_token_file
from talkbox.tools.runner import RemoteTool, ToolError

if TYPE_CHECKING:
    from mcp.client.session import ClientSession

log = logging.getLogger(__name__)

FRESH_SECONDS = 300.0
RETRY_SECONDS = 30.0
FIRST_LISTING_WAIT_SECONDS = 2.0
# A listing in the background may take longer; one that takes this long has failed.
LISTING_TIMEOUT_SECONDS = 15.0
# Bounds the HTTP connect and each read of a response.
HTTP_TIMEOUT_SECONDS = 10.0
MAX_DESCRIPTION_CHARS = 1024
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class ListedTool:
    """One tool as its server listed it."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ServerListing:
    """How a server's latest listing went: its tools, or why it could not list them."""

    name: str
    tools: tuple[ListedTool, ...]
    failure: str  # "" if the latest listing worked


@dataclass
class _Listing:
    tools: tuple[ListedTool, ...] = ()
    failure: str = ""  # why the latest listing failed ("" if it worked)
    fresh_until: float = 0.0
    refreshing: asyncio.Task[None] | None = None
    # Set once the first listing attempt ended, whatever its outcome.
    tried: asyncio.Event = field(default_factory=asyncio.Event)
    # That first attempt was waited for (by one session only).
    waited: bool = False


class McpServers:
    """The configured servers' tools for each session, and their calls. One per daemon: the
    listings outlive conversations and reloads (a changed server entry is a new server)."""

    def __init__(
        self,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._environ = environ
        self._clock = clock
        self._listings: dict[McpServerConfig, _Listing] = {}
        # The function names offered in the latest session, and what each one calls.
        self._offered: dict[str, tuple[McpServerConfig, str]] = {}

    async def declarations(
        self, servers: tuple[McpServerConfig, ...]
    ) -> tuple[ToolDeclaration, ...]:
        """The tools of `servers` for a session starting now (never raises; see the module)."""
        self._start_listings(servers)
        first = []
        for server in servers:
            listing = self._listings[server]
            if not listing.waited:
                listing.waited = True
                first.append(asyncio.ensure_future(listing.tried.wait()))
        if first:
            try:
                await asyncio.wait(first, timeout=FIRST_LISTING_WAIT_SECONDS)
            finally:
                for waiting in first:
                    waiting.cancel()  # the listings themselves go on, for the next session
        declarations: list[ToolDeclaration] = []
        offered: dict[str, tuple[McpServerConfig, str]] = {}
        for server in servers:
            listing = self._listings[server]
            if first and not listing.tried.is_set():
                log.warning(
                    "MCP server %s has not listed its tools within %g s; they are offered "
                    "from the next conversation on once it has",
                    server.name,
                    FIRST_LISTING_WAIT_SECONDS,
                )
            tools = {tool.name: tool for tool in listing.tools}
            names = function_names(server.name, tools, taken=offered)
            for tool_name, function_name in names.items():
                tool = tools[tool_name]
                declarations.append(
                    ToolDeclaration(function_name, tool.description, tool.parameters)
                )
                offered[function_name] = (server, tool_name)
        self._offered = offered
        return tuple(declarations)

    def warm(self, servers: tuple[McpServerConfig, ...]) -> None:
        """Start listing `servers` now (when the daemon starts, or takes a new config), so
        that the first conversation finds their tools listed; no-op outside a running loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._start_listings(servers)

    async def list_now(self, servers: tuple[McpServerConfig, ...]) -> list[ServerListing]:
        """List `servers` and wait until each has answered or failed (for a check, a test)."""
        self._start_listings(servers)
        await asyncio.gather(*(self._listings[server].tried.wait() for server in servers))
        return [
            ServerListing(server.name, self._listings[server].tools,
                          self._listings[server].failure)
            for server in servers
        ]

    def _start_listings(self, servers: tuple[McpServerConfig, ...]) -> None:
        """Forget servers no longer configured; list those never listed or no longer fresh."""
        for gone in set(self._listings) - set(servers):
            self._forget(gone)
        now = self._clock()
        for server in servers:
            listing = self._listings.setdefault(server, _Listing())
            if now >= listing.fresh_until and listing.refreshing is None:
                listing.refreshing = asyncio.ensure_future(self._refresh(server, listing))

    def tool(self, function_name: str) -> RemoteTool | None:
        """The call behind a function name offered in the latest session, if any."""
        found = self._offered.get(function_name)
        if found is None:
            return None
        server, tool_name = found
        return RemoteTool(partial(self._call, server, tool_name))

    async def aclose(self) -> None:
        """Stop the listings still running (at shutdown)."""
        for server in list(self._listings):
            self._forget(server)

    def _forget(self, server: McpServerConfig) -> None:
        listing = self._listings.pop(server)
        if listing.refreshing is not None:
            listing.refreshing.cancel()

    async def _refresh(self, server: McpServerConfig, listing: _Listing) -> None:
        try:
            async with asyncio.timeout(LISTING_TIMEOUT_SECONDS):
                tools = await self._list(server)
        except Exception as error:  # whatever the server does: one line, never a crash
            if isinstance(error, TimeoutError):
                reason = f"no answer within {LISTING_TIMEOUT_SECONDS:g} s"
            else:
                reason = _reason(error)
            listing.failure = reason
            log.warning(
                "MCP server %s: cannot list its tools (%s); %s",
                server.name,
                reason,
                "trying again later" if not listing.tools else "its earlier list stays",
            )
            listing.fresh_until = self._clock() + RETRY_SECONDS
        else:
            if tools != listing.tools:
                log.info(
                    "MCP server %s offers %d tool%s: %s",
                    server.name,
                    len(tools),
                    "" if len(tools) == 1 else "s",
                    ", ".join(safe_line(tool.name) for tool in tools) or "none",
                )
            listing.tools = tools
            listing.failure = ""
            listing.fresh_until = self._clock() + FRESH_SECONDS
        finally:
            listing.refreshing = None
            listing.tried.set()

    async def _list(self, server: McpServerConfig) -> tuple[ListedTool, ...]:
        listed: list[ListedTool] = []
        async with self._session(server) as session:
            cursor: str | None = None
            while True:
                page = await session.list_tools(params=_page(cursor))
                for tool in page.tools:
                    schema = dict(tool.input_schema)
                    if schema.get("type") != "object":
                        log.warning(
                            "MCP server %s: tool %s left out: its input schema is not an object",
                            server.name,
                            safe_line(tool.name),
                        )
                        continue
                    description = (tool.description or tool.title or "")[:MAX_DESCRIPTION_CHARS]
                    listed.append(ListedTool(tool.name, description, schema))
                cursor = page.next_cursor
                if not cursor:
                    return tuple(listed)

    async def _call(self, server: McpServerConfig, tool_name: str, arguments: dict[str, Any]
                    ) -> str:
        try:
            async with self._session(server) as session:
                result = await session.call_tool(tool_name, arguments)
        except ToolError:
            raise
        except Exception as error:
            raise ToolError(f"MCP server {server.name} failed: {_reason(error)}") from None
        # Only text reaches a voice model; images or audio from a tool are left out.
        text = "\n".join(getattr(block, "text", "") for block in result.content
                         if block.type == "text")
        if result.is_error:
            raise ToolError(
                f"MCP server {server.name} reported an error: {text or 'no details'}"
            )
        if result.structured_content is not None:  # a JSON object already
            return json.dumps(result.structured_content)
        return json.dumps({"result": text})

    @asynccontextmanager
    async def _session(self, server: McpServerConfig) -> AsyncIterator[ClientSession]:
        """An initialised MCP session with `server`, closed (its process stopped) after."""
        _load_client_modules()
        from mcp.client.session import ClientSession

        # The SDK reports an HTTP error as a bare "error response": keep the status to say.
        refused: list[int] = []
        try:
            async with AsyncExitStack() as stack:
                if server.command:
                    from mcp.client.stdio import StdioServerParameters, stdio_client

                    parameters = StdioServerParameters(
                        command=server.command[0], args=list(server.command[1:])
                    )
                    read, write = await stack.enter_async_context(stdio_client(parameters))
                else:
                    read, write = await stack.enter_async_context(
                        self._http_transport(server, refused)
                    )
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                yield session
        except Exception:
            if refused:
                raise ToolError(_http_refusal(server, refused[0])) from None
            raise

    @asynccontextmanager
    async def _http_transport(self, server: McpServerConfig, refused: list[int]
                              ) -> AsyncIterator[Any]:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        headers = {}
        if server.token_file:
            headers["Authorization"] = f"Bearer {self._token(server).reveal()}"

        async def note_refusal(response: httpx2.Response) -> None:
            if response.status_code >= 400:
                refused.append(response.status_code)

        async with (
            httpx2.AsyncClient(
                headers=headers,
                timeout=HTTP_TIMEOUT_SECONDS,
                event_hooks={"response": [note_refusal]},
            ) as client,
            streamable_http_client(server.url, http_client=client) as streams,
        ):
            yield streams

    def _token(self, server: McpServerConfig) -> Any:
        try:
            return read_token_file(
                Path(server.token_file), f"tools.mcp {server.name}", self._environ
            )
        except ConfigError as error:
            raise ToolError("; ".join(error.problems)) from None


def _page(cursor: str | None) -> Any:
    if cursor is None:
        return None
    from mcp_types import PaginatedRequestParams

    return PaginatedRequestParams(cursor=cursor)


def _http_refusal(server: McpServerConfig, status: int) -> str:
    if status in (401, 403):
        why = ("it refused the token in token_file" if server.token_file
               else "it wants a token: set token_file")
    elif status == 404:
        why = "there is no MCP server at url"
    else:
        why = "it answered with an error"
    return f"{why} (HTTP {status})"


def _reason(error: BaseException) -> str:
    """What went wrong, in one short line: the first real error inside anyio's groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, ToolError):
        return safe_line(str(error))[:MAX_REASON_CHARS]
    text = str(error)
    if isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}" + (f": {error.filename}" if error.filename else "")
    reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return safe_line(reason)[:MAX_REASON_CHARS]


def _load_client_modules() -> None:
    """Make `mcp.client.*` importable without running `mcp/__init__.py` and
    `mcp/client/__init__.py`, which import the SDK's server side (see the module docstring).
    Nothing to do once `mcp` is imported (the tests' own servers import it whole)."""
    # One line per HTTP request and per session id at INFO would bury the daemon's own lines.
    for chatty in ("httpx2", "httpcore2", "mcp"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if "mcp" in sys.modules:
        return
    package = importlib.machinery.PathFinder.find_spec("mcp")
    if package is None or package.submodule_search_locations is None:
        raise ToolError("the mcp package is not installed")
    client = importlib.machinery.PathFinder.find_spec(
        "mcp.client", list(package.submodule_search_locations)
    )
    assert client is not None
    top, sub = importlib.util.module_from_spec(package), importlib.util.module_from_spec(client)
    # Their __init__ is never run: they only serve as the packages their modules live in.
    sys.modules["mcp"], sys.modules["mcp.client"] = top, sub
    top.client = sub  # type: ignore[attr-defined]
