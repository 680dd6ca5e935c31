"""MCP servers through the real `talkbox run`: real servers built with the SDK (one a child
process over stdio, one over streamable HTTP with a bearer token), the fake Realtime service
scripting the model's calls. The servers' tools are declared in the session.update (checked
against the openai type models by the fake service), the calls reach the servers, and their
answers come back as function_call_output items; a server gone mid-conversation costs an
error output, and the conversation goes on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from e2e.conftest import API_KEY, one_breath, service_config
from support.daemon import run_daemon
from support.fake_realtime import ServerThread
from support.mcp_server import HttpMcpServer, server_command, write_token_file
from support.service import sessions
from support.speech import concat, silence
from talkbox.config import ToolsConfig
from talkbox.tools.builtin import toolbox

pytestmark = pytest.mark.slow

TOKEN = "e2e-mcp-token-0123456789abcdef"
# The built-in tools the default [tools] offers, ahead of the servers'.
BUILT_IN = [d.name for d in toolbox(ToolsConfig()).declarations]
TEST_TOOLS = ["turn_on", "add", "fail", "hang"]


def mcp_config(fake_service: ServerThread, http_url: str, token_file: Path,
               stdio: bool = True) -> str:
    servers = f"""
[[tools.mcp]]
name = "home"
url = "{http_url}"
token_file = "{token_file}"
"""
    if stdio:
        servers += f"""
[[tools.mcp]]
name = "local"
command = {json.dumps(server_command())}
"""
    return service_config(fake_service.url_base, extra=servers)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return write_token_file(tmp_path, TOKEN)


def test_mcp_tools_are_offered_and_their_calls_answered_by_the_real_servers(
    tmp_path: Path, fake_service: ServerThread, reply_speech: bytes, token_file: Path
) -> None:
    fake_service.server.reply_pcm = reply_speech
    fake_service.server.function_calls = [[
        ("home__turn_on", json.dumps({"entity": "kitchen light"})),
        ("local__add", json.dumps({"a": 2, "b": 40})),
    ]]
    spoken, _ = one_breath("hey jarvis", "turn on the kitchen light")
    with HttpMcpServer(token=TOKEN) as http, run_daemon(
        tmp_path, mcp_config(fake_service, http.url, token_file), api_key=API_KEY
    ) as run:
        run.wait_ready()
        # Listed as the daemon starts: the first conversation need not wait for them.
        run.wait_for_log("MCP server home offers 4 tools", timeout=30)
        run.wait_for_log("MCP server local offers 4 tools", timeout=30)
        run.say(concat(silence(1.5), spoken, silence(1.0)).tobytes())
        run.wait_for_log("state idle (", timeout=40)
        time.sleep(1.0)
        code, _ = run.terminate()
        heard, log = run.heard(), run.log()
        refusals = http.stop()
    assert code == 0, log
    assert fake_service.server.protocol_violations == [], log
    assert "refused" not in refusals, "every request carried the token"
    assert TOKEN not in log

    [session] = sessions(fake_service)
    assert [tool["name"] for tool in session.tools] == BUILT_IN + [
        f"{server}__{tool}" for server in ("home", "local") for tool in TEST_TOOLS]
    [turn_on] = [t for t in session.tools if t["name"] == "home__turn_on"]
    assert turn_on["parameters"]["required"] == ["entity"]
    outputs = {o["call_id"]: json.loads(o["output"]) for o in session.function_outputs}
    by_name = {c["name"]: outputs[c["call_id"]] for c in session.function_calls_made}
    assert by_name == {"home__turn_on": {"result": "kitchen light is on"},
                       "local__add": {"result": 42}}
    assert reply_speech in heard
    assert "tool home__turn_on answered in" in log and "tool local__add answered in" in log
    assert "has not listed its tools" not in log, "nothing was waited for"


def test_a_server_gone_mid_conversation_is_answered_with_an_error_and_the_talk_goes_on(
    tmp_path: Path, fake_service: ServerThread, reply_speech: bytes, token_file: Path
) -> None:
    fake_service.server.reply_pcm = reply_speech
    fake_service.server.function_calls = [[("home__turn_on", '{"entity": "hall"}')]]
    spoken, _ = one_breath("hey jarvis", "turn on the light in the hall please")
    with HttpMcpServer(token=TOKEN) as http, run_daemon(
        tmp_path, mcp_config(fake_service, http.url, token_file, stdio=False), api_key=API_KEY
    ) as run:
        run.wait_ready()
        run.wait_for_log("MCP server home offers 4 tools", timeout=30)
        http.process.kill()  # listed, then gone before the model's call
        run.say(concat(silence(1.5), spoken, silence(1.0)).tobytes())
        run.wait_for_log("state idle (", timeout=40)
        time.sleep(1.0)
        code, _ = run.terminate()
        heard, log = run.heard(), run.log()
    assert code == 0, log
    assert fake_service.server.protocol_violations == [], log

    [session] = sessions(fake_service)
    assert "home__turn_on" in [tool["name"] for tool in session.tools]
    [output] = session.function_outputs
    error = json.loads(output["output"])["error"]
    assert error.startswith("MCP server home failed: "), error
    [line] = [line for line in log.splitlines() if "tool home__turn_on failed" in line]
    assert "MCP server home failed" in line
    assert reply_speech in heard, "the model's apology still plays"
    assert len(session.client_events_of("response.create")) == 2
