"""The control socket over a real unix socket: protocol, permissions, hostile clients, and a
hostile peer on the other end of `talkbox ctl`."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from talkbox.errors import TalkboxError
from talkbox.shell.control import (
    MAX_REPLY_BYTES,
    ControlServer,
    how_to_start_talkbox,
    parse_request,
    send_command,
    send_command_sync,
)


class FakeDaemon:
    """The daemon's side: answers the commands talkbox has, an error for anything else."""

    def __init__(self) -> None:
        self.muted = False
        self.calls: list[tuple[str, list[str]]] = []

    async def handle(self, command: str, args: list[str]) -> dict[str, Any]:
        self.calls.append((command, args))
        if command == "status":
            return {"state": "idle", "muted": self.muted}
        if command in ("mute", "unmute"):
            self.muted = command == "mute"
            return {"muted": self.muted}
        if command == "crash":
            raise RuntimeError("boom")
        if command == "hang":
            await asyncio.sleep(3600)
        return {"ok": False, "error": f"unknown command: {command}"}


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="tbc", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture
def daemon() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
async def server(socket_dir: Path, daemon: FakeDaemon) -> AsyncIterator[ControlServer]:
    control = ControlServer(str(socket_dir / "control.sock"), daemon.handle, group=None,
                            read_timeout=5.0)
    await control.start()
    yield control
    await control.close()


