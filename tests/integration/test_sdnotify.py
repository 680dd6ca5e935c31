"""sd_notify through a real datagram socket, the watchdog gate, and journald/stderr logging."""

from __future__ import annotations

import array
import io
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from systemd.journal import JournalHandler

from talkbox.shell.systemd import (
    Notifier,
    WatchdogGate,
    journal_fields,
    journal_handler,
    setup_logging,
    stderr_is_journal,
)

# --- a notify socket like systemd's -------------------------------------------------------


class NotifySocket:
    """A bound SOCK_DGRAM socket playing systemd: receives messages with the sender's pid."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        # SO_PASSCRED: the kernel attaches the sender's credentials, as systemd checks them
        # for NotifyAccess=main.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(5)

    def receive(self) -> tuple[str, int]:
        """The next message and the pid that sent it."""
        creds_size = struct.calcsize("3i")
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
        sender_pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender_pid = array.array("i", payload[:creds_size])[0]
        return data.decode(), sender_pid

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(5)
        return True


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    # A short directory: AF_UNIX paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="tbn", dir="/tmp") as directory:
        listener = NotifySocket(os.path.join(directory, "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
        yield listener
        listener.sock.close()


def test_every_message_arrives_from_this_process(notify_socket: NotifySocket) -> None:
    notifier = Notifier(monotonic_usec=lambda: 123456789)
    assert notifier.enabled

    assert notifier.ready()
    assert notify_socket.receive() == ("READY=1", os.getpid())
    assert notifier.status("listening\nfor the wake word")
    assert notify_socket.receive() == ("STATUS=listening for the wake word", os.getpid())
    assert notifier.watchdog()
    assert notify_socket.receive() == ("WATCHDOG=1", os.getpid())
    assert notifier.reloading()
    assert notify_socket.receive() == ("RELOADING=1\nMONOTONIC_USEC=123456789", os.getpid())
    assert notifier.stopping()
    assert notify_socket.receive() == ("STOPPING=1", os.getpid())


def test_reloading_stamps_the_monotonic_clock(notify_socket: NotifySocket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    message, _pid = notify_socket.receive()
    fields = dict(line.split("=", 1) for line in message.splitlines())
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_a_daemon_process_is_the_sender_systemd_sees(notify_socket: NotifySocket) -> None:
    # What NotifyAccess=main relies on: the message comes from the main process's pid.
    child = subprocess.Popen(
        [sys.executable, "-c",
         "from talkbox.shell.systemd import Notifier; n = Notifier(); "
         "import sys; sys.exit(0 if n.ready() and n.status('up') else 1)"],
    )
    assert child.wait(timeout=30) == 0
    assert notify_socket.receive() == ("READY=1", child.pid)
    assert notify_socket.receive() == ("STATUS=up", child.pid)


def test_without_notify_socket_everything_is_a_no_op(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET")
    notifier = Notifier()

    assert not notifier.enabled
    results = [notifier.ready(), notifier.status("x"), notifier.watchdog(),
               notifier.reloading(), notifier.stopping()]

    assert results == [False] * 5
    assert not notify_socket.pending()


def test_a_vanished_notify_socket_does_not_raise(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready() is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another pid
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert Notifier(environ=environ).watchdog_interval() == expected


# --- WatchdogGate (pure) ------------------------------------------------------------------


def test_gate_allows_pings_while_audio_flows() -> None:
    gate = WatchdogGate(max_silence_seconds=5.0, started_at=100.0)
    for now in (100.5, 101.0, 104.0, 108.0):
        gate.feed_seen(now)
        assert gate.should_ping(now + 4.9)


def test_gate_withholds_pings_when_capture_stalls() -> None:
    gate = WatchdogGate(max_silence_seconds=5.0, started_at=100.0)
    gate.feed_seen(101.0)
    assert gate.should_ping(106.0)
    assert not gate.should_ping(106.01)
    assert not gate.should_ping(200.0)
    gate.feed_seen(200.5)  # capture recovered
    assert gate.should_ping(201.0)


def test_gate_gives_start_up_a_grace_period_but_no_more() -> None:
    gate = WatchdogGate(max_silence_seconds=10.0, started_at=50.0)
    assert gate.should_ping(59.0)
    assert not gate.should_ping(60.5)  # capture never delivered anything


def test_gate_ignores_timestamps_from_the_past() -> None:
    gate = WatchdogGate(max_silence_seconds=5.0, started_at=0.0)
    gate.feed_seen(100.0)
    gate.feed_seen(3.0)  # a late report must not move the mark back
    assert gate.should_ping(104.0)


def test_gate_rejects_a_nonsense_window() -> None:
    with pytest.raises(ValueError, match="positive"):
        WatchdogGate(max_silence_seconds=0, started_at=0.0)


# --- logging ------------------------------------------------------------------------------


@pytest.fixture
def clean_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)


def journal_identity(stream: Any) -> str:
    info = os.fstat(stream.fileno())
    return f"{info.st_dev}:{info.st_ino}"


def make_record(extra: dict[str, Any], message: str = "state changed") -> logging.LogRecord:
    logger = logging.getLogger("talkbox.test")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, (), None,
                             extra=extra)


def test_stderr_lines_are_readable_and_show_the_extras(clean_root_logger: None) -> None:
    stream = io.StringIO()
    setup_logging("info", environ={}, stream=stream)

    logging.getLogger("talkbox.app").info(
        "state %s", "listening",
        extra={"TALKBOX_STATE": "listening", "CONVERSATION_ID": "c-17", "note": "two words"})
    logging.getLogger("talkbox.app").debug("not shown at info")

    [line] = stream.getvalue().splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO talkbox\.app: state listening "
        r'TALKBOX_STATE=listening CONVERSATION_ID=c-17 note="two words"',
        line,
    ), line


def test_setup_logging_replaces_its_own_handler(clean_root_logger: None) -> None:
    first = setup_logging("debug", environ={}, stream=io.StringIO())
    second = setup_logging("warning", environ={}, stream=io.StringIO())

    root = logging.getLogger()
    assert second in root.handlers and first not in root.handlers
    assert root.level == logging.WARNING


def test_setup_logging_rejects_an_unknown_level(clean_root_logger: None) -> None:
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        setup_logging("loud", environ={}, stream=io.StringIO())


def test_journal_is_used_when_stderr_is_the_journal_stream(
    clean_root_logger: None, tmp_path: Path
) -> None:
    # systemd sets JOURNAL_STREAM to the device:inode of the stream it connected; a file
    # stands in for it. No journald runs here: sending must still not fail.
    with (tmp_path / "stderr").open("w") as fake_stderr:
        environ = {"JOURNAL_STREAM": journal_identity(fake_stderr)}
        assert stderr_is_journal(environ, fake_stderr)
        handler = setup_logging("info", environ=environ, stream=fake_stderr)

        assert isinstance(handler, JournalHandler)
        handler.handleError = lambda record: pytest.fail(f"journal emit failed for {record}")
        logging.getLogger("talkbox.app").info(
            "state changed", extra={"TALKBOX_STATE": "idle", "CONVERSATION_ID": "c-1"})
        logging.getLogger("talkbox.app").warning("with PRIORITY clash", extra={"PRIORITY": "x"})
    assert (tmp_path / "stderr").read_text() == ""  # nothing went to the stream


def test_an_inherited_journal_stream_for_another_file_means_stderr(
    clean_root_logger: None, tmp_path: Path
) -> None:
    with (tmp_path / "a").open("w") as journal, (tmp_path / "b").open("w") as terminal:
        environ = {"JOURNAL_STREAM": journal_identity(journal)}
        handler = setup_logging("info", environ=environ, stream=terminal)
    assert not isinstance(handler, JournalHandler)


def test_extras_reach_the_journal_as_fields() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def capture(message: str, **fields: Any) -> None:
        sent.append((message, fields))

    handler = journal_handler(sender=capture)
    assert handler is not None
    handler.handle(make_record(
        {"TALKBOX_STATE": "responding", "CONVERSATION_ID": "c-9", "lowercase": "dropped",
         "PRIORITY": "clash", "LOGGER": "clash", "_SYSTEMD_UNIT": "forged"}))

    [(message, fields)] = sent
    assert message == "state changed"
    assert fields["TALKBOX_STATE"] == "responding"
    assert fields["CONVERSATION_ID"] == "c-9"
    assert fields["PRIORITY"] == "6"  # ours, not the caller's
    assert fields["LOGGER"] == "talkbox.test"
    assert fields["SYSLOG_IDENTIFIER"] == "talkbox"
    # journald would silently drop these or reject the whole call: none may be sent.
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", name) for name in fields), sorted(fields)
    assert "_SYSTEMD_UNIT" not in fields


def test_journal_fields_keep_valid_names_only() -> None:
    record = make_record({"TALKBOX_STATE": "idle", "count": 3, "X" * 65: "too long",
                          "MESSAGE": "clash", "ERRNO": 5})
    assert journal_fields(record) == {"TALKBOX_STATE": "idle", "ERRNO": "5"}
