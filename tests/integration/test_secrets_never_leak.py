"""The API key never leaves the request header: not in logs, errors, status output or files.

A sentinel key is used everywhere, and every place it could escape to is searched for it in
the forms a leak would take: the key itself, its first 8 characters (more than the 3 the mask
shows), and its base64 at each of the three byte alignments (a header or a blob encoded whole).

- In-process: the real `Daemon` with the real session opener and `Playback`, holding a whole
  conversation and then failing every way the service and the network can fail (401, 404,
  429, refused, TLS, set-up timeout, drop, error event, expiry), with every logger at DEBUG;
  and `open_session` raising each of those failures, its exceptions read to the last link of
  their chains.
- As processes: `talkbox check` and `talkbox check --connect` (good and wrong key, a refused
  port), then `talkbox run` at log level debug through a conversation, a 401 and mute with a
  state directory, read back by `talkbox ctl status`; then every file written under the test's
  directory (logs, state, sockets' neighbours), the systemd status lines and all output.
- A key pasted into the config (endpoint, api_version): `talkbox check`, `talkbox run` at
  start-up and a reload name the key and the problem but show the value masked.
- A hostile service, whose error events, transcripts, session id, close reason and 401 body
  carry escape sequences, a forged log line, megabytes of text and the key itself: the real
  `talkbox run` log, what journald would get, `talkbox ctl status`, systemd's status lines and
  the hook's arguments show it only as clean, bounded lines without the key.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import signal
import socket
import ssl
import sys
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import trustme

from support.alsa import FifoDrainer, alsa_sandbox
from support.cli import environment, run_talkbox
from support.daemon import DaemonRun, run_daemon, wait_until
from support.fake_realtime import FakeRealtimeServer, Faults, InjectedClose, InjectedError
from support.inprocess import DEPLOYMENT, quick_daemon_config, until
from support.service import serving
from talkbox.audio.playback import Playback
from talkbox.audio_format import REALTIME_RATE
from talkbox.config import Config, LogConfig
from talkbox.core.inputs import MicSpeechAudio, MicSpeechEnded, MicSpeechStarted, State
from talkbox.errors import RealtimeError
from talkbox.realtime.connection import open_session
from talkbox.realtime.endpoint import endpoint_for, session_settings_for
from talkbox.realtime.protocol import Dialect
from talkbox.realtime.sessions import configured_sessions
from talkbox.secrets import ApiKey
from talkbox.shell.app import Daemon, build_front_end
from talkbox.shell.systemd import journal_handler

SENTINEL = "sk-SENTINEL-9f8e7d6c5b4a3210"
SPEAKER_RATE: Literal[24000] = 24000
KEY_VARIABLES = ("TALKBOX_API_KEY", "CREDENTIALS_DIRECTORY")
TURN_PCM = (
    (np.sin(np.arange(REALTIME_RATE * 4 // 10) * 2 * np.pi * 180 / REALTIME_RATE) * 8000)
    .astype("<i2")
    .tobytes()
)


def leak_forms(secret: str) -> dict[str, bytes]:
    """Each way the secret could show, by a name that does not repeat it."""
    raw = secret.encode()
    forms = {"the key": raw, "its first 8 characters": raw[:8]}
    for shift in range(3):
        for name, encode in (
            ("base64", base64.b64encode),
            ("url-safe base64", base64.urlsafe_b64encode),
        ):
            # The first and last 4 characters depend on neighbouring bytes and padding.
            encoded = encode(bytes(shift) + raw)[4:-4]
            forms[f"its {name} at byte offset {shift}"] = encoded
    return forms


FORMS = leak_forms(SENTINEL)


def assert_no_leak(data: str | bytes, where: str, forms: dict[str, bytes] = FORMS) -> None:
    blob = data.encode("utf-8", "replace") if isinstance(data, str) else data
    for name, form in forms.items():
        # The message names the form, never the secret: repeating it would leak it further.
        assert form not in blob, f"{name} appeared in {where}"


def record_text(record: logging.LogRecord) -> str:
    """All a log record carries: message, arguments, extras and any traceback."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return formatter.format(record) + "\n" + repr(record.__dict__)


