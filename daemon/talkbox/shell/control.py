"""The local control socket: `talkbox ctl status|mute|unmute|wake|stop|timers|volume` talks to
the daemon.

Owns the wire format and both ends of it. A client connects to a unix stream socket, sends
one JSON line `{"command": "...", "args": [...]}` and gets one JSON line back:
`{"ok": true, ...}` or `{"ok": false, "error": "..."}`; then the connection closes.

The daemon decides what commands mean: `ControlServer` passes (command, args) to its handler
and answers whatever the handler returns. The server itself only guards the daemon: a request
larger than `max_request_bytes` or slower than `read_timeout` is answered with an error and
dropped, at most `max_clients` connections are open at once, a failing handler becomes an
error reply, never a crash, and no reply is longer than `MAX_REPLY_BYTES`. Idle connections
cannot lock others out: when all places are taken, the oldest connection still waiting for its
request is closed to make room (a real client sends its request as soon as it connects); only
when every place is running a command is a newcomer told "busy". Each side treats what the
other sent as outside text: shown only through `safe_text.safe_line`, and a reply line longer
than the limit is a clear error for `talkbox ctl`, not a broken one.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from talkbox.config import DEFAULT_CONFIG_PATH
from talkbox.errors import TalkboxError
from talkbox.safe_text import MAX_PROSE_CHARS, safe_line
from talkbox.shell.systemd import SYSTEMD_RUNTIME_DIRECTORY, systemd_is_running

# Named as before the shell became a package: owners' log filters match these names.
_log = logging.getLogger("talkbox.control")

ControlHandler = Callable[[str, list[str]], Awaitable[dict[str, Any]]]

SOCKET_MODE = 0o660
DEFAULT_MAX_REQUEST_BYTES = 4096
# `talkbox ctl` writes its request right after connecting; a client silent for a second is
# not going to send one.
DEFAULT_READ_TIMEOUT = 1.0
DEFAULT_MAX_CLIENTS = 8
# Replies carry status, not bulk data; a larger one means the other end is not talkbox.
MAX_REPLY_BYTES = 1 << 20


def _error_reply(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def parse_request(line: bytes) -> tuple[str, list[str]]:
    """Decode one request line into (command, args). Raises ValueError saying what is wrong."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("request is not valid JSON") from None
    if not isinstance(request, dict):
        raise ValueError('request must be a JSON object like {"command": "status"}')
    command = request.get("command")
    if not isinstance(command, str) or not command:
        raise ValueError('request needs "command": a non-empty string')
    args = request.get("args", [])
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise ValueError('"args" must be a list of strings')
    unknown = sorted(set(request) - {"command", "args"})
    if unknown:
        raise ValueError(f"unknown request fields: {', '.join(map(safe_line, unknown))}")
    return command, args


