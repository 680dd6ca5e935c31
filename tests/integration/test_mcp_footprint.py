"""The MCP client works with only the packages the daemon's install has (requirements/
daemon.txt), which leaves out the SDK's server side (requirements/lock.py): a probe that can
import nothing else lists and calls a real stdio server and a real HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.mcp_server import HttpMcpServer, server_command

DAEMON_PINS = Path(__file__).resolve().parents[2] / "requirements" / "daemon.txt"
SERVER_SIDE = {"starlette", "sse_starlette", "uvicorn", "multipart", "python_multipart", "jwt",
               "cryptography", "click"}

PROBE = """
import asyncio, importlib.abc, importlib.machinery, importlib.metadata, json, site, sys
from packaging.utils import canonicalize_name

pins, stdio_command, url = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
pinned = {line.partition("==")[0] for line in open(pins) if "==" in line}
providers = importlib.metadata.packages_distributions()
allowed = {module for module, dists in providers.items()
           if pinned & {canonicalize_name(d) for d in dists}} | {"talkbox"}
refused = []

installed = tuple(site.getsitepackages())

class OnlyThePins(importlib.abc.MetaPathFinder):
    # Refuses what is installed in the virtualenv but not pinned for the daemon.
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top in allowed or top in sys.modules or path is not None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(top)
        where = spec and (spec.origin or "".join(spec.submodule_search_locations or ()))
        if not where or not where.startswith(installed):
            return None  # the standard library, or nowhere at all
        refused.append(top)
        raise ModuleNotFoundError(f"No module named {top!r} (not in the daemon's pins)")

sys.meta_path.insert(0, OnlyThePins())
from talkbox.config import McpServerConfig
from talkbox.tools.mcp_servers import McpServers

async def main():
    source = McpServers(environ={})
    servers = (McpServerConfig(name="local", command=tuple(stdio_command)),
               McpServerConfig(name="home", url=url))
    await source.list_now(servers)
    names = [d.name for d in await source.declarations(servers)]
    local = await source.tool("local__add").call({"a": 1, "b": 2})
    home = await source.tool("home__turn_on").call({"entity": "porch"})
    return names, local, home

names, local, home = asyncio.run(main())
loaded = sorted({m.partition(".")[0] for m in sys.modules} - set(sys.stdlib_module_names))
print(json.dumps({"names": names, "local": local, "home": home, "loaded": loaded,
                  "refused": sorted(set(refused))}))
"""


def test_the_client_lists_and_calls_with_only_the_daemons_pins() -> None:
    with HttpMcpServer() as http:
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, str(DAEMON_PINS), json.dumps(server_command()),
             http.url],
            capture_output=True, text=True, timeout=60,
        )
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout.splitlines()[-1])
    assert len(result["names"]) == 8
    assert json.loads(result["local"]) == {"result": 3}
    assert json.loads(result["home"]) == {"result": "porch is on"}
    assert not SERVER_SIDE & set(result["loaded"]), result["loaded"]
    # What the SDK tried and went without (optional imports it guards), for the record.
    assert not SERVER_SIDE & set(result["refused"]), result["refused"]


def test_the_daemon_pins_hold_the_client_and_not_the_server_side() -> None:
    pinned = {line.partition("==")[0] for line in DAEMON_PINS.read_text().splitlines()
              if "==" in line}
    assert {"mcp", "mcp-types", "httpx2", "anyio", "jsonschema"} <= pinned
    assert not {"starlette", "sse-starlette", "uvicorn", "python-multipart", "pyjwt",
                "cryptography"} & pinned