def exception_text(error: BaseException) -> str:
    """Every link of an exception chain, suppressed context included, with its attributes."""
    texts: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        texts.append("".join(traceback.format_exception_only(link)))
        texts.append(repr(link) + repr(link.args) + repr(vars(link)))
        pending += [link.__cause__, link.__context__]
    return "\n".join(texts)


def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def tls_context() -> Iterator[ssl.SSLContext]:
    """A server context whose certificate no client trusts (its CA is thrown away)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    yield context


@asynccontextmanager
async def daemon_with_key(tmp_path: Path, cfg: Config) -> AsyncIterator[Daemon]:
    key = ApiKey(SENTINEL, "test")
    with alsa_sandbox(tmp_path / "alsa", playback_fifo=True) as sandbox:
        drainer = FifoDrainer(sandbox.playback_path, rate=SPEAKER_RATE, speed=8.0)
        drainer.start()
        holder: list[Daemon] = []
        playback = Playback(
            "speaker",
            SPEAKER_RATE,
            REALTIME_RATE,
            on_drained=lambda: holder[0].on_playback_drained(),
        )
        try:
            playback.start()
            daemon = Daemon(
                cfg,
                open_session=lambda c: configured_sessions(c, key).open,
                speaker=playback,
                front_end=build_front_end(cfg),
            )
            holder.append(daemon)
            try:
                yield daemon
            finally:
                await daemon.shutdown()
        finally:
            playback.close()
            drainer.stop()


async def conversation(daemon: Daemon, cfg: Config, *, speak: bool) -> str:
    """From a fresh backoff (a reload), wake with `cfg`, maybe speak, until idle; the outcome."""
    daemon.reload(cfg)  # applies at once while idle, and forgets earlier failures
    daemon.wake()
    if speak:
        await until(lambda: daemon.machine.state is not State.CONNECTING, "set-up to end")
        if daemon.machine.state is State.LISTENING:
            daemon.step(MicSpeechStarted(TURN_PCM[:4800]))
            daemon.step(MicSpeechAudio(TURN_PCM[4800:]))
            daemon.step(MicSpeechEnded())
    await until(lambda: daemon.machine.state is State.IDLE, "idle")
    return daemon.snapshot().last_error


async def test_conversations_and_every_failure_log_nothing_of_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tls_context: ssl.SSLContext
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, as someone hunting a problem would
    async with (
        FakeRealtimeServer(api_key=SENTINEL, deployments={DEPLOYMENT}) as service,
        FakeRealtimeServer(api_key="sk-a-different-key-00000000000") as other_key_service,
        FakeRealtimeServer(api_key=SENTINEL, deployments={DEPLOYMENT}, ssl=tls_context) as tls,
    ):
        good = quick_daemon_config(service.url_base)
        async with daemon_with_key(tmp_path, good) as daemon:
            errors: list[str] = []
            assert await conversation(daemon, good, speak=True) == ""
            assert service.sessions[0].responses[0].status == "completed"
            errors.append(
                await conversation(
                    daemon, quick_daemon_config(other_key_service.url_base), speak=False
                )
            )
            errors.append(
                await conversation(
                    daemon, quick_daemon_config(service.url_base, deployment="nope"), speak=False
                )
            )
            service.faults.reject_handshake_status = 429
            errors.append(await conversation(daemon, good, speak=False))
            service.faults.reject_handshake_status = None
            errors.append(
                await conversation(
                    daemon, quick_daemon_config(f"http://127.0.0.1:{refused_port()}"), speak=False
                )
            )
            errors.append(
                await conversation(daemon, quick_daemon_config(tls.url_base), speak=False)
            )
            service.faults.skip_session_created = True
            errors.append(await conversation(daemon, good, speak=False))
            service.faults.skip_session_created = False
            service.faults.drop_after_audio_deltas = 1
            errors.append(await conversation(daemon, good, speak=True))
            service.faults.error_instead_of_response = InjectedError("server_error", "Oops.")
            errors.append(await conversation(daemon, good, speak=True))
            daemon.reload(good)
            daemon.wake()
            await until(lambda: daemon.machine.state is State.LISTENING, "listening")
            await service.expire_sessions()
            await until(lambda: daemon.machine.state is State.IDLE, "idle after expiry")

    assert all(errors), errors
    assert len(set(errors)) == len(errors), "each failure was a different one"
    for index, error in enumerate(errors):
        assert_no_leak(error, f"the status of failure {index}")
    assert len(caplog.records) > 50
    for record in caplog.records:
        assert_no_leak(record_text(record), f"the log record {record.name}:{record.lineno}")


@pytest.mark.parametrize(
    "fault", ["401", "404", "429", "refused", "tls", "no session.created", "wrong dialect"]
)
async def test_open_session_failures_carry_nothing_of_the_key(
    fault: str, tls_context: ssl.SSLContext
) -> None:
    async with (
        FakeRealtimeServer(api_key="sk-a-different-key-00000000000") as other_key_service,
        FakeRealtimeServer(api_key=SENTINEL, deployments={DEPLOYMENT}) as service,
        FakeRealtimeServer(api_key=SENTINEL, deployments={DEPLOYMENT}, ssl=tls_context) as tls,
    ):
        cfg = quick_daemon_config(service.url_base)
        if fault == "401":
            cfg = quick_daemon_config(other_key_service.url_base)
        elif fault == "404":
            cfg = quick_daemon_config(service.url_base, deployment="nope")
        elif fault == "429":
            service.faults.reject_handshake_status = 429
        elif fault == "refused":
            cfg = quick_daemon_config(f"http://127.0.0.1:{refused_port()}")
        elif fault == "tls":
            cfg = quick_daemon_config(tls.url_base)
        elif fault == "no session.created":
            service.faults.skip_session_created = True
        endpoint = endpoint_for(cfg.realtime, ApiKey(SENTINEL, "test"))
        if fault == "wrong dialect":
            # The preview shape on the GA path: the service refuses the session settings.
            endpoint = dataclasses.replace(endpoint, dialect=Dialect.PREVIEW)
        assert_no_leak(repr(endpoint) + endpoint.description + endpoint.url, "the endpoint")
        with pytest.raises(RealtimeError) as raised:
            await open_session(
                endpoint, session_settings_for(cfg), connect_timeout=1.0, setup_timeout=1.0
            )
    assert_no_leak(exception_text(raised.value), f"the {fault} exception chain")
    for rejected in other_key_service.rejected_handshakes + service.rejected_handshakes:
        assert_no_leak(repr(rejected), "what the fake recorded")


def files_under(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def cli_config(tmp_path: Path, endpoint: str, *, extra: str = "") -> Path:
    path = tmp_path / "talkbox.toml"
    path.write_text(
        f"""
