"""Config files that are not what a config file should be, against the real processes.

`talkbox check` and `talkbox run` read only a regular file of bounded size (the config, and
the API key file or credential just the same), bound how deep and how many values it holds
and how many problems they print: a FIFO, a symlink to
/dev/zero, a directory, deep nesting or a flood of keys is an exit 78 naming the file, at
once. A reload (SIGHUP) of such a file is read off the event loop and refused: the running
daemon comes back with READY=1, answers `talkbox ctl`, and still stops on SIGTERM.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from support.cli import environment, run_talkbox
from support.daemon import SOUND_CARD_CONFIG, run_daemon, wait_until
from talkbox.audio.wake import MAX_MODEL_BYTES
from talkbox.config import MAX_CONFIG_VALUES, MAX_PROBLEMS_SHOWN
from talkbox.errors import EX_CONFIG

ENV_NOT_INHERITED = ("TALKBOX_API_KEY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")
# A refusal reads nothing big and parses nothing deep: it takes what starting Python takes.
QUICK_S = 15.0



def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


def make_fifo(path: Path) -> str:
    os.mkfifo(path)
    return "FIFO (named pipe), not a regular file"


def make_dev_zero_link(path: Path) -> str:
    path.symlink_to("/dev/zero")
    return "character device, not a regular file"


def make_directory(path: Path) -> str:
    path.mkdir()
    return "directory, not a regular file"


def make_huge_file(path: Path) -> str:
    path.write_text("# padding\n" * 40_000)  # 400 KB of comments: valid TOML, far too big
    return "is larger than 262144 bytes"


def make_deep_nesting(path: Path) -> str:
    path.write_text("a = " + "[" * 1000 + "]" * 1000 + "\n")
    return "nested more than 10 levels deep"


def make_many_keys(path: Path) -> str:
    # 5,000 keys in 60 KB: under the size limit, over the key limit.
    keys = ",".join(f"m{i} = 0.5" for i in range(5000))
    path.write_text(f"[wake]\nthresholds = {{ {keys} }}\n")
    return f"more than {MAX_CONFIG_VALUES} keys and array elements"


HOSTILE: dict[str, Callable[[Path], str]] = {
    "fifo": make_fifo,
    "dev_zero_symlink": make_dev_zero_link,
    "directory": make_directory,
    "huge_file": make_huge_file,
    "deep_nesting": make_deep_nesting,
    "many_keys": make_many_keys,
}


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_config_file_exits_78_naming_it(kind: str, command: str, tmp_path: Path) -> None:
    config = tmp_path / "talkbox.toml"
    expected = HOSTILE[kind](config)

    run = run_talkbox(
        command, "--config", str(config), env=environment(ENV_NOT_INHERITED), timeout=QUICK_S
    )

    assert run.exit_code == EX_CONFIG, (run.exit_code, run.stderr)
    assert run.stderr.startswith(f"talkbox: invalid configuration in {config}:\n"), run.stderr
    assert expected in run.stderr
    assert len(run.stderr) < 1000, "one short message"


KEY_FILE_KINDS = ("fifo", "dev_zero_symlink", "directory")


@pytest.mark.parametrize("kind", KEY_FILE_KINDS)
@pytest.mark.parametrize("where", ["api_key_file", "credential"])
def test_a_hostile_api_key_file_exits_78_naming_it(kind: str, where: str, tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    expected = HOSTILE[kind](key_file)
    config = tmp_path / "talkbox.toml"
    overlay = {}
    if where == "api_key_file":
        config.write_text(f'[realtime]\nprovider = "openai"\napi_key_file = "{key_file}"\n')
        source = f"realtime.api_key_file {key_file}"
    else:
        config.write_text('[realtime]\nprovider = "openai"\n')
        overlay = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
        source = "systemd credential api-key"

    run = run_talkbox(
        "check", "--config", str(config), env=environment(ENV_NOT_INHERITED, overlay),
        timeout=QUICK_S,
    )

    assert run.exit_code == EX_CONFIG, (run.exit_code, run.stderr)
    assert f"{source}: cannot read it: it is a {expected}" in run.stderr, run.stderr


def make_sparse_giant(path: Path) -> str:
    with path.open("wb") as giant:
        giant.truncate(MAX_MODEL_BYTES + 1)  # sparse: no disk used
    return f"is larger than {MAX_MODEL_BYTES} bytes"


@pytest.mark.parametrize(
    "make", [make_fifo, make_dev_zero_link, make_sparse_giant], ids=["fifo", "dev_zero", "giant"]
)
def test_a_wake_model_path_that_is_no_model_file_exits_78_naming_it(
    make: Callable[[Path], str], tmp_path: Path
) -> None:
    model = tmp_path / "computer.tflite"
    expected = make(model)
    config = tmp_path / "talkbox.toml"
    config.write_text(f'[wake]\nmodels = ["{model}"]\n')

    run = run_talkbox(
        "run", "--config", str(config), env=environment(ENV_NOT_INHERITED), timeout=QUICK_S * 2
    )

    assert run.exit_code == EX_CONFIG, (run.exit_code, run.stderr)
    assert f"wake.models: model file '{model}' is " in run.stderr, run.stderr
    assert expected in run.stderr


def test_a_flood_of_problems_prints_a_bounded_list(tmp_path: Path) -> None:
    # 1,500 thresholds for models that are not listed: each is a problem of its own.
    config = tmp_path / "talkbox.toml"
    config.write_text("[wake]\n" + "".join(f"thresholds.m{i} = 0.5\n" for i in range(1500)))

    run = run_talkbox("check", "--config", str(config), env=environment(ENV_NOT_INHERITED))

    assert run.exit_code == EX_CONFIG
    problems = [line for line in run.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == MAX_PROBLEMS_SHOWN + 1
    assert problems[0].startswith("  - wake.thresholds.m0 (line 2): ")
    assert problems[-1] == f"  - ... and {1500 - MAX_PROBLEMS_SHOWN} more problems not shown"
    assert len(run.stderr) < 10_000


def test_a_hostile_file_on_reload_is_refused_and_the_daemon_stays_responsive(
    tmp_path: Path,
) -> None:
    with run_daemon(tmp_path, SOUND_CARD_CONFIG) as daemon:
        daemon.microphone()
        daemon.wait_ready()
        config = tmp_path / "talkbox.toml"
        good_text = config.read_text()
        for number, kind in enumerate(sorted(HOSTILE), start=1):
            remove(config)
            HOSTILE[kind](config)
            readies = daemon.notify.lines().count("READY=1")

            daemon.process.send_signal(signal.SIGHUP)

            daemon.wait_for_log("reload refused", count=number, timeout=QUICK_S)
            wait_until(
                lambda readies=readies: daemon.notify.lines().count("READY=1") > readies,
                QUICK_S,
                f"READY=1 after the refused reload of the {kind}",
            )
            status = daemon.ctl("status", timeout=QUICK_S)
            assert status.returncode == 0 and "state: idle" in status.stdout, (kind, status)
        assert f"invalid configuration in {config}" in daemon.log()

        # A good file still reloads after all that.
        remove(config)
        config.write_text(good_text)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("reloaded", timeout=QUICK_S)

        # The FIFO last: nobody ever writes to it, so a reader that waited for one would hang.
        config.unlink()
        make_fifo(config)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("reload refused", count=len(HOSTILE) + 1, timeout=QUICK_S)
        code, seconds = daemon.terminate(timeout=QUICK_S)
        assert code == 0, daemon.log()
        assert seconds < 10, f"SIGTERM took {seconds:.1f} s"
        assert "Traceback" not in daemon.log()
