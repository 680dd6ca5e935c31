"""The `talkbox` command: run the daemon, check the setup, ask once, list devices, tune, test
the room's echo, control.

Every failure ends in one clear line on stderr and a non-zero exit: 78 (EX_CONFIG) for a bad
configuration, so systemd does not restart-loop on it; 1 for anything else. Never a traceback
for a user's mistake, never the API key.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talkbox import __version__
from talkbox.audio_format import BYTES_PER_SAMPLE, REALTIME_RATE
from talkbox.errors import EX_CONFIG, AudioDeviceError, ConfigError, TalkboxError
from talkbox.locations import DEFAULT_CONFIG_PATH
from talkbox.safe_text import MAX_PROSE_CHARS, safe_line

# Everything slow to import (pydantic, asyncio, the audio stack) is imported by the command
# that needs it: `talkbox run` must reach its signal handlers as early as it can.
if TYPE_CHECKING:
    from talkbox.config import Config
    from talkbox.secrets import ApiKey

EXIT_FAILURE = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args)
        return result
    except ConfigError as error:
        print(f"talkbox: {error}", file=sys.stderr)
        return EX_CONFIG
    except TalkboxError as error:
        print(f"talkbox: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="talkbox", description="Headless smart speaker for the GPT-4o Realtime API."
    )
    parser.add_argument("--version", action="version", version=f"talkbox {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, help_text: str, *, needs_config: bool = True, config_help: str = ""
    ) -> argparse.ArgumentParser:
        """A subcommand; `needs_config=False` makes one that runs where no config exists yet
        (before install, on a bare machine) and reads a config only when --config names one."""
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            type=Path,
            default=None,
            help=f"config file (default: {DEFAULT_CONFIG_PATH})"
            if needs_config
            else config_help or "a config file to compare with (default: none is read)",
        )
        sub.set_defaults(needs_config=needs_config)
        return sub

    run = command("run", "run the daemon in the foreground (systemd runs this)")
    run.set_defaults(handler=_run)

    check = command("check", "validate the config and print the settings in force")
    how = check.add_mutually_exclusive_group()
    how.add_argument(
        "--connect",
        action="store_true",
        help="also open a session and close it, and list the tools of the [tools] mcp servers",
    )
    how.add_argument(
        "--quiet",
        action="store_true",
        help="only validate the file: print its problems and warnings, nothing else, and "
        "leave the API key to the daemon (systemd runs this before each reload)",
    )
    check.set_defaults(handler=_check)

    ask = command("ask", "ask one question as text and hear (or save) the spoken answer")
    ask.add_argument("text", help="the question")
    ask.add_argument(
        "--out", type=Path, help="write the answer to this WAV file instead of playing it"
    )
    ask.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    ask.set_defaults(handler=_ask)

    devices = command(
        "devices",
        "list the audio devices; with --config, mark the ones that config selects",
        needs_config=False,
    )
    devices.set_defaults(handler=_devices)

    listen = command("listen", "print wake-word scores and voice activity live, for tuning a room")
    listen.add_argument(
        "--seconds", type=float, default=0.0, help="stop after this long (0: never)"
    )
    listen.set_defaults(handler=_listen)

    echo_test = command(
        "echo-test",
        "play a test sound and measure the echo the microphone hears: is speech barge-in "
        "safe in this room? (stop the daemon first)",
        needs_config=False,
        config_help="the config whose devices, rates and VAD to test (default: none is read; "
        'devices "default", rates 16000 Hz in and 24000 Hz out)',
    )
    echo_test.add_argument(
        "--input-device", metavar="NAME", help="the microphone to test (instead of the config's)"
    )
    echo_test.add_argument(
        "--output-device", metavar="NAME", help="the speaker to test (instead of the config's)"
    )
    echo_test.add_argument(
        "--seconds", type=float, default=None, help="length of the test sound (default: 11)"
    )
    echo_test.add_argument("--json", action="store_true", help="print the results as JSON")
    echo_test.set_defaults(handler=_echo_test)

    ctl = command("ctl", "control the running daemon")
    ctl.add_argument(
        "action", choices=["status", "mute", "unmute", "wake", "stop", "timers", "volume"]
    )
    ctl.add_argument(
        "value", nargs="?", help="volume only: N sets the level (0-100), +N / -N change it by N"
    )
    ctl.add_argument("--socket", help="control socket (default: [control] socket of the config)")
    ctl.set_defaults(handler=_ctl)
    return parser


def _config_given(args: argparse.Namespace) -> Config | None:
    """The command's config: --config, else the default file; None for a command that needs
    no config and was given none."""
    from talkbox.config import load_config

    if args.config is None and not args.needs_config:
        return None
    return load_config(args.config)


def _load(args: argparse.Namespace) -> Config:
    """The config of a command that needs one."""
    cfg = _config_given(args)
    assert cfg is not None, f"talkbox {args.command} is declared without a config"
    return cfg


def _key_for(cfg: Config) -> ApiKey | None:
    from talkbox.secrets import resolve_api_key

    return resolve_api_key(cfg.realtime, os.environ)


# --- commands ---------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from talkbox.shell.startup_signals import StartupSignals

    # Before the slow imports and the config: a SIGHUP must not kill a starting daemon.
    # (This module imports nothing slow, so that is a fraction of a second after exec.)
    startup_signals = StartupSignals()
    startup_signals.install()
    # A daemon killed for hanging (the watchdog's or a start timeout's SIGABRT) leaves every
    # thread's Python stack in the journal: where it hung, not just that it did.
    faulthandler.enable()
    from talkbox.shell.service import run_daemon

    config_path = args.config or DEFAULT_CONFIG_PATH
    return run_daemon(config_path, startup_signals)


def _check(args: argparse.Namespace) -> int:
    import asyncio

    from talkbox.config import effective_settings

    cfg = _load(args)
    if args.quiet:
        _print_warnings(cfg)
        return 0
    key = _key_for(cfg)
    settings: dict[str, Any] = effective_settings(cfg)
    settings["realtime"]["api_key"] = f"{key} (from {key.source})" if key else "(none needed)"
    if cfg.realtime.provider != "echo" and key is not None:
        from talkbox.realtime.endpoint import endpoint_for

        settings["realtime"]["connects_to"] = endpoint_for(cfg.realtime, key).description
    print(f"config {safe_line(str(args.config or DEFAULT_CONFIG_PATH))}: valid")
    for table, values in settings.items():
        print(f"[{table}]")
        for name, value in values.items():
            # Values are shown, never run: an escape sequence in one must not reach the terminal.
            shown = value if isinstance(value, str) else json.dumps(value)
            print(f"{name} = {safe_line(shown, MAX_PROSE_CHARS)}")
    _print_warnings(cfg)
    if args.connect:
        if key is None:
            print("--connect: the echo provider has no service to connect to; nothing to check")
            return 0
        description = asyncio.run(_connect_once(cfg, key))
        print(f"connected: {safe_line(description, MAX_PROSE_CHARS)}")
        if cfg.tools.mcp:
            return _list_mcp_tools(cfg)
    return 0


def _print_warnings(cfg: Config) -> None:
    from talkbox.config import config_warnings
    from talkbox.shell.hooks import hook_program_warning

    hook_warning = hook_program_warning(cfg.hooks.on_state)
    for warning in [*config_warnings(cfg), *([hook_warning] if hook_warning else [])]:
        print(f"warning: {warning}", file=sys.stderr)


def _list_mcp_tools(cfg: Config) -> int:
    """`check --connect`: list each [[tools.mcp]] server's tools as the daemon does; 1 if
    one of them cannot."""
    import asyncio
    import logging

    from talkbox.tools.mcp_servers import McpServers, ServerListing

    async def list_once() -> list[ServerListing]:
        servers = McpServers()
        try:
            return await servers.list_now(cfg.tools.mcp)
        finally:
            await servers.aclose()

    # The daemon's log line says it would try again later; here the line below says it all.
    logging.getLogger("talkbox.tools.mcp_servers").setLevel(logging.ERROR)
    failed = False
    for listing in asyncio.run(list_once()):
        if listing.failure:
            failed = True
            print(f"talkbox: MCP server {listing.name}: cannot list its tools "
                  f"({listing.failure})", file=sys.stderr)
            continue
        count = len(listing.tools)
        names = ", ".join(tool.name for tool in listing.tools) or "none"
        print(f"MCP server {listing.name}: {count} tool{'' if count == 1 else 's'}: "
              f"{safe_line(names, MAX_PROSE_CHARS)}")
    return 1 if failed else 0


async def _connect_once(cfg: Config, key: ApiKey) -> str:
    from talkbox.realtime.sessions import service_sessions

    sessions = service_sessions(cfg, key)
    session = await sessions.open()
    await session.close()
    info = session.session_info
    return f"{sessions.description}, session {info.session_id or '?'} ({info.model or 'model ?'})"


def _ask(args: argparse.Namespace) -> int:
    import asyncio

    from talkbox.ask import ask, write_wav

    cfg = _load(args)
    key = _key_for(cfg)
    if key is None:
        raise ConfigError(
            [
                'talkbox ask needs a service: set realtime.provider = "azure" or "openai" '
                "(the echo provider only plays your own voice back)"
            ],
            source=str(args.config or DEFAULT_CONFIG_PATH),
        )
    answer = asyncio.run(ask(cfg, key, args.text, timeout=args.timeout))
    seconds = len(answer.pcm) / BYTES_PER_SAMPLE / REALTIME_RATE
    if args.out is not None:
        write_wav(args.out, bytes(answer.pcm))
        print(f"answer: {answer.transcript}")
        print(f"wrote {seconds:.1f} s of audio to {args.out}")
    else:
        print(f"answer: {answer.transcript}")
        from talkbox.audio.speaker import play_once

        play_once(cfg, bytes(answer.pcm))
    if answer.usage is not None:
        u = answer.usage
        print(f"tokens: {u.input_tokens} in, {u.output_tokens} out ({u.output_audio_tokens} audio)")
    return 0


def _devices(args: argparse.Namespace) -> int:
    from talkbox.audio.devices import (
        CHECK_SOUND_CARD,
        NO_SOUND_CARD,
        format_device_table,
        list_devices,
        match_device,
    )
    from talkbox.audio.pa import open_pyaudio

    cfg = _config_given(args)
    with open_pyaudio() as pa:
        devices = list_devices(pa)
    if not devices:
        raise AudioDeviceError(f"{NO_SOUND_CARD}\n{CHECK_SOUND_CARD}")
    if cfg is None:
        print(format_device_table(devices))
        return 0
    configured = (cfg.audio.input_device, cfg.audio.output_device)
    print(format_device_table(devices, configured))
    # The table marks a configured name that selects no device; the exit status and stderr
    # must say so too, or a script checking the setup would pass a speaker that is not there.
    match_device(devices, cfg.audio.input_device, "input")
    match_device(devices, cfg.audio.output_device, "output")
    return 0


def _listen(args: argparse.Namespace) -> int:
    from talkbox.listen import listen

    return listen(_load(args), seconds=args.seconds)


def _echo_test(args: argparse.Namespace) -> int:
    from talkbox.audio.echo_test import DEFAULT_SECONDS, MAX_SECONDS, MIN_SECONDS
    from talkbox.config import AudioConfig, Config
    from talkbox.echo_test import run_echo_test

    seconds = DEFAULT_SECONDS if args.seconds is None else args.seconds
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        print(
            f"talkbox echo-test: --seconds must be {MIN_SECONDS:g} to {MAX_SECONDS:g}",
            file=sys.stderr,
        )
        return 2
    overrides = {
        key: value
        for key, value in (("input_device", args.input_device),
                           ("output_device", args.output_device))
        if value is not None
    }
    if any(not value.strip() for value in overrides.values()):
        print("talkbox echo-test: a device name cannot be empty", file=sys.stderr)
        return 2
    cfg = _config_given(args) or Config()
    if overrides:
        audio = AudioConfig.model_validate({**cfg.audio.model_dump(), **overrides})
        cfg = cfg.model_copy(update={"audio": audio})
    return run_echo_test(cfg, seconds, as_json=args.json)


def _ctl(args: argparse.Namespace) -> int:
    from talkbox.shell.control import send_command_sync

    socket_path = args.socket
    if socket_path is None:
        socket_path = _load(args).control.socket
    if args.value is not None and args.action != "volume":
        print(f"talkbox: ctl {args.action} takes no value", file=sys.stderr)
        return EXIT_FAILURE
    reply = send_command_sync(socket_path, args.action, [] if args.value is None else [args.value])
    if not reply.get("ok"):
        print(f"talkbox: {reply.get('error', 'the daemon refused')}", file=sys.stderr)
        return EXIT_FAILURE
    for name, value in reply.items():
        if name != "ok":
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