async def raw_exchange(path: str, payload: bytes, *, shut_write: bool = True) -> bytes:
    """Send bytes as a client and return everything the server sends back."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    await writer.drain()
    if shut_write:
        writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return reply


def decode(reply: bytes) -> dict[str, Any]:
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1, reply
    message = json.loads(reply)
    assert isinstance(message, dict)
    return message


async def test_round_trip(server: ControlServer, daemon: FakeDaemon) -> None:
    assert await send_command(server.path, "status") == {"ok": True, "state": "idle",
                                                         "muted": False}
    assert await send_command(server.path, "mute") == {"ok": True, "muted": True}
    assert await send_command(server.path, "status", ["verbose"]) == {
        "ok": True, "state": "idle", "muted": True}
    assert daemon.calls == [("status", []), ("mute", []), ("status", ["verbose"])]


async def test_socket_is_mode_0660(server: ControlServer) -> None:
    info = os.stat(server.path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660


async def test_socket_gets_the_group_when_it_exists(socket_dir: Path, daemon: FakeDaemon) -> None:
    # Any group other than our own primary one that we may give files to: as root any group,
    # otherwise one of our supplementary groups.
    candidates = (grp.getgrall() if os.geteuid() == 0
                  else [grp.getgrgid(gid) for gid in os.getgroups()])
    other = next(g for g in candidates if g.gr_gid != os.getegid())
    path = str(socket_dir / "grouped.sock")

    async with ControlServer(path, daemon.handle, group=other.gr_name):
        info = os.stat(path)
        assert info.st_gid == other.gr_gid
        assert stat.S_IMODE(info.st_mode) == 0o660


async def test_a_missing_group_is_not_an_error(socket_dir: Path, daemon: FakeDaemon) -> None:
    path = str(socket_dir / "nogroup.sock")
    async with ControlServer(path, daemon.handle, group="no-such-group-talkbox-test"):
        assert os.stat(path).st_gid == os.getegid()
        assert (await send_command(path, "status"))["ok"] is True


async def test_unknown_command_is_answered_by_the_handler(server: ControlServer) -> None:
    reply = await send_command(server.path, "dance")
    assert reply == {"ok": False, "error": "unknown command: dance"}
    assert (await send_command(server.path, "status"))["ok"] is True


async def test_a_failing_handler_becomes_an_error_reply(server: ControlServer) -> None:
    assert await send_command(server.path, "crash") == {"ok": False, "error": "crash failed: boom"}
    assert (await send_command(server.path, "status"))["ok"] is True


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json\n", "request is not valid JSON"),
        (b"\xff\xfe\n", "request is not valid JSON"),
        (b'["status"]\n', "request must be a JSON object"),
        (b'{"args": []}\n', 'request needs "command"'),
        (b'{"command": "mute", "args": "all"}\n', '"args" must be a list of strings'),
        (b'{"command": "mute", "args": [1]}\n', '"args" must be a list of strings'),
        (b'{"command": "mute", "sudo": true}\n', "unknown request fields: sudo"),
        (b"\n", "request is not valid JSON"),
    ],
)
async def test_malformed_requests_get_an_error(
    server: ControlServer, daemon: FakeDaemon, payload: bytes, error: str
) -> None:
    reply = decode(await raw_exchange(server.path, payload))
    assert reply["ok"] is False
    assert error in reply["error"]
    assert daemon.calls == []


async def test_a_request_without_newline_before_eof_is_accepted(server: ControlServer) -> None:
    reply = decode(await raw_exchange(server.path, b'{"command": "status"}'))
    assert reply["ok"] is True


@pytest.mark.parametrize("newline", [b"", b"\n"])
async def test_an_oversize_request_is_refused_and_the_server_carries_on(
    server: ControlServer, daemon: FakeDaemon, newline: bytes
) -> None:
    huge = b'{"command": "status", "args": ["' + b"x" * 200_000 + b'"]}' + newline
    reply = decode(await raw_exchange(server.path, huge))
    assert reply == {"ok": False, "error": "request larger than 4096 bytes"}
    assert daemon.calls == []
    assert (await send_command(server.path, "status"))["ok"] is True


async def test_a_silent_client_is_timed_out(socket_dir: Path, daemon: FakeDaemon) -> None:
    path = str(socket_dir / "silent.sock")
    async with ControlServer(path, daemon.handle, group=None, read_timeout=0.3):
        # Connects, sends half a request, then nothing: the read timeout answers it.
        reply = decode(await raw_exchange(path, b'{"command": ', shut_write=False))
        assert reply == {"ok": False, "error": "no complete request within 0.3 s"}
        assert daemon.calls == []


async def test_slow_clients_do_not_block_others(socket_dir: Path, daemon: FakeDaemon) -> None:
    path = str(socket_dir / "slow.sock")
    async with ControlServer(path, daemon.handle, group=None, read_timeout=30, max_clients=3):
        idle_clients = [await asyncio.open_unix_connection(path) for _ in range(2)]
        # Two slots are held by clients that send nothing; the third still serves.
        assert (await send_command(path, "status"))["ok"] is True
        for _reader, writer in idle_clients:
            writer.close()
            await writer.wait_closed()


async def test_a_full_socket_drops_its_oldest_idle_client_for_a_newcomer(
    socket_dir: Path, daemon: FakeDaemon
) -> None:
    path = str(socket_dir / "full.sock")
    async with ControlServer(path, daemon.handle, group=None, read_timeout=30, max_clients=2):
        oldest = await asyncio.open_unix_connection(path)
        await asyncio.sleep(0.05)  # accepted in this order
        newer = await asyncio.open_unix_connection(path)
        await asyncio.sleep(0.05)

        # Both places are held by silent clients (with 30 s left to speak): still served.
        assert (await send_command(path, "status"))["ok"] is True

        # The oldest silent one made room: closed without a word; the newer one still waits.
        assert await asyncio.wait_for(oldest[0].read(), 5) == b""
        newer[1].write(b'{"command": "status"}\n')
        assert decode(await asyncio.wait_for(newer[0].read(), 5))["ok"] is True
        for _reader, writer in (oldest, newer):
            writer.close()
            await writer.wait_closed()


async def test_too_many_clients_are_told_busy(socket_dir: Path, daemon: FakeDaemon) -> None:
    path = str(socket_dir / "busy.sock")
    async with ControlServer(path, daemon.handle, group=None, read_timeout=30, max_clients=1):
        hanging = asyncio.create_task(send_command(path, "hang", timeout=30))
        while not daemon.calls:
            await asyncio.sleep(0.01)
        assert await send_command(path, "status") == {
            "ok": False, "error": "busy: too many control clients"}
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging


async def test_close_cancels_a_hanging_command_and_removes_the_socket(
    socket_dir: Path, daemon: FakeDaemon
) -> None:
    path = str(socket_dir / "close.sock")
    control = ControlServer(path, daemon.handle, group=None)
    await control.start()
    hanging = asyncio.create_task(send_command(path, "hang", timeout=30))
    while not daemon.calls:
        await asyncio.sleep(0.01)

    await asyncio.wait_for(control.close(), 10)

    assert not os.path.exists(path)
    with pytest.raises(TalkboxError, match="invalid reply"):
        await hanging  # the connection closed without an answer
    await control.close()  # twice is fine


async def test_a_stale_socket_file_is_replaced(socket_dir: Path, daemon: FakeDaemon) -> None:
    path = str(socket_dir / "stale.sock")
    # What a crashed daemon leaves behind: a bound socket file nobody listens on.
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(path)
    leftover.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)

    async with ControlServer(path, daemon.handle, group=None):
        assert (await send_command(path, "status"))["ok"] is True


async def test_a_live_socket_is_not_stolen(server: ControlServer, daemon: FakeDaemon) -> None:
    second = ControlServer(server.path, daemon.handle, group=None)
    with pytest.raises(TalkboxError, match="another talkbox is already running"):
        await second.start()
    assert (await send_command(server.path, "status"))["ok"] is True


async def test_a_regular_file_in_the_way_is_left_alone(
    socket_dir: Path, daemon: FakeDaemon
) -> None:
    path = socket_dir / "control.sock"
    path.write_text("important")
    with pytest.raises(TalkboxError, match="is not a socket"):
        await ControlServer(str(path), daemon.handle, group=None).start()
    assert path.read_text() == "important"


async def test_close_leaves_a_successors_socket_alone(socket_dir: Path, daemon: FakeDaemon) -> None:
    path = str(socket_dir / "handover.sock")
    old = ControlServer(path, daemon.handle, group=None)
    await old.start()
    os.unlink(path)  # e.g. an operator cleaned up, and a new daemon bound the path
    async with ControlServer(path, daemon.handle, group=None):
        await old.close()
        assert (await send_command(path, "status"))["ok"] is True


async def test_send_command_says_when_talkbox_is_not_running(socket_dir: Path) -> None:
    with pytest.raises(TalkboxError, match="talkbox is not running"):
        await send_command(str(socket_dir / "absent.sock"), "status")


def test_the_start_advice_names_systemctl_only_where_systemd_runs() -> None:
    assert how_to_start_talkbox(True) == "start it with `sudo systemctl start talkbox`"
    elsewhere = how_to_start_talkbox(False)
    assert "systemctl" not in elsewhere
    assert elsewhere.endswith("`sudo -u talkbox talkbox run --config /etc/talkbox/config.toml`")


async def test_send_command_times_out_on_a_server_that_never_answers(socket_dir: Path) -> None:
    path = str(socket_dir / "mute.sock")
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    mute_server = await asyncio.start_unix_server(swallow, path=path)
    try:
        with pytest.raises(TalkboxError, match=r"did not answer .* within 0\.3 s"):
            await send_command(path, "status", timeout=0.3)
    finally:
        for writer in accepted:
            writer.close()
        mute_server.close()
        await mute_server.wait_closed()


async def test_send_command_sync_for_the_cli(server: ControlServer) -> None:
    reply = await asyncio.to_thread(send_command_sync, server.path, "unmute")
    assert reply == {"ok": True, "muted": False}


def test_parse_request() -> None:
    assert parse_request(b'{"command": "wake"}\n') == ("wake", [])
    assert parse_request(b'{"command": "mute", "args": ["5m"]}') == ("mute", ["5m"])
    with pytest.raises(ValueError, match="non-empty string"):
        parse_request(b'{"command": ""}')


# --- a hostile peer: text from the other end is shown only as clean, bounded lines ---------------

HOSTILE = "idle\x1b[2J\x1b]0;pwned\x07\r\n2099-01-01 00:00:00.000 ERROR talkbox: FAKE\u202e"


async def answering(path: str, reply: bytes) -> asyncio.Server:
    """A unix socket server that answers every connection with `reply`, whatever was asked."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(reply)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(answer, path=path)