[realtime]
provider = "azure"
endpoint = "{endpoint}"
deployment = "{DEPLOYMENT}"
api_version = ""
connect_timeout_seconds = 2.0
{extra}
"""
    )
    return path


def test_talkbox_check_shows_a_mask_never_the_key(tmp_path: Path) -> None:
    env = environment(KEY_VARIABLES, {"TALKBOX_API_KEY": SENTINEL})
    outputs: list[str] = []
    with (
        serving(SENTINEL, deployments={DEPLOYMENT}) as good,
        serving("sk-other-000000000000") as bad,
    ):
        for endpoint, connect in (
            (good.url_base, False),
            (good.url_base, True),
            (bad.url_base, True),
            (f"http://127.0.0.1:{refused_port()}", True),
        ):
            config = cli_config(tmp_path, endpoint, extra='[log]\nlevel = "debug"')
            args = ["check", "--config", str(config), *(["--connect"] if connect else [])]
            run = run_talkbox(*args, env=env, secrets=[SENTINEL])
            outputs.append(f"exit {run.exit_code}\n{run.stdout}\n{run.stderr}")
    ok, connected, refused_401, refused_port_ = outputs
    assert ok.startswith("exit 0") and "sk-…(28 chars)" in ok, ok
    assert connected.startswith("exit 0") and "connected:" in connected, connected
    assert refused_401.startswith("exit 1") and "HTTP 401" in refused_401, refused_401
    assert refused_port_.startswith("exit 1") and "refused" in refused_port_, refused_port_
    for index, output in enumerate(outputs):
        assert_no_leak(output, f"the output of talkbox check #{index}")
    for path in files_under(tmp_path):
        assert_no_leak(path.read_bytes(), f"the file {path.relative_to(tmp_path)}")


@pytest.mark.slow
@pytest.mark.audio
def test_a_running_daemon_leaks_the_key_nowhere(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = f"""
[realtime]
provider = "azure"
endpoint = "{{endpoint}}"
deployment = "{DEPLOYMENT}"
api_version = ""
connect_timeout_seconds = 2.0
[audio]
input_device = "mic"
output_device = "speaker"
[conversation]
follow_up_seconds = 1.0
[control]
socket = "{{control_socket}}"
persist_mute = true
[log]
level = "debug"
transcripts = true
"""
    outputs: list[str] = []
    with serving(SENTINEL, deployments={DEPLOYMENT}) as service:
        text = config.replace("{endpoint}", service.url_base)
        env = {"STATE_DIRECTORY": str(state)}
        with run_daemon(tmp_path / "run", text, api_key=SENTINEL, extra_env=env) as run:
            run.wait_ready()
            run.microphone()  # silence, so capture keeps delivering
            for action in ("wake", "status"):
                result = run.ctl(action)
                outputs.append(result.stdout + result.stderr)
            run.wait_for_log("state idle (no follow-up)", timeout=15)
            service.call(lambda: setattr(service.server.faults, "reject_handshake_status", 401))
            outputs.append(run.ctl("wake").stdout)
            run.wait_for_log("HTTP 401", timeout=15)
            for action in ("mute", "status", "unmute", "mute"):
                result = run.ctl(action)
                assert result.returncode == 0, result.stderr
                outputs.append(result.stdout + result.stderr)
            wait_until(lambda: (state / "muted").exists(), 5, "the mute to be remembered")
            code, _ = run.terminate()
            log = run.log()
            notify_lines = run.notify.lines()

    assert code == 0, log
    assert "realtime session" in log and "HTTP 401" in log
    status = outputs[-3]
    assert "last_error:" in status and "HTTP 401" in status, status
    assert_no_leak(log, "the daemon's log")
    assert_no_leak("\n".join(notify_lines), "what systemd was told")
    for index, output in enumerate(outputs):
        assert_no_leak(output, f"the output of talkbox ctl #{index}")
    written = list(files_under(tmp_path))
    assert state / "muted" in written
    for path in written:
        assert_no_leak(path.read_bytes(), f"the file {path.relative_to(tmp_path)}")


# --- a key pasted into the config ------------------------------------------------------------

# An Azure key as the portal shows it (32 hex digits), pasted where it does not belong.
PASTED_AZURE_KEY = "9f2c4e7a1b3d5f60718293a4b5c6d7e8"
PASTED_FORMS = leak_forms(PASTED_AZURE_KEY)


def pasted_key_configs(endpoint: str) -> dict[str, str]:
    """Config texts with a key where the Azure portal's URLs carry one, by what went wrong."""
    portal_url = (
        f"{endpoint}/openai/realtime?api-version=2024-10-01-preview&deployment={DEPLOYMENT}"
        f"&api-key={PASTED_AZURE_KEY}"
    )
    return {
        "endpoint": f'provider = "azure"\nendpoint = "{portal_url}"\n'
        f'deployment = "{DEPLOYMENT}"\napi_version = ""\n',
        "api_version": f'provider = "azure"\nendpoint = "{endpoint}"\n'
        f'deployment = "{DEPLOYMENT}"\n'
        f'api_version = "2024-10-01-preview&api-key={PASTED_AZURE_KEY}"\n',
        "the daemon's own key in the endpoint": f'provider = "azure"\n'
        f'endpoint = "{endpoint}/?api-key={SENTINEL}"\ndeployment = "{DEPLOYMENT}"\n',
    }


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_key_pasted_into_the_config_is_named_but_never_echoed(
    tmp_path: Path, command: str
) -> None:
    env = environment(KEY_VARIABLES, {"TALKBOX_API_KEY": SENTINEL})
    configs = pasted_key_configs("https://res.openai.azure.com")
    for index, (where, table) in enumerate(configs.items()):
        config = tmp_path / f"pasted-{index}.toml"
        config.write_text(f"[realtime]\n{table}")
        run = run_talkbox(command, "--config", str(config), env=env)
        output = run.stdout + run.stderr
        assert run.exit_code == 78, output
        key = "endpoint" if "endpoint" in where else "api_version"
        # Which key and what is wrong with it; the value as written, its secret part masked.
        assert f"realtime.{key} (line" in output, output
        assert "api-key=" in output and "…(" in output, output
        assert_no_leak(output, f"{command} with a key in {where}", PASTED_FORMS)
        assert_no_leak(output, f"{command} with a key in {where}")


