"""StateHook runs real child processes: argv verbatim, no shell, timeouts, coalescing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest

from talkbox.shell.hooks import DEFAULT_PATH, StateHook, hook_environment

REPO = Path(__file__).resolve().parents[2]
LED_HOOK = REPO / "examples" / "led-hook.sh"

# Writes what it was started with (argv after the script, selected environment) to the JSON
# file named by its first argument, appending one record per run.
RECORDER = """
import json, os, sys
record = {
    "argv": sys.argv[2:],
    "TALKBOX_STATE": os.environ.get("TALKBOX_STATE"),
    "NOTIFY_SOCKET": os.environ.get("NOTIFY_SOCKET"),
    "WATCHDOG_USEC": os.environ.get("WATCHDOG_USEC"),
    "KEPT": os.environ.get("KEPT"),
    "stdin": sys.stdin.read(),
    "environ": dict(os.environ),
}
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(record) + "\\n")
"""

# Records each state it is started with; the first run waits until the test releases it,
# so states can pile up behind it deterministically.
GATED_RECORDER = """
import os, sys, time
log, release, state = sys.argv[1], sys.argv[2], sys.argv[-1]
with open(log, "a") as out:
    out.write(state + "\\n")
if state == "first":
    deadline = time.monotonic() + 20
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
"""


def read_records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def wait_for(condition: object, what: str, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def process_alive(pid: int) -> bool:
    """True for a running process; False when gone or only a zombie waiting to be reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
        return False
    return fields[0] not in ("Z", "X")


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    log = tmp_path / "runs.jsonl"
    return [sys.executable, str(script), str(log)], log


async def test_hostile_strings_reach_the_hook_verbatim_and_nothing_is_interpreted(
    tmp_path: Path, recorder: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, log = recorder
    monkeypatch.chdir(tmp_path)
    hostile_args = [
        "; rm -rf /",
        f"$(touch {tmp_path}/pwned-dollar)",
        f"`touch {tmp_path}/pwned-backtick`",
        f"x\ntouch {tmp_path}/pwned-newline",
        f"| touch {tmp_path}/pwned-pipe",
        "*",
        "$HOME",
        "",
    ]
    hostile_state = f"idle && touch {tmp_path}/pwned-state"
    hook = StateHook([*argv, *hostile_args], timeout=10)

    await hook.notify(hostile_state)
    await hook.aclose()

    [record] = read_records(log)
    assert record["argv"] == [*hostile_args, hostile_state]
    assert record["TALKBOX_STATE"] == hostile_state
    assert not list(tmp_path.glob("pwned*"))


async def test_the_environment_is_minimal_and_holds_no_secret(
    recorder: tuple[list[str], Path]
) -> None:
    argv, log = recorder
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": "/var/lib/talkbox",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "KEPT": "no: not part of the hook contract",
        "TALKBOX_API_KEY": "sk-SENTINEL-hook-5c1e",
        "CREDENTIALS_DIRECTORY": "/run/credentials/talkbox.service",
        "NOTIFY_SOCKET": "/run/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
        "INVOCATION_ID": "0123",
    }
    hook = StateHook(argv, timeout=10, environ=environ)

    await hook.notify("listening")
    await hook.aclose()

    [record] = read_records(log)
    assert record["TALKBOX_STATE"] == "listening"
    assert record["KEPT"] is None
    assert record["NOTIFY_SOCKET"] is None
    assert record["WATCHDOG_USEC"] is None
    seen = record["environ"]
    assert isinstance(seen, dict)
    # The child's Python may add LC_CTYPE itself (PEP 538); anything else must be ours.
    assert set(seen) - {"LC_CTYPE"} == {"PATH", "HOME", "LANG", "LC_ALL", "TALKBOX_STATE"}
    assert "sk-SENTINEL-hook-5c1e" not in json.dumps(seen)
    assert record["stdin"] == ""  # stdin is /dev/null, never the daemon's


def test_hook_environment_passes_only_the_documented_variables() -> None:
    base = {"A": "1", "NOTIFY_SOCKET": "/x", "LC_TIME": "de_DE.UTF-8", "TZ": "UTC"}
    assert hook_environment(base, "idle") == {
        "LC_TIME": "de_DE.UTF-8",
        "TZ": "UTC",
        "PATH": DEFAULT_PATH,
        "TALKBOX_STATE": "idle",
    }
    assert base == {"A": "1", "NOTIFY_SOCKET": "/x", "LC_TIME": "de_DE.UTF-8", "TZ": "UTC"}


async def test_states_are_delivered_in_order_and_coalesced_to_the_latest(
    tmp_path: Path,
) -> None:
    script = tmp_path / "gated.py"
    script.write_text(GATED_RECORDER)
    log, release = tmp_path / "states.log", tmp_path / "release"
    hook = StateHook([sys.executable, str(script), str(log), str(release)], timeout=30)

    await hook.notify("first")
    await wait_for(lambda: log.exists() and log.read_text() == "first\n", "the first hook run")
    for state in ("second", "third", "fourth"):
        await hook.notify(state)
    release.touch()
    await hook.aclose()

    assert log.read_text().splitlines() == ["first", "fourth"]