async def talkbox_ctl(path: str) -> tuple[int, str, str]:
    """`talkbox ctl status --socket PATH` as its own process: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talkbox.cli", "ctl", "status", "--socket", path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


async def test_talkbox_ctl_reads_a_reply_over_the_limit_as_a_clear_error(
    socket_dir: Path,
) -> None:
    path = str(socket_dir / "huge.sock")
    line = json.dumps({"ok": True, "last_error": HOSTILE + "x" * 2 * 2**20}).encode() + b"\n"
    assert len(line) > MAX_REPLY_BYTES
    server = await answering(path, line)
    try:
        code, stdout, stderr = await talkbox_ctl(path)
    finally:
        server.close()
        await server.wait_closed()
    assert code == 1
    assert stdout == ""
    [message] = stderr.splitlines()
    assert f"longer than {MAX_REPLY_BYTES} bytes" in message, message
    assert "Separator" not in message and "Traceback" not in stderr


async def test_talkbox_ctl_prints_a_hostile_reply_as_clean_bounded_lines(
    socket_dir: Path,
) -> None:
    path = str(socket_dir / "hostile.sock")
    reply = {"ok": True, "state": HOSTILE, f"name{HOSTILE}": ["a\u2028b"], "long": "y" * 100_000}
    server = await answering(path, json.dumps(reply).encode() + b"\n")
    try:
        code, stdout, stderr = await talkbox_ctl(path)
    finally:
        server.close()
        await server.wait_closed()
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 3, lines  # one line per field: nothing the peer sent made more
    for char in ("\x1b", "\x07", "\r", "\u202e", "\u2028"):
        assert char not in stdout, repr(char)
    assert not any(line.startswith("2099-") for line in lines)
    assert lines[0].startswith("state: idle [2J ]0;pwned") and "FAKE" in lines[0]
    assert max(len(line) for line in lines) < 2100  # bounded, whatever the peer sent


async def test_the_daemon_never_sends_a_reply_longer_than_ctl_reads(socket_dir: Path) -> None:
    async def verbose(command: str, args: list[str]) -> dict[str, Any]:
        return {"last_error": "z" * 2 * 2**20}

    async with ControlServer(str(socket_dir / "v.sock"), verbose, group=None) as control:
        reply = await send_command(control.path, "status")
    assert reply == {"ok": False, "error": "the daemon's answer was too long to send"}