# --- a hostile service ----------------------------------------------------------------------

FORGED_LINE = "2099-01-01 00:00:00.000 ERROR talkbox: FAKE"
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\u2028", "\u202e")
TWO_MEGABYTES = 2 * 2**20
# Transcripts are kept up to 2000 characters; a log line adds its prefix and fields.
LONGEST_LINE = 2400


def hostile(filler: int = 0) -> str:
    """What a hostile service says: escape sequences, a forged log line, the key, filler."""
    return f"ok\x1b[2J\x1b]0;pwned\x07\r\n{FORGED_LINE} {SENTINEL}\u2028\u202e" + "A" * filler


def hostile_events() -> list[dict[str, object]]:
    """Events a hostile service sends unasked: two transcripts and an error."""
    ids = {"response_id": "resp_hostile", "item_id": "item_hostile", "output_index": 0}
    return [
        {
            "type": "response.output_audio_transcript.done",
            **ids,
            "content_index": 0,
            "transcript": hostile(TWO_MEGABYTES),
        },
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_user",
            "content_index": 0,
            "transcript": hostile(10_000),
        },
        {
            "type": "error",
            "error": {
                "type": hostile(),
                "code": hostile(),
                "message": hostile(TWO_MEGABYTES),
                "param": None,
                "event_id": None,
            },
        },
    ]


