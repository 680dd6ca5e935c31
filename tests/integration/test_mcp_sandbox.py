"""The unit's sandbox lets the MCP client do its work: list and call a stdio server (a child
process, which inherits the sandbox) and an HTTP server on the network, under the kernel's
PR_SET_MDWE (what MemoryDenyWriteExecute=yes sets) and inside the SystemCallFilter= set.
See test_systemd_unit.py for how both rules are checked without systemd as PID 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from integration.test_systemd_unit import KNOWN_REFUSED, MDWE_PREAMBLE, syscall_group
from support.mcp_server import HttpMcpServer, server_command

PROBE = MDWE_PREAMBLE + r"""
import asyncio, json
from talkbox.config import McpServerConfig
from talkbox.tools.mcp_servers import McpServers

async def main():
    source = McpServers(environ={})
    servers = (McpServerConfig(name="local", command=tuple(json.loads(sys.argv[2]))),
               McpServerConfig(name="home", url=sys.argv[3]))
    await source.list_now(servers)
    print(len(await source.declarations(servers)), "tools listed")
    print(await source.tool("local__add").call({"a": 1, "b": 2}))
    print(await source.tool("home__add").call({"a": 3, "b": 4}))

asyncio.run(main())
"""


def run_probe(prefix: list[str], mode: str) -> subprocess.CompletedProcess[str]:
    with HttpMcpServer() as http:
        return subprocess.run(
            [*prefix, sys.executable, "-c", PROBE, mode, json.dumps(server_command()), http.url],
            capture_output=True, text=True, timeout=120, check=False)


def test_a_stdio_server_and_an_http_server_work_without_writable_executable_memory() -> None:
    result = run_probe([], "mdwe")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "write+execute memory refused", "8 tools listed", '{"result": 3}', '{"result": 7}']


def test_the_mcp_client_and_a_stdio_server_stay_inside_the_system_call_filter(
    tmp_path: Path,
) -> None:
    strace = shutil.which("strace")
    assert strace, "strace is needed (install.sh --dev installs it)"
    allowed = (syscall_group("@system-service") - syscall_group("@privileged")
               - syscall_group("@resources"))
    summary = tmp_path / "strace.txt"
    result = run_probe([strace, "-f", "-c", "-o", str(summary)], "plain")
    assert result.returncode == 0, result.stdout + result.stderr
    assert '{"result": 3}' in result.stdout

    used = set()
    for line in summary.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            used.add(fields[-1])
    assert {"execve", "connect", "pipe2"} <= used, sorted(used)
    assert used - allowed <= KNOWN_REFUSED, sorted(used - allowed - KNOWN_REFUSED)
