"""`talkbox check` as a real process: the settings in force with the key masked, and
`--connect`, which opens one real session with the fake Realtime service on loopback and
closes it without asking for (and paying for) a response.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.cli import CliRun, environment, run_talkbox
from support.mcp_server import HttpMcpServer, server_command, write_token_file
from support.service import recorded, serving

API_KEY = "sk-SENTINEL-check-3e8b1f0a6c2d9475"
WRONG_KEY = "sk-SENTINEL-wrong-d41c7a9e0b5f2638"
CONNECT_TIMEOUT_S = 2
BOUND_S = 10.0  # generous for a loaded 2-core machine; a run takes well under a second
ENV_NOT_INHERITED = ("TALKBOX_API_KEY", "CREDENTIALS_DIRECTORY", "SSL_CERT_FILE", "SSL_CERT_DIR")

REALTIME_TABLES = {
    "azure-ga": (
        'provider = "azure"\nendpoint = "{url}"\ndeployment = "gpt-realtime"\napi_version = ""\n'
    ),
    "azure-preview": (
        'provider = "azure"\nendpoint = "{url}"\ndeployment = "gpt-4o-realtime-preview"\n'
        'api_version = "2024-10-01-preview"\n'
    ),
    "openai": 'provider = "openai"\nendpoint = "{url}/v1"\nmodel = "gpt-realtime"\n',
}
# What `connects_to` must say for each (the URL's origin is appended).
DESCRIPTIONS = {
    "azure-ga": "Azure OpenAI (GA) deployment gpt-realtime at ",
    "azure-preview": (
        "Azure OpenAI (preview 2024-10-01-preview) deployment gpt-4o-realtime-preview at "
    ),
    "openai": "OpenAI (GA) model gpt-realtime at ",
}


def write_config(directory: Path, realtime_table: str, extra: str = "") -> Path:
    config = directory / "talkbox.toml"
    config.write_text(
        f"[realtime]\n{realtime_table}connect_timeout_seconds = {CONNECT_TIMEOUT_S}\n"
        f'voice = "verse"\n{extra}'
    )
    return config


def talkbox(*args: str, env: dict[str, str]) -> CliRun:
    return run_talkbox(*args, env=environment(ENV_NOT_INHERITED, env), secrets=(API_KEY, WRONG_KEY))


def settings_of(run: CliRun) -> dict[str, str]:
    """`name = value` lines of stdout keyed `table.name` (the tables come as `[name]`)."""
    found: dict[str, str] = {}
    table = ""
    for line in run.stdout.splitlines():
        if line.startswith("[") and line.endswith("]"):
            table = line[1:-1]
        elif " = " in line and table:
            name, _, value = line.partition(" = ")
            found[f"{table}.{name}"] = value
    return found


# --- settings -----------------------------------------------------------------------------------


def test_check_prints_the_settings_in_force_with_the_key_masked(tmp_path: Path) -> None:
    with serving(API_KEY) as service:
        url_base = service.url_base
        config = write_config(tmp_path, REALTIME_TABLES["azure-ga"].format(url=url_base))
        run = talkbox("check", "--config", str(config), env={"TALKBOX_API_KEY": API_KEY})
        seen = recorded(service)

    assert run.exit_code == 0, run.stderr
    assert run.stdout.splitlines()[0] == f"config {config}: valid"
    settings = settings_of(run)
    # What the file says, and the defaults for what it does not.
    assert settings["realtime.provider"] == "azure"
    assert settings["realtime.deployment"] == "gpt-realtime"
    assert settings["realtime.voice"] == "verse"
    assert settings["realtime.connect_timeout_seconds"] == "2.0"
    assert settings["audio.output_rate"] == "24000"
    assert settings["wake.models"] == '["hey_jarvis"]'
    # The key: a mask of at most three characters and the length, and where it came from.
    assert settings["realtime.api_key"] == (
        f"{API_KEY[:3]}…({len(API_KEY)} chars) (from TALKBOX_API_KEY)"
    )
    websocket_origin = url_base.replace("http://", "ws://")
    assert settings["realtime.connects_to"] == DESCRIPTIONS["azure-ga"] + websocket_origin
    # Without --connect nothing goes on the network.
    assert seen.sessions == [] and seen.rejected == []


def test_check_masks_a_key_read_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    table = REALTIME_TABLES["openai"].format(url="http://127.0.0.1:9")
    config = write_config(tmp_path, f'{table}api_key_file = "{key_file}"\n')

    run = talkbox("check", "--config", str(config), env={})

    assert run.exit_code == 0, run.stderr
    assert settings_of(run)["realtime.api_key"] == (
        f"{API_KEY[:3]}…({len(API_KEY)} chars) (from realtime.api_key_file {key_file})"
    )


def test_check_warns_about_settings_that_have_no_effect(tmp_path: Path) -> None:
    # GA has no temperature: valid, but worth a word on stderr, and still exit 0.
    table = REALTIME_TABLES["azure-ga"].format(url="http://127.0.0.1:9")
    config = write_config(tmp_path, f"{table}temperature = 1.0\n")

    run = talkbox("check", "--config", str(config), env={"TALKBOX_API_KEY": API_KEY})

    assert run.exit_code == 0, run.stderr
    assert "warning: realtime.temperature is ignored" in run.stderr


SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config" / "talkbox.toml"


def test_an_azure_owner_who_sets_no_api_version_lands_on_ga(tmp_path: Path) -> None:
    # The shipped file, switched to Azure as its header says, with api_version left as shipped.
    shipped = SHIPPED_CONFIG.read_text()
    config = tmp_path / "talkbox.toml"
    config.write_text(shipped.replace('provider = "echo"', 'provider = "azure"', 1)
                      .replace('endpoint = ""', 'endpoint = "https://contoso.openai.azure.com"', 1)
                      .replace('deployment = ""', 'deployment = "gpt-realtime"', 1))

    run = talkbox("check", "--config", str(config), env={"TALKBOX_API_KEY": API_KEY})

    assert run.exit_code == 0, run.stderr
    assert settings_of(run)["realtime.api_version"] == ""
    assert run.stderr == ""  # in particular, no warning about a deprecated protocol


def test_check_warns_that_the_preview_protocol_is_deprecated(tmp_path: Path) -> None:
    table = REALTIME_TABLES["azure-preview"].format(url="http://127.0.0.1:9")
    config = write_config(tmp_path, table)

    run = talkbox("check", "--config", str(config), env={"TALKBOX_API_KEY": API_KEY})

    assert run.exit_code == 0, run.stderr
    assert ('warning: realtime.api_version = "2024-10-01-preview" selects the preview protocol, '
            "which Azure deprecated on 2026-04-30") in run.stderr


def test_check_quiet_prints_only_warnings_and_fails_on_problems(tmp_path: Path) -> None:
    table = REALTIME_TABLES["azure-ga"].format(url="http://127.0.0.1:9")
    config = write_config(tmp_path, f"{table}temperature = 1.0\n")
    env: dict[str, str] = {}  # no key anywhere: looking it up is the daemon's job

    valid = talkbox("check", "--quiet", "--config", str(config), env=env)
    config.write_text(config.read_text().replace("temperature", "temprature"))
    broken = talkbox("check", "--quiet", "--config", str(config), env=env)

    assert (valid.exit_code, valid.stdout) == (0, "")
    assert "warning: realtime.temperature is ignored" in valid.stderr
    assert broken.exit_code == 78
    assert "realtime.temprature" in broken.stderr and broken.stdout == ""


def test_check_warns_about_a_hook_program_it_cannot_run_here(tmp_path: Path) -> None:
    # Only a warning: the program may be installed after the config, or on another machine.
    missing = tmp_path / "led on"
    not_executable = tmp_path / "led-hook.sh"
    not_executable.write_text("#!/bin/sh\n")
    runs = {}
    for name, program in (("missing", missing), ("not executable", not_executable)):
        config = write_config(
            tmp_path, 'provider = "echo"\n', f'[hooks]\non_state = ["{program}", "x"]\n'
        )
        for how in ("check", "check --quiet"):
            runs[name, how] = talkbox(*how.split(), "--config", str(config), env={})

    for run in runs.values():
        assert run.exit_code == 0, run.stderr
    for how in ("check", "check --quiet"):
        assert (
            f"warning: hooks.on_state: \"{missing}\" does not exist (yet); it looks like a command "
            "line: give the program and each argument as separate strings"
        ) in runs["missing", how].stderr
        assert (
            f"warning: hooks.on_state: \"{not_executable}\" is not an executable file (chmod +x it)"
        ) in runs["not executable", how].stderr


def test_check_of_the_echo_provider_needs_no_key_and_connects_nowhere(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'provider = "echo"\n')

    run = talkbox("check", "--connect", "--config", str(config), env={})

    assert run.exit_code == 0, run.stderr
    assert settings_of(run)["realtime.api_key"] == "(none needed)"
    assert "the echo provider has no service to connect to" in run.stdout


# --- --connect ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", REALTIME_TABLES)
def test_check_connect_opens_one_session_and_closes_it(provider: str, tmp_path: Path) -> None:
    with serving(API_KEY) as service:
        url_base = service.url_base
        config = write_config(tmp_path, REALTIME_TABLES[provider].format(url=url_base))
        run = talkbox(
            "check", "--connect", "--config", str(config), env={"TALKBOX_API_KEY": API_KEY}
        )
        server = service.server
        service.wait_for(lambda: bool(server.sessions) and server.sessions[0].closed)
        seen = recorded(service)

    assert run.exit_code == 0, run.stderr
    assert run.seconds < BOUND_S
    [session] = seen.sessions
    websocket_origin = url_base.replace("http://", "ws://")
    assert run.stdout.splitlines()[-1] == (
        f"connected: {DESCRIPTIONS[provider]}{websocket_origin}, "
        f"session {session.session_id} ({session.model})"
    )
    assert seen.violations == []
    assert [e["type"] for e in session.client_events] == ["session.update"]  # no response
    assert session.close_code == 1000


def test_check_connect_with_a_wrong_key_fails_with_the_401(tmp_path: Path) -> None:
    with serving(API_KEY) as service:
        config = write_config(tmp_path, REALTIME_TABLES["openai"].format(url=service.url_base))
        run = talkbox(
            "check", "--connect", "--config", str(config), env={"TALKBOX_API_KEY": WRONG_KEY}
        )
        seen = recorded(service)

    assert run.exit_code == 1
    assert run.seconds < BOUND_S
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("talkbox: ")
    # Where this key came from, not a key file nobody configured.
    assert "HTTP 401" in line and "check the key from TALKBOX_API_KEY" in line
    assert "api_key_file" not in line
    assert [r.status for r in seen.rejected] == [401]
    assert seen.sessions == []
    assert "connected:" not in run.stdout


def test_check_connect_lists_each_mcp_servers_tools_and_names_one_that_cannot(
    tmp_path: Path,
) -> None:
    # A stdio server that lists its tools, and Home Assistant's way (HTTP, a bearer token)
    # with the wrong token in token_file.
    mcp_token = "mcp-SENTINEL-0f3b8e2a91c64d57"
    token_file = write_token_file(tmp_path, "mcp-SENTINEL-wrong-7a21c9e05b3d")
    command = ", ".join(f'"{part}"' for part in server_command("home"))
    with serving(API_KEY) as service, HttpMcpServer(token=mcp_token) as home:
        config = write_config(
            tmp_path, REALTIME_TABLES["openai"].format(url=service.url_base),
            extra=("[tools]\nmcp = [\n"
                   f'  {{ name = "local", command = [{command}] }},\n'
                   f'  {{ name = "home", url = "{home.url}", token_file = "{token_file}" }},\n]\n'),
        )
        run = run_talkbox("check", "--connect", "--config", str(config),
                          env=environment(ENV_NOT_INHERITED, {"TALKBOX_API_KEY": API_KEY}),
                          secrets=(API_KEY, mcp_token, token_file.read_text().strip()))

    assert run.exit_code == 1, run.stderr
    assert run.stdout.splitlines()[-1] == (
        "MCP server local: 4 tools: turn_on, add, fail, hang"
    )
    [line] = run.stderr.strip().splitlines()
    assert line == ("talkbox: MCP server home: cannot list its tools (it refused the token in "
                    "token_file (HTTP 401))")


# --- text that is not talkbox's -------------------------------------------------------------------

RAW_CONTROLS = ("\x1b", "\x07", "\r", "\u202e")
# TOML escapes: the file is plain text, the values hold raw control characters.
HOSTILE_TOML = r"Be brief.\u001b[2J\u001b]0;pwned\u0007\r\n2099-01-01 ERROR talkbox: FAKE\u202e"


def test_check_shows_escape_sequences_from_the_config_and_the_service_as_clean_text(
    tmp_path: Path,
) -> None:
    with serving(API_KEY) as service:
        # The service's session id is text it chose, printed by --connect.
        service.call(lambda: setattr(service.server.faults, "session_id", "sess\x1b[2J\nFAKE"))
        realtime = REALTIME_TABLES["openai"].format(url=service.url_base)
        config = write_config(
            tmp_path,
            realtime + f'instructions = "{HOSTILE_TOML}"\n',
            extra=f'[hooks]\non_state = ["/usr/bin/led", "{HOSTILE_TOML}"]\n',
        )
        run = talkbox(
            "check", "--connect", "--config", str(config), env={"TALKBOX_API_KEY": API_KEY}
        )

    assert run.exit_code == 0, run.stderr
    for char in RAW_CONTROLS:
        assert char not in run.stdout + run.stderr, repr(char)
    assert not any(line.startswith("2099-") for line in run.stdout.splitlines())
    settings = settings_of(run)
    # Shown, not obeyed: the text is all there, its control characters made harmless.
    assert settings["realtime.instructions"] == (
        "Be brief. [2J ]0;pwned 2099-01-01 ERROR talkbox: FAKE"
    )
    assert settings["hooks.on_state"].startswith('["/usr/bin/led", "Be brief.\\u001b[2J')
    assert "session sess [2J FAKE (" in run.stdout