def encode_message(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class ControlServer:
    """Unix stream socket server for control commands, owned by the daemon.

    `await start()` binds `path` (replacing a stale socket file left by a crashed daemon),
    sets mode 0660 and, when `group` exists, that group. `await close()` stops serving,
    cancels requests in progress and removes the socket file.
    """

    def __init__(
        self,
        path: str,
        handler: ControlHandler,
        group: str | None = "talkbox",
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        self.path = path
        self._handler = handler
        self._group = group
        self._max_request_bytes = max_request_bytes
        self._read_timeout = read_timeout
        self._max_clients = max_clients
        self._server: asyncio.AbstractServer | None = None
        self._socket_identity: tuple[int, int] | None = None
        self._client_tasks: set[asyncio.Task[None]] = set()
        # Connections whose request has not arrived yet, oldest first (dicts keep order).
        self._waiting: dict[asyncio.Task[None], None] = {}

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        await self._remove_stale_socket()
        try:
            self._server = await asyncio.start_unix_server(
                self._serve_client, path=self.path, limit=self._max_request_bytes
            )
        except OSError as error:
            raise TalkboxError(
                f"cannot create the control socket {self.path} ([control] socket): {error.strerror}"
            ) from None
        info = os.stat(self.path)
        self._socket_identity = (info.st_dev, info.st_ino)
        self._set_owner_and_mode()
        _log.debug("control socket listening on %s", self.path)

    async def _remove_stale_socket(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise TalkboxError(
                f"{self.path} exists and is not a socket; remove it or change [control] socket"
            )
        if await _someone_listens(self.path):
            raise TalkboxError(f"another talkbox is already running: it answers on {self.path}")
        _log.info("removing stale control socket %s", self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _set_owner_and_mode(self) -> None:
        if self._group is not None:
            try:
                gid = grp.getgrnam(self._group).gr_gid
            except KeyError:
                gid = None  # a development machine without the talkbox group
            if gid is not None and os.stat(self.path).st_gid != gid:
                try:
                    os.chown(self.path, -1, gid)
                except PermissionError:
                    _log.warning(
                        "cannot give %s to group %s; only %s can use it",
                        self.path,
                        self._group,
                        os.getuid(),
                    )
        os.chmod(self.path, SOCKET_MODE)

    async def close(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for task in list(self._client_tasks):
            task.cancel()
        await asyncio.gather(*self._client_tasks, return_exceptions=True)
        await server.wait_closed()
        self._remove_own_socket()

    def _remove_own_socket(self) -> None:
        # Only our own file: a successor daemon may already have bound a new one there.
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self._socket_identity:
            os.unlink(self.path)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        has_room = len(self._client_tasks) < self._max_clients or self._drop_oldest_waiting()
        self._client_tasks.add(task)
        try:
            if not has_room:
                await self._reply(writer, _error_reply("busy: too many control clients"))
                return
            self._waiting[task] = None
            await self._reply(writer, await self._answer(reader, task))
        except (ConnectionError, TimeoutError) as error:
            _log.debug("control client went away: %s", error)
        finally:
            self._client_tasks.discard(task)
            self._waiting.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                # Bounded: wait_closed can hang on a peer that stopped reading.
                await asyncio.wait_for(writer.wait_closed(), self._read_timeout)

    def _drop_oldest_waiting(self) -> bool:
        """Close the oldest connection still silent, to make room; False if there is none."""
        if not self._waiting:
            return False
        oldest = next(iter(self._waiting))
        del self._waiting[oldest]
        _log.debug("control socket full: dropping a client that sent nothing yet")
        oldest.cancel()
        # It still counts until its task ends; the newcomer takes its place meanwhile.
        self._client_tasks.discard(oldest)
        return True

    async def _answer(
        self, reader: asyncio.StreamReader, task: asyncio.Task[None]
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._read_timeout):
                line = await reader.readuntil(b"\n")
        except TimeoutError:
            return _error_reply(f"no complete request within {self._read_timeout:g} s")
        except asyncio.LimitOverrunError:
            await self._discard_input(reader)
            return _error_reply(f"request larger than {self._max_request_bytes} bytes")
        except asyncio.IncompleteReadError as error:
            # The client closed its sending side without a newline: take what it sent.
            line = error.partial
            if not line.strip():
                return _error_reply("empty request")
        # The request is in: from here on this connection is busy, not idle.
        self._waiting.pop(task, None)
        try:
            command, args = parse_request(line)
        except ValueError as error:
            return _error_reply(str(error))
        try:
            result = await self._handler(command, args)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            _log.exception("control command %s failed", safe_line(command))
            return _error_reply(f"{safe_line(command)} failed: {safe_line(str(error))}")
        if not isinstance(result, dict):
            _log.error(
                "control handler returned %r for %s, not a dict", result, safe_line(command)
            )
            return _error_reply(f"{safe_line(command)} failed: the daemon gave no answer")
        return {"ok": True, **result} if "ok" not in result else result

    async def _discard_input(self, reader: asyncio.StreamReader) -> None:
        # Closing a unix socket with unread input resets the peer, which would then never see
        # our error reply; so read on to its end, bounded in bytes and time.
        budget = 64 * self._max_request_bytes
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._read_timeout):
                while budget > 0:
                    chunk = await reader.read(self._max_request_bytes)
                    if not chunk:
                        return
                    budget -= len(chunk)

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        try:
            data = encode_message(reply)
        except (TypeError, ValueError):
            _log.error("control reply is not JSON-serialisable: %r", reply)
            data = encode_message(_error_reply("the daemon's answer could not be encoded"))
        if len(data) > MAX_REPLY_BYTES:
            # The client could not read it; say so instead of sending a line it must reject.
            _log.error("control reply of %d bytes is over the limit; not sent", len(data))
            data = encode_message(_error_reply("the daemon's answer was too long to send"))
        writer.write(data)
        async with asyncio.timeout(self._read_timeout):
            await writer.drain()


async def _someone_listens(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(probe, path), 1.0)
    except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
        return False
    except OSError:
        # EACCES and the like: someone else's socket; better not to delete it.
        return True
    finally:
        probe.close()
    return True


# As install.sh sets it up: the daemon runs as user talkbox with the installed config.
FOREGROUND_COMMAND = f"sudo -u talkbox talkbox run --config {DEFAULT_CONFIG_PATH}"


def how_to_start_talkbox(systemd_running: bool) -> str:
    """What to tell someone whose daemon is not running: systemctl only where systemd runs."""
    if systemd_running:
        return "start it with `sudo systemctl start talkbox`"
    return (
        f"systemd is not running on this machine (no {SYSTEMD_RUNTIME_DIRECTORY}), so run talkbox "
        f"in the foreground: `{FOREGROUND_COMMAND}`"
    )


async def send_command(
    path: str, command: str, args: Sequence[str] = (), timeout: float = 3.0
) -> dict[str, Any]:
    """Send one command to the daemon at `path` and return its reply.

    Raises TalkboxError, with what to do, when the daemon is not running, the socket is not
    ours to use, or no valid reply comes within `timeout` seconds.
    """
    request = encode_message({"command": command, "args": list(args)})
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path, limit=MAX_REPLY_BYTES)
            writer.write(request)
            await writer.drain()
            line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as error:
        line = error.partial  # closed without a newline: judge what came
    except asyncio.LimitOverrunError:
        raise TalkboxError(
            f"the reply on {path} is longer than {MAX_REPLY_BYTES} bytes, so it is not "
            "talkbox's; check that [control] socket names talkbox's socket"
        ) from None
    except TimeoutError:
        raise TalkboxError(f"talkbox did not answer on {path} within {timeout:g} s") from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise TalkboxError(
            f"talkbox is not running (nothing listens on {path}); "
            f"{how_to_start_talkbox(systemd_is_running())}"
        ) from None
    except PermissionError:
        raise TalkboxError(
            f"permission denied on {path}; run as root or add yourself to group talkbox "
            "(`sudo usermod -aG talkbox $USER`, then log in again)"
        ) from None
    except (OSError, ValueError) as error:
        raise TalkboxError(f"talking to talkbox on {path} failed: {error}") from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
    try:
        reply = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise TalkboxError(f"talkbox sent an invalid reply on {path}")
    return _safe_reply(reply)


def _safe_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply with its text made safe to print: names and text values each one safe line."""
    safe: dict[str, Any] = {}
    for name, value in reply.items():
        if not isinstance(value, bool | int | float) and value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            value = safe_line(text, MAX_PROSE_CHARS)
        safe[safe_line(name)] = value
    return safe


def send_command_sync(
    path: str, command: str, args: Sequence[str] = (), timeout: float = 3.0
) -> dict[str, Any]:
    """`send_command` for the command line (no event loop running)."""
    return asyncio.run(send_command(path, command, args, timeout))
