"""The CLI's error contract, as a real process: a bad configuration exits 78 (EX_CONFIG, so
systemd does not restart-loop on it) naming the key at fault, from `check` and from `run`
alike; anything else a user can get wrong is one clear message, never a traceback, never the
API key.

Each file in tests/data/bad_configs/ starts with `# expect: TEXT`: TEXT must appear in stderr.
"""

from __future__ import annotations

import grp
from pathlib import Path

import pytest

from support.cli import CliRun, environment, run_talkbox
from talkbox.errors import EX_CONFIG
from talkbox.shell.systemd import SYSTEMD_RUNTIME_DIRECTORY

BAD_CONFIGS = sorted((Path(__file__).parent.parent / "data" / "bad_configs").glob("*.toml"))
API_KEY = "sk-SENTINEL-errors-8d2f6a1c0e9b4735"
EXPECT_PREFIX = "# expect: "
ENV_NOT_INHERITED = ("TALKBOX_API_KEY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET")

# ~80 processes, ~18 s on a 2-core machine.
pytestmark = pytest.mark.slow


def talkbox(*args: str, api_key: str | None = API_KEY, unprivileged: bool = False) -> CliRun:
    key = {} if api_key is None else {"TALKBOX_API_KEY": api_key}
    # A bad file must be refused before any device or network is touched; the timeout only
    # turns a daemon that wrongly started into a failure instead of a hang.
    return run_talkbox(
        *args,
        env=environment(ENV_NOT_INHERITED, key),
        secrets=(API_KEY,),
        timeout=60,
        unprivileged=unprivileged,
    )


def expected_text(config: Path) -> str:
    first_line = config.read_text().splitlines()[0]
    assert first_line.startswith(EXPECT_PREFIX), f"{config.name} has no '# expect:' line"
    return first_line.removeprefix(EXPECT_PREFIX)


def test_the_bad_configs_are_there() -> None:
    # An empty glob would make the parametrized test below pass vacuously.
    assert len(BAD_CONFIGS) >= 30


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("config", BAD_CONFIGS, ids=[p.stem for p in BAD_CONFIGS])
def test_a_bad_config_exits_78_naming_the_key(command: str, config: Path) -> None:
    run = talkbox(command, "--config", str(config))

    assert run.exit_code == EX_CONFIG, (run.exit_code, run.stderr)
    assert run.stderr.startswith(f"talkbox: invalid configuration in {config}:\n")
    assert expected_text(config) in run.stderr


def test_an_api_key_put_in_the_config_is_not_repeated(tmp_path: Path) -> None:
    config = tmp_path / "talkbox.toml"
    config.write_text('[realtime]\nprovider = "openai"\napi_key = "sk-pasted-0f3b9c2e7d1a"\n')

    run = talkbox("check", "--config", str(config))

    assert run.exit_code == EX_CONFIG
    assert "realtime.api_key (line 3)" in run.stderr and "TALKBOX_API_KEY" in run.stderr
    assert "sk-pasted-0f3b9c2e7d1a" not in run.stderr


@pytest.mark.parametrize(
    "command",
    [["check"], ["run"], ["ask", "hello"], ["devices"], ["listen"]],
    ids=["check", "run", "ask", "devices", "listen"],
)
def test_a_missing_config_file_exits_78_naming_the_path(command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "talkbox.toml"

    run = talkbox(*command, "--config", str(missing))

    assert run.exit_code == EX_CONFIG
    assert f"invalid configuration in {missing}" in run.stderr
    assert "file not found" in run.stderr and "--config" in run.stderr


@pytest.mark.parametrize(
    "command",
    [["check"], ["run"], ["ask", "hello"], ["listen"], ["devices"]],
    ids=["check", "run", "ask", "listen", "devices"],
)
def test_a_config_file_the_user_may_not_read_says_how_to_get_access(
    command: list[str], tmp_path: Path
) -> None:
    # As installed: not the user's, readable by one group only (root:talkbox, mode 0640).
    config = tmp_path / "talkbox.toml"
    config.write_text('[realtime]\nprovider = "echo"\n')
    config.chmod(0o040)
    group = grp.getgrgid(config.stat().st_gid).gr_name

    run = talkbox(*command, "--config", str(config), unprivileged=True)

    assert run.exit_code == EX_CONFIG, (run.exit_code, run.stderr)
    assert run.stderr.startswith(f"talkbox: invalid configuration in {config}:\n")
    assert "cannot read the file: permission denied; run the command with sudo, " in run.stderr
    assert f"or join group {group}, which may read it (`sudo usermod -aG {group} $USER`" in (
        run.stderr
    )


def test_ctl_without_a_daemon_says_how_to_start_one_here(tmp_path: Path) -> None:
    socket = tmp_path / "control.sock"

    run = talkbox("ctl", "status", "--socket", str(socket))

    assert run.exit_code == 1
    assert run.stderr.startswith(f"talkbox: talkbox is not running (nothing listens on {socket}); ")
    # systemctl only where systemd runs; elsewhere (a chroot, a container) the foreground.
    if SYSTEMD_RUNTIME_DIRECTORY.is_dir():
        assert "`sudo systemctl start talkbox`" in run.stderr
    else:
        assert "systemctl" not in run.stderr
        assert run.stderr.endswith(
            "so run talkbox in the foreground: "
            "`sudo -u talkbox talkbox run --config /etc/talkbox/config.toml`\n"
        )


def test_ask_with_the_echo_provider_says_it_needs_a_service(tmp_path: Path) -> None:
    config = tmp_path / "talkbox.toml"
    config.write_text('[realtime]\nprovider = "echo"\n')

    run = talkbox("ask", "what time is it?", "--config", str(config))

    assert run.exit_code == EX_CONFIG
    assert 'realtime.provider = "azure" or "openai"' in run.stderr
    assert "echo provider" in run.stderr
    assert run.stdout == ""


def test_ask_without_any_api_key_says_where_it_looked(tmp_path: Path) -> None:
    config = tmp_path / "talkbox.toml"
    config.write_text('[realtime]\nprovider = "openai"\n')

    run = talkbox("ask", "what time is it?", "--config", str(config), api_key=None)

    assert run.exit_code == EX_CONFIG
    assert 'no API key found for provider = "openai"' in run.stderr
    assert "TALKBOX_API_KEY (not set)" in run.stderr
    assert "realtime.api_key_file (not set)" in run.stderr


def test_an_unknown_command_is_a_usage_error() -> None:
    run = talkbox("fly")

    assert run.exit_code == 2
    assert "usage: talkbox" in run.stderr and "invalid choice: 'fly'" in run.stderr
