"""MCP servers as tool sources, against real servers built with the SDK (tests/support/
mcp_server.py): over stdio (a child process) and streamable HTTP on loopback with a bearer
token, one that hangs, one that fails, one that is not there. Calls go through the real
ToolRunner, as in the daemon."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.event_schema import check_client_event
from support.mcp_server import HttpMcpServer, server_command, silent_command, write_token_file
from talkbox.config import McpServerConfig
from talkbox.core.events import SessionSettings, SessionUpdate, ToolDeclaration
from talkbox.realtime.protocol import Dialect, client_event_message
from talkbox.tools import mcp_servers
from talkbox.tools.mcp_servers import McpServers
from talkbox.tools.runner import ToolRunner

TOKEN = "mcp-test-token-0123456789"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return write_token_file(tmp_path, TOKEN)


@pytest.fixture
def http_server() -> Iterator[HttpMcpServer]:
    with HttpMcpServer(token=TOKEN) as server:
        yield server


def stdio(name: str = "local", kind: str = "home") -> McpServerConfig:
    return McpServerConfig(name=name, command=tuple(server_command(kind)))


def runner(source: McpServers, timeout: float = 5.0) -> ToolRunner:
    return ToolRunner({}, timeout, remote=source.tool)


async def test_stdio_and_http_tools_are_offered_prefixed_and_calls_reach_their_server(
    http_server: HttpMcpServer, token_file: Path
) -> None:
    source = McpServers(environ={})
    servers = (stdio("local"), McpServerConfig(name="home", url=http_server.url,
                                              token_file=str(token_file)))
    await source.list_now(servers)
    declarations = await source.declarations(servers)

    names = [d.name for d in declarations]
    assert names == [f"{server}__{tool}" for server in ("local", "home")
                     for tool in ("turn_on", "add", "fail", "hang")]
    turn_on = declarations[0]
    assert turn_on.description == "Turn on a light or switch by its name."
    assert turn_on.parameters["properties"]["entity"]["type"] == "string"
    assert turn_on.parameters["required"] == ["entity"]

    tools = runner(source)
    assert json.loads(await tools.run("local__turn_on", '{"entity": "kitchen"}')) == {
        "result": "kitchen is on"}
    assert json.loads(await tools.run("home__add", '{"a": 2, "b": 40}')) == {"result": 42}
    assert "refused" not in http_server.stop(), "every request carried the token"


def test_the_declarations_pass_the_realtime_checks_in_both_dialects() -> None:
    async def listed() -> tuple[ToolDeclaration, ...]:
        source = McpServers(environ={})
        await source.list_now((stdio(),))
        return await source.declarations((stdio(),))

    declarations = asyncio.run(listed())
    assert len(declarations) == 4
    update = SessionUpdate(SessionSettings(tools=declarations))
    for dialect in Dialect:
        message = client_event_message(update, dialect)
        assert check_client_event(dialect.value, message) == []


# Shapes Home Assistant's Assist API and SDK-built servers give their tools' arguments: enums,
# arrays, optional fields as anyOf with null, $defs references, no properties at all.
TYPICAL_SCHEMAS = [
    {"type": "object", "properties": {
        "name": {"type": "string"}, "area": {"type": "string"},
        "domain": {"type": "array", "items": {"type": "string", "enum": ["light", "switch"]}},
        "brightness": {"type": "integer", "minimum": 0, "maximum": 100}}, "required": []},
    {"type": "object", "properties": {}},
    {"type": "object"},
    {"type": "object", "$defs": {"Color": {"type": "string", "enum": ["red", "blue"]}},
     "properties": {"color": {"$ref": "#/$defs/Color"},
                    "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}},
     "required": ["color"], "additionalProperties": False, "title": "paintArguments"},
]


@pytest.mark.parametrize("schema", TYPICAL_SCHEMAS)
def test_typical_input_schemas_pass_the_realtime_checks(schema: dict[str, object]) -> None:
    declaration = ToolDeclaration("home__HassTurnOn", "Turns on a device", schema)
    update = SessionUpdate(SessionSettings(tools=(declaration,)))
    for dialect in Dialect:
        assert check_client_event(dialect.value, client_event_message(update, dialect)) == []


async def test_a_wrong_token_costs_one_line_naming_the_server_and_never_shows_the_token(
    http_server: HttpMcpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token-9876543210\n")
    source = McpServers(environ={})
    server = McpServerConfig(name="home", url=http_server.url, token_file=str(wrong))
    await source.list_now((server,))
    assert await source.declarations((server,)) == ()
    [line] = [r.getMessage() for r in caplog.records if "MCP server home" in r.getMessage()]
    assert "cannot list its tools" in line and "401" in line
    assert "not-the-token" not in caplog.text
    assert "refused POST without the token" in http_server.stop()


async def test_a_missing_token_file_is_named(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    source = McpServers(environ={})
    missing = tmp_path / "nope.token"
    server = McpServerConfig(name="home", url="http://127.0.0.1:9/mcp", token_file=str(missing))
    await source.list_now((server,))
    assert await source.declarations((server,)) == ()
    assert f"tools.mcp home token_file {missing}: no such file" in caplog.text


async def test_the_token_comes_from_a_systemd_credential_named_like_the_file(
    http_server: HttpMcpServer, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "home.token").write_text(TOKEN)
    unreadable_here = tmp_path / "root-only" / "home.token"  # as /etc/talkbox/... is
    source = McpServers(environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    server = McpServerConfig(name="home", url=http_server.url, token_file=str(unreadable_here))
    await source.list_now((server,))
    assert len(await source.declarations((server,))) == 4


async def test_a_tool_that_fails_is_answered_with_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = McpServers(environ={})
    await source.list_now((stdio(),))
    await source.declarations((stdio(),))
    output = json.loads(await runner(source).run("local__fail", "{}"))
    assert output["error"].startswith("MCP server local reported an error: ")
    assert output["error"].endswith("the garage door is jammed")
    assert "tool local__fail failed: MCP server local reported an error" in caplog.text


async def test_a_call_that_hangs_is_given_up_at_the_time_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = McpServers(environ={})
    await source.list_now((stdio(),))
    await source.declarations((stdio(),))
    started = time.monotonic()
    output = json.loads(await runner(source, timeout=2.0).run("local__hang", "{}"))
    assert time.monotonic() - started < 3.0, "the runner does not wait for the clean-up"
    assert output == {"error": "the tool did not finish within 2 s"}
    assert "tool local__hang did not finish within 2 s" in caplog.text


async def test_a_server_that_is_not_there_costs_a_line_and_the_call_an_error(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    source = McpServers(environ={})
    gone = McpServerConfig(name="gone", command=(str(tmp_path / "no-such-server"),))
    refused = McpServerConfig(name="down", url="http://127.0.0.1:9/mcp")
    started = time.monotonic()
    await source.list_now((gone, refused))
    assert time.monotonic() - started < mcp_servers.FIRST_LISTING_WAIT_SECONDS
    assert await source.declarations((gone, refused)) == ()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2, lines
    assert any(line.startswith("MCP server gone: cannot list its tools (FileNotFoundError")
               for line in lines), lines
    assert any(line.startswith("MCP server down: cannot list its tools (") for line in lines)


async def test_a_server_stopped_after_listing_answers_calls_with_an_error(
    token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = McpServers(environ={})
    with HttpMcpServer(token=TOKEN) as server:
        config = McpServerConfig(name="home", url=server.url, token_file=str(token_file))
        await source.list_now((config,))
        assert len(await source.declarations((config,))) == 4
    output = json.loads(await runner(source).run("home__turn_on", '{"entity": "hall"}'))
    assert output["error"].startswith("MCP server home failed: ")
    assert "tool home__turn_on failed: MCP server home failed" in caplog.text


async def test_a_slow_server_is_not_waited_for_beyond_the_first_listing_wait(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mcp_servers, "FIRST_LISTING_WAIT_SECONDS", 3.0)
    source = McpServers(environ={})
    mute = McpServerConfig(name="mute", command=tuple(server_command("mute")))
    silent = McpServerConfig(name="silent", command=tuple(silent_command()))
    await source.list_now((stdio(),))  # its start-up is not what this test times
    started = time.monotonic()
    declarations = await source.declarations((stdio(), mute, silent))
    waited = time.monotonic() - started
    assert 2.9 < waited < 4.0
    assert [d.name.split("__")[0] for d in declarations] == ["local"] * 4
    assert "MCP server mute has not listed its tools within 3 s" in caplog.text

    started = time.monotonic()
    again = await source.declarations((stdio(), mute, silent))
    assert time.monotonic() - started < 0.1, "no second wait: the listings go on meanwhile"
    assert again == declarations
    await source.aclose()


async def test_a_listing_is_reused_while_fresh_and_refreshed_behind_a_stale_one() -> None:
    now = [0.0]
    source = McpServers(environ={}, clock=lambda: now[0])
    server = stdio()
    await source.list_now((server,))
    first = await source.declarations((server,))
    started = time.monotonic()
    assert await source.declarations((server,)) == first
    assert time.monotonic() - started < 0.05, "fresh: no server started"

    now[0] += mcp_servers.FRESH_SECONDS + 1
    started = time.monotonic()
    assert await source.declarations((server,)) == first, "stale, offered while refreshed"
    assert time.monotonic() - started < 0.05
    [listing] = source._listings.values()
    assert listing.refreshing is not None
    await listing.refreshing
    assert listing.fresh_until > now[0] + mcp_servers.FRESH_SECONDS - 1


async def test_a_tool_not_offered_is_not_called() -> None:
    source = McpServers(environ={})
    await source.list_now((stdio(),))
    await source.declarations((stdio(),))
    output = json.loads(await runner(source).run("local__rm_rf", "{}"))
    assert output == {"error": "there is no tool named 'local__rm_rf'"}


def test_the_token_file_is_never_in_the_environment_of_a_stdio_server() -> None:
    # The SDK passes a stdio server only HOME, LOGNAME, PATH, SHELL, TERM and USER: not the
    # daemon's TALKBOX_API_KEY or CREDENTIALS_DIRECTORY.
    from mcp.client.stdio import get_default_environment

    os.environ["TALKBOX_API_KEY"] = "sk-should-not-leak"
    try:
        assert set(get_default_environment()) <= {"HOME", "LOGNAME", "PATH", "SHELL", "TERM",
                                                  "USER"}
    finally:
        del os.environ["TALKBOX_API_KEY"]
