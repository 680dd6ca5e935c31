"""What the running `talkbox run` hands to, and takes from, other local programs.

- A state hook (examples/env-hook.sh, which writes down its environment) gets a minimal
  environment: TALKBOX_STATE, PATH, HOME, the locale. Never the API key, the credentials
  directory, or systemd's notify and watchdog variables, whatever the daemon has.
- Idle connections to the control socket neither lock `talkbox ctl` out nor stay long.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from support.daemon import SOUND_CARD_CONFIG, run_daemon, wait_until

pytestmark = pytest.mark.audio

REPO = Path(__file__).resolve().parents[2]
ENV_HOOK = REPO / "examples" / "env-hook.sh"
SENTINEL = "sk-SENTINEL-hookenv-7a3c9e1f5b2d8046"
# What a hook may see: the contract, and what /bin/sh adds of its own accord.
HOOK_CONTRACT = {"TALKBOX_STATE", "PATH", "HOME", "LANG", "LANGUAGE", "TZ"}
ADDED_BY_THE_SHELL = {"PWD", "SHLVL", "OLDPWD", "_"}
# More idle clients than the socket has places for.
IDLE_CLIENTS = 20


def environments(record: Path) -> dict[str, dict[str, str]]:
    """The environment of each hook run written by env-hook.sh, by state."""
    runs: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in record.read_text().splitlines():
        if line.startswith("--- "):
            current = runs.setdefault(line[4:], {})
        elif "=" in line:
            name, _, value = line.partition("=")
            current[name] = value
    return runs


def test_a_hook_gets_a_minimal_environment_without_secrets(tmp_path: Path) -> None:
    record = tmp_path / "hook-env.txt"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    config = SOUND_CARD_CONFIG + f'[hooks]\non_state = ["{ENV_HOOK}", "{record}"]\n'
    extra_env = {
        "CREDENTIALS_DIRECTORY": str(credentials),
        "WATCHDOG_USEC": "30000000",
        "LISTEN_FDS": "0",
        "INVOCATION_ID": "f00d",
        "LC_TIME": "C.UTF-8",
        "HOME": str(tmp_path),
    }
    with run_daemon(tmp_path, config, api_key=SENTINEL, extra_env=extra_env) as daemon:
        daemon.microphone()
        daemon.wait_ready()
        wait_until(lambda: record.exists() and "--- idle" in record.read_text(), 10, "the hook")
        daemon.terminate()

    text = record.read_text()
    # Messages of their own: pytest's diff would print the key.
    assert SENTINEL not in text, "the API key reached the hook"
    assert str(credentials) not in text, "the credentials directory reached the hook"
    seen = environments(record)["idle"]
    assert seen["TALKBOX_STATE"] == "idle"
    assert seen["LC_TIME"] == "C.UTF-8" and seen["HOME"] == str(tmp_path)
    assert "PATH" in seen
    unexpected = {
        name for name in seen if not name.startswith("LC_")
    } - HOOK_CONTRACT - ADDED_BY_THE_SHELL
    assert not unexpected, f"the hook got {sorted(unexpected)}"


def test_idle_control_connections_time_out_and_lock_nobody_out(tmp_path: Path) -> None:
    with run_daemon(tmp_path, SOUND_CARD_CONFIG) as daemon:
        daemon.microphone()
        daemon.wait_ready()
        idle = []
        for _ in range(IDLE_CLIENTS):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(daemon.control_socket))
            idle.append(client)
        connected_at = time.monotonic()

        status = daemon.ctl("status", timeout=10)
        assert status.returncode == 0 and "state: idle" in status.stdout, status

        # Each idle client is closed by the daemon (an error line at most, then end of file).
        for client in idle:
            client.settimeout(max(0.1, connected_at + 5.0 - time.monotonic()))
            try:
                while client.recv(4096):
                    pass
            except TimeoutError:
                raise AssertionError("an idle control client was still open after 5 s") from None
            except ConnectionResetError:
                pass
            finally:
                client.close()
        assert time.monotonic() - connected_at < 5.0

        assert daemon.ctl("status", timeout=10).returncode == 0
        code, _ = daemon.terminate()
        assert code == 0