def assert_clean(text: str, where: str) -> None:
    """No raw control character, no forged line, no endless line, nothing of the key."""
    for char in RAW_CONTROLS:
        assert char not in text, f"{char!r} in {where}"
    lines = text.split("\n")
    assert not any(line.startswith(FORGED_LINE[:5]) for line in lines), f"a forged line in {where}"
    longest = max(len(line) for line in lines)
    assert longest <= LONGEST_LINE, f"a line of {longest} characters in {where}"
    assert_no_leak(text, where)


HOOK_RECORDER = """import sys
with open({record!r}, "a", encoding="utf-8") as record:
    record.write(repr(sys.argv[1:]) + "\\n")
"""


def wake_until_logged(run: DaemonRun, text: str, timeout: float = 20.0) -> None:
    """`talkbox ctl wake` (again while a backoff refuses it) until the log has one more `text`."""
    seen = run.log().count(text)
    deadline = time.monotonic() + timeout
    while run.log().count(text) == seen:
        assert time.monotonic() < deadline, f"no new {text!r} within {timeout:g} s"
        run.ctl("wake")
        end_of_try = time.monotonic() + 2.0
        while run.log().count(text) == seen and time.monotonic() < end_of_try:
            time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.audio
def test_a_hostile_service_reaches_log_status_and_hooks_only_as_clean_lines(
    tmp_path: Path,
) -> None:
    record = tmp_path / "hook-arguments"
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK_RECORDER.format(record=str(record)))
    config = f"""
[realtime]
provider = "azure"
endpoint = "{{endpoint}}"
deployment = "{DEPLOYMENT}"
api_version = ""
connect_timeout_seconds = 5.0
[audio]
input_device = "mic"
output_device = "speaker"
[conversation]
follow_up_seconds = 1.0
[hooks]
on_state = {json.dumps([sys.executable, str(hook)])}
[control]
socket = "{{control_socket}}"
[log]
level = "debug"
transcripts = true
"""
    statuses: list[str] = []
    with serving(SENTINEL, deployments={DEPLOYMENT}) as service:
        faults: Faults = service.server.faults

        def set_faults(**changes: object) -> None:
            service.call(lambda: [setattr(faults, name, v) for name, v in changes.items()])

        set_faults(session_id=hostile(100_000), events_after_session_updated=hostile_events())
        text = config.replace("{endpoint}", service.url_base)
        with run_daemon(tmp_path / "run", text, api_key=SENTINEL) as run:
            run.wait_ready()
            run.microphone()  # silence, so capture keeps delivering
            wake_until_logged(run, "conversation failed: service error")
            statuses.append(run.ctl("status").stdout)
            set_faults(
                events_after_session_updated=[],
                reject_handshake_status=401,
                reject_handshake_message=hostile(100_000),
            )
            wake_until_logged(run, "HTTP 401")
            statuses.append(run.ctl("status").stdout)
            set_faults(
                reject_handshake_status=None,
                close_after_session_updated=InjectedClose(4000, hostile()),
            )
            wake_until_logged(run, "close 4000")
            statuses.append(run.ctl("status").stdout)
            # A reload that finds a key pasted into the config says so, without the key.
            config_path = tmp_path / "run" / "talkbox.toml"
            config_path.write_text(
                text.replace("{control_socket}", str(run.control_socket)).replace(
                    'api_version = ""', f'api_version = "2024-10-01&api-key={PASTED_AZURE_KEY}"'
                )
            )
            run.process.send_signal(signal.SIGHUP)
            run.wait_for_log("reload refused")
            code, _ = run.terminate()
            log = run.log()
            notify_lines = run.notify.lines()

    assert code == 0, log[-3000:]
    # The hostile text did get in, each time, and came out as one clean line.
    assert log.count(f"assistant said: ok [2J ]0;pwned {FORGED_LINE} sk-…(28 chars)") == 1
    assert log.count(f"user said: ok [2J ]0;pwned {FORGED_LINE} sk-…(28 chars)") == 1
    assert "realtime session ok [2J ]0;pwned" in log
    assert "api_version (line" in log and "api-key=9f2…(32 chars)" in log
    assert_clean(log, "the daemon's log")
    assert_no_leak(log, "the daemon's log", PASTED_FORMS)
    assert len(log) < 200_000, "megabytes from the service went into the log"
    for index, status in enumerate(statuses):
        assert "ERROR talkbox: FAKE sk-…(28 chars)" in status, status
        assert_clean(status, f"talkbox ctl status #{index}")
        assert len(status) < 3000
    assert "HTTP 401" in statuses[1] and "check the key from TALKBOX_API_KEY" in statuses[1]
    assert "close 4000" in statuses[2] and "api_version" not in statuses[2]
    assert_clean("\n".join(notify_lines), "what systemd was told")
    hook_runs = record.read_text().splitlines()
    assert len(hook_runs) >= 3, hook_runs  # states that come quickly are coalesced
    assert set(hook_runs) <= {repr([state]) for state in ("idle", "connecting", "listening")}