async def test_each_change_runs_once_in_order_when_the_hook_keeps_up(
    recorder: tuple[list[str], Path]
) -> None:
    argv, log = recorder
    hook = StateHook(argv, timeout=10)
    states = ["connecting", "listening", "responding", "listening", "idle"]

    for count, state in enumerate(states, start=1):
        await hook.notify(state)
        await wait_for(lambda n=count: log.exists() and len(log.read_text().splitlines()) == n,
                       f"delivery of {state}")
    await hook.aclose()

    assert [record["TALKBOX_STATE"] for record in read_records(log)] == states


async def test_a_repeated_state_is_not_a_change(recorder: tuple[list[str], Path]) -> None:
    argv, log = recorder
    hook = StateHook(argv, timeout=10)

    await hook.notify("idle")
    await wait_for(lambda: log.exists(), "the first run")
    for state in ("listening", "listening", "listening"):
        await hook.notify(state)
    await hook.aclose()

    assert [r["TALKBOX_STATE"] for r in read_records(log)] == ["idle", "listening"]


async def test_timeout_kills_the_hook_and_everything_it_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pids = tmp_path / "pids"
    # The hook starts a background child, records both pids, then hangs.
    script = f'sleep 300 & echo $! > {pids}.child; echo $$ > {pids}.hook; wait'
    hook = StateHook(["/bin/sh", "-c", script, "hook"], timeout=0.5)

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="talkbox.hooks"):
        await hook.notify("connecting")
        await hook.aclose()
    elapsed = time.monotonic() - started

    assert elapsed < 15, "aclose must not wait for the hung hook"
    hook_pid = int(Path(f"{pids}.hook").read_text())
    child_pid = int(Path(f"{pids}.child").read_text())
    await wait_for(lambda: not process_alive(child_pid), "the background child to die")
    assert not process_alive(hook_pid)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ran longer than 0.5 s for state connecting and was killed" in warnings[0]


async def test_a_failing_hook_is_logged_once_and_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = StateHook(["/bin/sh", "-c", 'echo "led ring unplugged" >&2; exit 3', "hook"],
                     timeout=10)

    with caplog.at_level(logging.WARNING, logger="talkbox.hooks"):
        await hook.notify("listening")
        await hook.aclose()

    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "exited with status 3 for state listening" in warning.getMessage()
    assert "led ring unplugged" in warning.getMessage()
    assert getattr(warning, "TALKBOX_STATE", None) == "listening"


async def test_a_missing_program_is_logged_and_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = str(tmp_path / "no-such-hook")
    hook = StateHook([missing], timeout=10)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING, logger="talkbox.hooks"):
        await hook.notify("idle")
        await wait_for(lambda: len(warnings()) == 1, "the first warning")
        await hook.notify("listening")
        await hook.aclose()

    messages = warnings()
    assert len(messages) == 2  # one per state change, not more
    assert all(f"state hook {missing} could not be started" in m for m in messages)


async def test_output_is_logged_at_debug_and_truncated(caplog: pytest.LogCaptureFixture) -> None:
    hook = StateHook(["/bin/sh", "-c", "printf 'x%.0s' $(seq 5000)", "hook"], timeout=10,
                     output_limit=100)

    with caplog.at_level(logging.DEBUG, logger="talkbox.hooks"):
        await hook.notify("responding")
        await hook.aclose()

    [debug] = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug == "state hook output for responding: " + "x" * 100 + "…"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_empty_argv_is_no_hook(tmp_path: Path) -> None:
    hook = StateHook([], timeout=1)
    await hook.notify("idle")
    await hook.aclose()  # nothing to wait for, nothing raised


async def test_cancelling_aclose_kills_the_running_hook(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hook = StateHook(["/bin/sh", "-c", f"echo $$ > {pid_file}; exec sleep 300", "h"],
                     timeout=60)
    await hook.notify("connecting")
    await wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the hook")
    closing = asyncio.create_task(hook.aclose())
    await asyncio.sleep(0.05)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    pid = int(pid_file.read_text())
    await wait_for(lambda: not process_alive(pid), "the hook to be killed")


@pytest.mark.parametrize(
    ("state", "brightness", "trigger"),
    [("idle", "0", "none"), ("listening", "255", "none"), ("responding", "0", "timer"),
     ("connecting", "0", "timer")],
)
async def test_example_led_hook_drives_a_sysfs_style_led(
    tmp_path: Path, state: str, brightness: str, trigger: str
) -> None:
    led = tmp_path / "led"
    led.mkdir()
    (led / "brightness").write_text("0\n")
    (led / "max_brightness").write_text("255\n")
    (led / "trigger").write_text("none\n")
    (led / "delay_on").write_text("500\n")
    hook = StateHook([str(LED_HOOK), str(led)], timeout=10)

    await hook.notify(state)
    await hook.aclose()

    assert (led / "brightness").read_text().strip() == brightness
    assert (led / "trigger").read_text().strip() == trigger
    if trigger == "timer":
        assert (led / "delay_on").read_text().strip() == "150"
