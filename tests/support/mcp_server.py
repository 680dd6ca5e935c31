"""Real MCP servers for the tests, built with the SDK's MCPServer (FastMCP in SDK 1.x).

Run as a program (`python tests/support/mcp_server.py KIND TRANSPORT [TOKEN]`), as talkbox
runs a stdio server, or as a streamable-HTTP server on loopback that prints
`listening on PORT` first and, given a TOKEN, refuses every request without
`Authorization: Bearer TOKEN` (and writes each refusal to stderr).

KIND "home": `turn_on(entity)` and `add(a, b)`, both answering; `fail()` raises, so the
server reports a tool error; `hang()` never answers. KIND "mute": answers the handshake and
never the tool list. `server_command()` and `HttpMcpServer` start them from a test.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def write_token_file(directory: Path, token: str) -> Path:
    """A token file as an owner makes one: the token on one line, readable by its owner only."""
    path = directory / "home.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def server_command(kind: str = "home") -> list[str]:
    """The argv of a stdio server (absolute program, as [[tools.mcp]] command wants)."""
    return [sys.executable, str(HERE), kind, "stdio"]


def silent_command() -> list[str]:
    """A program that starts and never says anything: a hung stdio server."""
    return [sys.executable, "-c", "import time; time.sleep(600)"]


class HttpMcpServer:
    """A "home" server over streamable HTTP on 127.0.0.1, in a child process."""

    def __init__(self, token: str | None = None, kind: str = "home") -> None:
        argv = [sys.executable, str(HERE), kind, "http"] + ([token] if token else [])
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"the MCP test server did not start: {line!r}")
        self.port = int(line.split()[-1])
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> str:
        """Stop it; what it wrote to stderr."""
        self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err

    def __enter__(self) -> HttpMcpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build(kind: str) -> Any:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("talkbox-test-" + kind)
    if kind == "home":

        @server.tool()
        def turn_on(entity: str) -> str:
            """Turn on a light or switch by its name."""
            return f"{entity} is on"

        @server.tool()
        def add(a: int, b: int) -> int:
            """Add two whole numbers."""
            return a + b

        @server.tool()
        def fail() -> str:
            """Always fails."""
            raise ToolError("the garage door is jammed")

        @server.tool()
        async def hang() -> str:
            """Never answers."""
            await asyncio.sleep(3600)
            return "too late"

    return server


def _with_token(app: Any, token: str) -> Any:
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            print(f"refused {scope['method']} without the token", file=sys.stderr, flush=True)
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"401: Unauthorized"})
            return
        await app(scope, receive, send)

    return guarded


def serve_http(server: Any, token: str | None) -> None:
    import uvicorn

    app = server.streamable_http_app()
    if token:
        app = _with_token(app, token)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections wait in the backlog until uvicorn accepts them
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


def serve_mute_stdio() -> None:
    """Answer `initialize` (and nothing after): a server that hangs on listing its tools."""
    import json

    for line in sys.stdin:
        message = json.loads(line)
        if message.get("method") == "initialize":
            result = {"protocolVersion": message["params"]["protocolVersion"],
                      "capabilities": {"tools": {}},
                      "serverInfo": {"name": "mute", "version": "1"}}
            print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}),
                  flush=True)


def main() -> None:
    kind, transport, *token = sys.argv[1:]
    if kind == "mute":
        serve_mute_stdio()
        return
    server = build(kind)
    if transport == "stdio":
        server.run("stdio")
    else:
        serve_http(server, token[0] if token else None)


if __name__ == "__main__":
    main()
