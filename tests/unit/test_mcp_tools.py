"""MCP servers in the config, the names their tools are offered by (core/tool_names.py), and
the runner's handling of remote tools. The servers themselves: integration/test_mcp_servers.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from talkbox.config import parse_config
from talkbox.core.tool_names import function_names
from talkbox.errors import ConfigError
from talkbox.tools.runner import RemoteTool, ToolError, ToolRunner

REALTIME_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    return caught.value.problems


# --- config -------------------------------------------------------------------------------


def test_servers_by_url_and_by_command_are_read_in_both_toml_forms() -> None:
    inline = parse_config("""
[tools]
mcp = [
  { name = "home", url = "http://homeassistant.local:8123/api/mcp", token_file = "/etc/t" },
]
""", "test.toml")
    tables = parse_config("""
[[tools.mcp]]
name = "home"
url = "http://homeassistant.local:8123/api/mcp"
token_file = "/etc/t"

[[tools.mcp]]
name = "notes"
command = ["/usr/bin/notes", "--read-only"]
""", "test.toml")
    assert inline.tools.mcp == tables.tools.mcp[:1]
    assert tables.tools.mcp[1].command == ("/usr/bin/notes", "--read-only")


@pytest.mark.parametrize(("entry", "expected"), [
    ('name = "home"', "tools.mcp[0].command (not set; see tools.mcp[0].name at line 3): "
     "give either command"),
    ('name = "home"\nurl = "http://h/mcp"\ncommand = ["/bin/x"]', "tools.mcp[0].url (line 4): "
     "give either command"),
    ('name = "home"\ncommand = ["/bin/x"]\ntoken_file = "/t"', "tools.mcp[0].token_file "
     "(line 5): is only for a server reached by url"),
    ('name = "a b"\nurl = "http://h/"', 'tools.mcp[0].name (line 3): must be 1 to 20 letters'),
    ('name = "home"\nurl = "ftp://h/"', "tools.mcp[0].url (line 4): must be a URL like"),
    ('name = "home"\nurl = "http://me:pw@h/"', "tools.mcp[0].url (line 4): must not contain "
     "credentials"),
    ('name = "home"\nurl = "http://h/"\ntoken_file = "t"', "tools.mcp[0].token_file (line 5): "
     'must be "" or an absolute path'),
    ('name = "home"\ncommand = ["npx", "server"]', "tools.mcp[0].command (line 4): the first "
     "element must be the absolute path"),
    ('name = "home"\nurl = "http://h/"\ntoken = "secret"', "tools.mcp[0].token (line 5)"),
])
def test_a_bad_server_entry_is_refused_naming_the_key(entry: str, expected: str) -> None:
    problems = problems_of(f"\n[[tools.mcp]]\n{entry}\n")
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_two_servers_of_one_name_are_refused() -> None:
    [problem] = problems_of("""
[[tools.mcp]]
name = "home"
url = "http://a/"
[[tools.mcp]]
name = "home"
url = "http://b/"
""")
    assert problem.startswith('tools.mcp[1].name (line 6): "home" is used twice')


def test_a_token_in_the_config_is_never_echoed() -> None:
    problems = problems_of('[[tools.mcp]]\nname = "h"\nurl = "http://h/"\n'
                           'token_file = "eyJhbGciOiJIUzI1NiJ9.secret"\n')
    assert "eyJ" not in " ".join(problems)


# --- names --------------------------------------------------------------------------------


def test_tools_are_prefixed_by_their_server() -> None:
    assert function_names("home", ["HassTurnOn", "GetLiveContext"]) == {
        "HassTurnOn": "home__HassTurnOn", "GetLiveContext": "home__GetLiveContext"}


def test_two_servers_tools_of_one_name_do_not_collide() -> None:
    home = function_names("home", ["search"])
    notes = function_names("notes", ["search"], taken=home.values())
    assert home["search"] != notes["search"]


@pytest.mark.parametrize("tool", ["a.b/c", "x" * 200, "läuft", "", "with space", "a" * 58])
def test_every_name_is_one_the_realtime_api_takes(tool: str) -> None:
    [name] = function_names("server_name-20chars", [tool]).values()
    assert REALTIME_NAME.fullmatch(name), name
    assert name.startswith("server_name-20chars__")


def test_names_changed_alike_stay_apart_and_a_clash_is_left_out() -> None:
    names = function_names("s", ["a.b", "a/b", "a_b"])
    assert len(set(names.values())) == 3
    assert names["a_b"] == "s__a_b"
    taken = {"s__x"}
    assert function_names("s", ["x"], taken)["x"] != "s__x"


# --- the runner with remote tools ---------------------------------------------------------


def remote(call: Any) -> Any:
    return lambda name: RemoteTool(call) if name == "srv__tool" else None


async def test_a_remote_tool_gets_its_arguments_and_local_tools_come_first() -> None:
    seen = []

    async def call(arguments: dict[str, Any]) -> str:
        seen.append(arguments)
        return json.dumps({"result": "ok"})

    runner = ToolRunner({}, 5.0, remote(call))
    assert json.loads(await runner.run("srv__tool", '{"x": 1}')) == {"result": "ok"}
    assert seen == [{"x": 1}]
    assert "no tool named" in await runner.run("srv__other", "{}")
    assert "not valid JSON" in await runner.run("srv__tool", "{")
    assert seen == [{"x": 1}], "bad arguments never reach the server"


async def test_a_remote_tools_own_error_reaches_the_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def call(arguments: dict[str, Any]) -> str:
        raise ToolError("MCP server srv reported an error: no such light")

    output = await ToolRunner({}, 5.0, remote(call)).run("srv__tool", "{}")
    assert json.loads(output) == {"error": "MCP server srv reported an error: no such light"}
    assert "tool srv__tool failed: MCP server srv reported an error" in caplog.text


async def test_a_remote_call_that_will_not_stop_is_abandoned_at_the_limit() -> None:
    stopped = asyncio.Event()

    async def call(arguments: dict[str, Any]) -> str:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(1.0)  # a slow clean-up: a server process being stopped
            stopped.set()
        return "never"

    runner = ToolRunner({}, 0.2, remote(call))
    started = time.monotonic()
    output = await runner.run("srv__tool", "{}")
    assert time.monotonic() - started < 0.5, "not held up by the clean-up"
    assert json.loads(output) == {"error": "the tool did not finish within 0.2 s"}
    await asyncio.wait_for(stopped.wait(), 3)