async def test_the_journal_gets_a_hostile_service_only_as_clean_fields(
    tmp_path: Path,
) -> None:
    sent: list[dict[str, object]] = []

    def journal_send(message: str, **fields: object) -> None:
        sent.append({"MESSAGE": message, **fields})

    handler = journal_handler(journal_send)
    assert handler is not None, "systemd-python is a dependency of the daemon"
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        async with FakeRealtimeServer(api_key=SENTINEL, deployments={DEPLOYMENT}) as service:
            quick = quick_daemon_config(service.url_base)
            cfg = quick.model_copy(update={"log": LogConfig(level="debug", transcripts=True)})
            async with daemon_with_key(tmp_path, cfg) as daemon:
                service.faults.session_id = hostile(100_000)
                service.faults.events_after_session_updated = hostile_events()
                errors = [await conversation(daemon, cfg, speak=False)]
                service.faults.events_after_session_updated = []
                service.faults.reject_handshake_status = 401
                service.faults.reject_handshake_message = hostile(100_000)
                errors.append(await conversation(daemon, cfg, speak=False))
                service.faults.reject_handshake_status = None
                service.faults.close_after_session_updated = InjectedClose(4000, hostile())
                errors.append(await conversation(daemon, cfg, speak=False))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)

    for index, error in enumerate(errors):
        assert "FAKE sk-…(28 chars)" in error, error
        assert_clean(error, f"the status of failure {index}")
    messages = [str(entry["MESSAGE"]) for entry in sent]
    assert any("assistant said: ok [2J" in message for message in messages)
    for entry in sent:
        for name, value in entry.items():
            assert_clean(str(value), f"the journal field {name} of {entry['MESSAGE']!r:.80}")
