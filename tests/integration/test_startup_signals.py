"""Signals that reach `talkbox run` while it starts, before its event loop exists.

A SIGHUP used to kill a starting daemon (systemd counts that as a clean stop, so it was not
restarted). Now SIGHUP is remembered and applied as a reload once running, and SIGTERM ends
the start-up with exit status 0. "Before the loop" is seen from outside: the process already
catches the signal (SigCgt in /proc) but has no epoll instance yet (asyncio makes one).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from support.daemon import SOUND_CARD_CONFIG, DaemonRun, run_daemon, wait_until

pytestmark = pytest.mark.audio

START_TIMEOUT_S = 30.0
# Several signals in a row, as a restless operator or a script in a loop sends them.
REPEATS = 3


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler installed for `signum` (not default, not ignored)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def has_event_loop(pid: int) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == "anon_inode:[eventpoll]":
                return True
        except FileNotFoundError:
            continue
    return False


def signal_before_the_loop(daemon: DaemonRun, signum: int) -> None:
    """Send `signum` REPEATS times while the process catches it and runs no loop yet."""
    pid = daemon.process.pid
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert daemon.process.poll() is None, f"talkbox ended early:\n{daemon.log()}"
        assert "READY=1" not in daemon.notify.lines(), "no moment before the loop was found"
        assert time.monotonic() < deadline, "talkbox never caught the signal before its loop"
        try:
            if catches(pid, signum) and not has_event_loop(pid):
                break
        except FileNotFoundError:  # /proc entry gone: the poll above will say why
            pass
        time.sleep(0.001)
    for _ in range(REPEATS):
        daemon.process.send_signal(signum)
    # Checked after sending: had the loop existed by then, this test would prove nothing.
    assert not has_event_loop(pid), "the loop started before the signals were sent"


def test_sighup_during_start_up_is_applied_as_a_reload_once_running(tmp_path: Path) -> None:
    with run_daemon(tmp_path, SOUND_CARD_CONFIG) as daemon:
        daemon.microphone()
        config = tmp_path / "talkbox.toml"
        # Changed while starting: the reload must pick this up.
        config.write_text(SOUND_CARD_CONFIG.replace("{control_socket}", str(daemon.control_socket))
                          + "[turn]\nsilence_duration_ms = 700\n")

        signal_before_the_loop(daemon, signal.SIGHUP)

        daemon.wait_ready(START_TIMEOUT_S)
        daemon.wait_for_log("SIGHUP arrived during start-up", timeout=START_TIMEOUT_S)
        daemon.wait_for_log("reloaded", timeout=START_TIMEOUT_S)
        assert daemon.process.poll() is None
        # READY=1 once for the start-up; no RELOADING=1 before READY=1 was ever sent.
        lines = daemon.notify.lines()
        assert lines.count("READY=1") == 1 and "RELOADING=1" not in lines, lines
        status = daemon.ctl("status")
        assert status.returncode == 0 and "state: idle" in status.stdout, status
        # And a SIGHUP while running still reloads.
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "RELOADING=1" in daemon.notify.lines(), 10, "RELOADING=1")
        daemon.wait_for_log("reloaded", count=2, timeout=START_TIMEOUT_S)
        code, _ = daemon.terminate(timeout=10)
        assert code == 0
        assert "Traceback" not in daemon.log()


def test_sigterm_during_start_up_is_a_clean_exit(tmp_path: Path) -> None:
    with run_daemon(tmp_path, SOUND_CARD_CONFIG) as daemon:
        daemon.microphone()

        signal_before_the_loop(daemon, signal.SIGTERM)

        code = daemon.process.wait(timeout=10)
        assert code == 0, daemon.log()
        assert "READY=1" not in daemon.notify.lines()
        assert "Traceback" not in daemon.log()
