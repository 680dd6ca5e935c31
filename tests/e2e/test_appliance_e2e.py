"""`talkbox run` as an appliance, end to end: what systemd hears (sd_notify, watchdog), reload
on SIGHUP, the control socket driven by `talkbox ctl` processes, and the state hooks.

Each test runs the real process on ALSA file devices (microphone fed and speaker drained in
real time) with a stand-in for systemd's notify socket; the echo provider serves where the
service does not matter, the fake Realtime service where its `session.update` is inspected.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from e2e.conftest import API_KEY, phrase, service_config
from support.alsa import capture_pcm, playback_only_pcm
from support.daemon import DaemonRun, NotifyListener, log_monotonic, run_daemon, wait_until
from support.fake_realtime import RecordedSession, ServerThread
from support.speech import concat, silence

pytestmark = pytest.mark.slow

WATCHDOG_USEC = 1_500_000  # pings every 0.5 s: a third of the interval
WAKE_PHRASE = "hey jarvis"
HOSTILE_ARGUMENTS = ("; touch PWNED", "$(touch PWNED2)")


def echo_config(extra: str = "", *, input_device: str = "mic") -> str:
    return f"""
[realtime]
provider = "echo"
[audio]
input_device = "{input_device}"
output_device = "speaker"
# This microphone does not hear the speaker (no room): nothing to cancel.
echo_cancellation = false
[conversation]
follow_up_seconds = 1.0
[control]
socket = "{{control_socket}}"
{extra}
"""


def wake_and_command(command: str) -> bytes:
    """'hey jarvis' and a command in one breath, with silence either side, at 16 kHz."""
    spoken = concat(phrase(WAKE_PHRASE), silence(0.1), phrase(command))
    return bytes(concat(silence(1.0), spoken, silence(1.5)).tobytes())


def sessions(service: ServerThread) -> list[RecordedSession]:
    return service.call(lambda: copy.deepcopy(service.server.sessions))


def session_count(service: ServerThread) -> int:
    return service.call(lambda: len(service.server.sessions))


def session_settings(session: RecordedSession) -> dict[str, object]:
    [update] = session.client_events_of("session.update")
    settings: dict[str, object] = update["session"]
    return settings


def voice_of(settings: dict[str, object]) -> object:
    audio = settings["audio"]
    assert isinstance(audio, dict)
    return audio["output"]["voice"]


def find_message(notify: NotifyListener, line_start: str, after: int = -1) -> int | None:
    """Index of the first datagram after index `after` with a line starting `line_start`."""
    for index, (_, text) in enumerate(list(notify.messages)):
        if index > after and any(line.startswith(line_start) for line in text.splitlines()):
            return index
    return None


def message_index(notify: NotifyListener, line_start: str, after: int = -1) -> int:
    index = find_message(notify, line_start, after)
    if index is None:
        raise AssertionError(f"no {line_start!r} after message {after}: {notify.lines()}")
    return index


def wait_for_message(
    notify: NotifyListener, line_start: str, after: int = -1, timeout: float = 10.0
) -> int:
    """Index of the first datagram after index `after` with such a line, once it has come."""
    wait_until(
        lambda: find_message(notify, line_start, after) is not None,
        timeout,
        f"{line_start!r} after message {after}",
    )
    return message_index(notify, line_start, after)


def statuses(notify: NotifyListener) -> list[str]:
    return [line.removeprefix("STATUS=") for line in notify.lines() if line.startswith("STATUS=")]


def ctl_ok(run: DaemonRun, action: str) -> dict[str, str]:
    """Run `talkbox ctl ACTION`; it must succeed; its `name: value` lines as a dict."""
    result = run.ctl(action)
    assert result.returncode == 0, (action, result.stdout, result.stderr)
    return dict(line.split(": ", 1) for line in result.stdout.splitlines())


# --- 1. what systemd hears ----------------------------------------------------------------------


def test_systemd_hears_ready_status_watchdog_reload_and_stop(tmp_path: Path) -> None:
    # The microphone is not there at first: READY=1 must wait until it is.
    config = echo_config(input_device="late_mic")
    with run_daemon(tmp_path, config, extra_env={"WATCHDOG_USEC": str(WATCHDOG_USEC)}) as run:
        notify = run.notify
        wait_until(
            lambda: any(s.startswith("waiting for the microphone") for s in statuses(notify)),
            20,
            "STATUS waiting for the microphone",
        )
        time.sleep(1.0)  # a retry or two without the device
        assert "READY=1" not in notify.lines()
        assert notify.ping_times() == [], "no watchdog pings before start-up is complete"
        run.plug_in("late_mic", capture_pcm(run.sandbox.capture_path))
        microphone = run.microphone()
        run.wait_ready(timeout=20)
        waiting = message_index(
            notify, "STATUS=waiting for the microphone: audio.input_device = 'late_mic'"
        )
        ready = message_index(notify, "READY=1")
        idle = wait_for_message(notify, "STATUS=idle, listening for hey jarvis", after=ready)
        assert waiting < ready < idle
        log = run.log()
        assert log.index("capture started: input device 'late_mic'") < log.index("talkbox ready")

        # The watchdog: WATCHDOG_PID is unset (the pid is unknown before the start), which
        # Notifier.watchdog_interval takes as "meant for this process".
        wait_until(lambda: len(notify.ping_times()) >= 3, 10, "three watchdog pings")

        # A conversation shows in STATUS, and idle comes back after follow_up_seconds.
        before_wake = len(notify.messages)
        assert ctl_ok(run, "wake")["state"] in ("connecting", "listening")
        in_conversation = wait_for_message(notify, "STATUS=in a conversation", before_wake - 1)
        wait_for_message(notify, "STATUS=idle, listening for hey jarvis", in_conversation)

        # The microphone goes quiet: pings stop, and the daemon does not exit on its own
        # (systemd restarts it after WatchdogSec). Here the capture's own stall check (3 s)
        # fires first, and closing a stream blocked on the FIFO holds the daemon until audio
        # comes again (see FifoFeeder); either way systemd hears nothing.
        paused_at = time.monotonic()
        microphone.pause()
        wait_until(
            lambda: time.monotonic() - max(notify.ping_times()) >= 3.0,
            15,
            "watchdog pings to stop while the microphone is silent",
        )
        last_ping = max(notify.ping_times())
        # A short hiccup is tolerated: pings went on for a while after the audio stopped.
        assert last_ping - paused_at >= 1.5, last_ping - paused_at
        assert run.process.poll() is None

        # Audio again: the capture is reopened, pings come back and STATUS says idle again.
        resumed_at = time.monotonic()
        before_resume = len(notify.messages)
        microphone.resume()
        wait_until(
            lambda: any(at > resumed_at for at in notify.ping_times()),
            15,
            "watchdog pings after the microphone is back",
        )
        run.wait_for_log("microphone 'late_mic' is back", timeout=5)
        wait_for_message(notify, "STATUS=idle, listening for hey jarvis", before_resume - 1)
        log = run.log()
        assert "no audio from input device 'late_mic'" in log
        # Running again but not yet hearing (the retry delay) is no reason to ping: the
        # WatchdogGate waits for fresh audio.
        first_ping_after = min(at for at in notify.ping_times() if at > resumed_at)
        assert first_ping_after >= log_monotonic(log, "microphone 'late_mic' is back") - 0.05

        # SIGHUP: RELOADING=1 (stamped with MONOTONIC_USEC), then READY=1 again.
        before_reload = len(notify.messages)
        run.process.send_signal(signal.SIGHUP)
        wait_until(lambda: notify.lines().count("READY=1") >= 2, 10, "READY=1 after the reload")
        reloading = message_index(notify, "RELOADING=1", after=before_reload - 1)
        assert any(
            line.startswith("MONOTONIC_USEC=")
            for line in notify.messages[reloading][1].splitlines()
        )
        assert reloading < message_index(notify, "READY=1", after=reloading)

        code, took = run.terminate()
        log = run.log()
        lines = notify.lines()

    assert code == 0 and took < 5.0, (code, took, log)
    assert "STOPPING=1" in lines
    assert "READY=1" not in lines[lines.index("STOPPING=1") :]
    assert "Traceback" not in log, log


# --- 1b. before the devices come ----------------------------------------------------------------


def ctl_status_line(run: DaemonRun) -> str:
    """The `status:` line of `talkbox ctl status` (the daemon's state in words)."""
    return ctl_ok(run, "status")["status"]


def test_ctl_answers_while_the_devices_are_missing_and_mute_holds_once_they_come(
    tmp_path: Path,
) -> None:
    # A machine without a sound card; then a speaker that cannot record; then the microphone.
    with run_daemon(tmp_path, echo_config(), sound_card=False) as run:
        run.wait_for_log("no sound card found", timeout=20)
        status = ctl_ok(run, "status")
        assert status["state"] == "starting" and status["muted"] == "False", status
        assert status["status"].startswith(
            "waiting for the speaker: output device 'speaker': no sound card found: "
            "PortAudio lists no audio device (audio.output_device); check that `aplay -l`"
        ), status
        # No device at all: nothing about the sample rate, which is not the problem.
        assert "cannot play at" not in run.log() and "Hz" not in status["status"]

        assert ctl_ok(run, "mute")["muted"] == "True"
        assert ctl_ok(run, "stop")["state"] == "starting"  # no conversation to stop
        refused = run.ctl("wake")
        assert refused.returncode == 1, refused
        assert refused.stderr.startswith("talkbox: talkbox is not ready: waiting for the speaker")
        assert ctl_ok(run, "status")["muted"] == "True"

        run.plug_in("speaker", playback_only_pcm(run.sandbox.playback_path))
        wait_until(
            lambda: ctl_status_line(run).startswith("waiting for the microphone"),
            40,
            "the daemon to wait for the microphone",
        )
        assert ctl_status_line(run).startswith(
            "waiting for the microphone: input device 'mic': no input device found: none of "
            "the 1 audio device PortAudio lists can record (audio.input_device); check that"
        )
        assert ctl_status_line(run).endswith(" (muted)")
        assert "cannot capture at" not in run.log()
        assert "READY=1" not in run.notify.lines()

        run.plug_in("mic", capture_pcm(run.sandbox.capture_path))
        microphone = run.microphone()
        run.wait_ready(timeout=40)
        ready = message_index(run.notify, "READY=1")
        wait_for_message(run.notify, "STATUS=muted", after=ready)
        status = ctl_ok(run, "status")
        assert (status["state"], status["muted"]) == ("idle", "True"), status
        # Muted since before the devices came: the wake word starts nothing.
        microphone.speak(wake_and_command("testing one two three"))
        microphone.wait_spoken()
        time.sleep(1.0)  # longer than the wake model takes to decide
        status = ctl_ok(run, "status")
        code, _ = run.terminate()
        log = run.log()

    assert code == 0, log
    assert "wake word" not in log and status["conversations"] == "0", (status, log)
    assert "Traceback" not in log, log


def test_stopping_while_waiting_for_the_devices_ends_cleanly(tmp_path: Path) -> None:
    with run_daemon(tmp_path, echo_config(), sound_card=False) as run:
        run.wait_for_log("no sound card found", timeout=20)
        assert ctl_status_line(run).startswith("waiting for the speaker")
        code, took = run.terminate()
        log = run.log()
        lines = run.notify.lines()

    assert code == 0 and took < 5.0, (code, took, log)
    assert "Traceback" not in log, log
    assert "STOPPING=1" in lines and "READY=1" not in lines, lines
    assert not run.control_socket.exists()


# --- 2. reload --------------------------------------------------------------------------------


def realtime_config(url_base: str, realtime_keys: str = "") -> str:
    """The fake service's config with `realtime_keys` added to [realtime]."""
    config = service_config(
        url_base,
        follow_up=30.0,  # conversations end by `talkbox ctl stop`, not by the clock
    )
    return config.replace("[realtime]\n", f"[realtime]\n{realtime_keys}\n", 1)


def converse_by_ctl(run: DaemonRun, service: ServerThread, expected_sessions: int) -> None:
    """`talkbox ctl wake` and wait until the service has the session configured."""
    ctl_ok(run, "wake")
    service.wait_for(
        lambda: (
            len(service.server.sessions) == expected_sessions
            and bool(service.server.sessions[-1].client_events_of("session.update"))
        ),
        10,
    )
    run.wait_for_log("state listening", count=expected_sessions, timeout=10)


def stop_by_ctl(run: DaemonRun, service: ServerThread) -> None:
    assert ctl_ok(run, "stop")["state"] == "idle"
    service.wait_for(lambda: service.server.sessions[-1].closed, 10)


def test_reload_applies_from_the_next_conversation_and_refuses_a_bad_config(
    tmp_path: Path, fake_service: ServerThread
) -> None:
    url = fake_service.url_base
    first = 'voice = "alloy"\ninstructions = "You are the first configuration."'
    second = 'voice = "verse"\ninstructions = "You are the second configuration."'
    # Invalid: an empty voice. Its valid-looking instructions must not get in either.
    broken = 'voice = ""\ninstructions = "You are the broken configuration."'
    with run_daemon(tmp_path, realtime_config(url, first), api_key=API_KEY) as run:
        config_path = tmp_path / "talkbox.toml"
        run.wait_ready()
        run.microphone()

        # A reload during a conversation leaves that conversation alone.
        converse_by_ctl(run, fake_service, expected_sessions=1)
        config_path.write_text(
            realtime_config(url, second).replace("{control_socket}", str(run.control_socket))
        )
        run.process.send_signal(signal.SIGHUP)
        run.wait_for_log("reloaded; it applies from the next conversation", timeout=10)
        stop_by_ctl(run, fake_service)
        run.wait_for_log("new configuration in force", timeout=5)
        converse_by_ctl(run, fake_service, expected_sessions=2)
        stop_by_ctl(run, fake_service)

        config_path.write_text(
            realtime_config(url, broken).replace("{control_socket}", str(run.control_socket))
        )
        run.process.send_signal(signal.SIGHUP)
        run.wait_for_log("reload refused", timeout=10)
        assert run.process.poll() is None
        converse_by_ctl(run, fake_service, expected_sessions=3)
        stop_by_ctl(run, fake_service)
        code, _ = run.terminate()
        log = run.log()

    assert code == 0, log
    assert fake_service.server.protocol_violations == []
    one, two, three = (session_settings(s) for s in sessions(fake_service))
    assert (voice_of(one), one["instructions"]) == ("alloy", "You are the first configuration.")
    assert (voice_of(two), two["instructions"]) == ("verse", "You are the second configuration.")
    assert (voice_of(three), three["instructions"]) == (
        "verse",
        "You are the second configuration.",
    )
    refusal = log[log.index("reload refused") :]
    assert "the running configuration stays in force" in refusal
    assert "realtime.voice" in refusal.split("INFO", 1)[0], refusal


# --- 3. the control socket --------------------------------------------------------------------


def test_talkbox_ctl_status_mute_unmute_wake_stop(
    tmp_path: Path, fake_service: ServerThread
) -> None:
    fake_service.server.reply_duration_ms = 400
    with run_daemon(tmp_path, realtime_config(fake_service.url_base), api_key=API_KEY) as run:
        run.wait_ready()
        microphone = run.microphone()
        mode = os.stat(run.control_socket).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660, oct(mode)

        status = ctl_ok(run, "status")
        assert status["state"] == "idle" and status["muted"] == "False"
        assert int(status["uptime_seconds"]) >= 0
        assert status["conversations"] == "0" and status["last_error"] == "none"

        before_mute = len(run.notify.messages)
        assert ctl_ok(run, "mute")["muted"] == "True"
        wait_for_message(run.notify, "STATUS=muted", before_mute - 1)
        refused = run.ctl("wake")
        assert refused.returncode != 0 and "muted" in refused.stderr, refused
        # Mute survives a reload.
        before_reload = len(run.notify.messages)
        run.process.send_signal(signal.SIGHUP)
        run.wait_for_log("new configuration in force", timeout=10)
        reloaded = wait_for_message(run.notify, "READY=1", before_reload - 1)
        assert (
            "STATUS=muted"
            in run.notify.messages[wait_for_message(run.notify, "STATUS=", reloaded)][1]
        )
        assert ctl_ok(run, "status")["muted"] == "True"
        # Muted, the wake word starts nothing and nothing goes up.
        microphone.speak(wake_and_command("what time is it"))
        microphone.wait_spoken()
        time.sleep(1.0)  # longer than the wake model takes to decide
        assert session_count(fake_service) == 0
        assert "wake word" not in run.log()
        assert ctl_ok(run, "status")["conversations"] == "0"

        before_unmute = len(run.notify.messages)
        assert ctl_ok(run, "unmute")["muted"] == "False"
        wait_for_message(run.notify, "STATUS=idle, listening for hey jarvis", before_unmute - 1)
        microphone.speak(wake_and_command("what time is it"))
        fake_service.wait_for(
            lambda: (
                len(fake_service.server.sessions) == 1
                and bool(fake_service.server.sessions[0].responses)
                and fake_service.server.sessions[0].responses[0].status == "completed"
            ),
            20,
        )
        stop_by_ctl(run, fake_service)

        converse_by_ctl(run, fake_service, expected_sessions=2)
        assert ctl_ok(run, "status")["state"] == "listening"
        stop_by_ctl(run, fake_service)
        status = ctl_ok(run, "status")
        code, _ = run.terminate()
        log = run.log()

    assert code == 0, log
    assert fake_service.server.protocol_violations == []
    assert status["state"] == "idle" and status["conversations"] == "2", status
    assert status["last_error"] == "none"
    spoken, woken = sessions(fake_service)
    assert len(spoken.appended_audio) > 0 and len(spoken.commits) == 1
    assert spoken.closed and woken.closed
    assert log.count("wake word hey_jarvis (score") == 1


# --- 4. state hooks ---------------------------------------------------------------------------


HOOK_SCRIPT = r"""#!/bin/sh
# One line per run: $TALKBOX_STATE, then every argument, tab-separated.
printf '%s' "$TALKBOX_STATE" >> "{record}"
for argument in "$@"; do printf '\t%s' "$argument" >> "{record}"; done
printf '\n' >> "{record}"
case "$TALKBOX_STATE" in
    listening) exit 1 ;;
    responding) sleep 30 ;;
esac
"""


def hook_runs(record: Path) -> list[list[str]]:
    if not record.exists():
        return []
    return [line.split("\t") for line in record.read_text().splitlines()]


def test_state_hooks_run_in_order_with_hostile_arguments_kept_verbatim(tmp_path: Path) -> None:
    record = tmp_path / "hook-record.txt"
    script = tmp_path / "hooks" / "led.sh"
    script.parent.mkdir()
    script.write_text(HOOK_SCRIPT.format(record=record))
    script.chmod(0o755)
    argv = json.dumps([str(script), *HOSTILE_ARGUMENTS])  # a JSON array is a TOML array
    hooks = f"[hooks]\non_state = {argv}\ntimeout_seconds = 1.0\n"
    with run_daemon(tmp_path, echo_config(hooks)) as run:
        run.wait_ready()
        microphone = run.microphone()
        microphone.speak(wake_and_command("testing one two three"))
        run.wait_for_log("state idle", timeout=25)
        wait_until(lambda: len(hook_runs(record)) >= 6, 10, "six hook runs")

        # The daemon keeps working after hooks that failed and timed out.
        ctl_ok(run, "wake")
        run.wait_for_log("state idle", count=2, timeout=10)
        wait_until(lambda: len(hook_runs(record)) >= 9, 10, "nine hook runs")
        code, _ = run.terminate()
        log = run.log()

    assert code == 0, log
    runs = hook_runs(record)
    states = [hook_run[0] for hook_run in runs]
    assert states[:6] == ["idle", "connecting", "listening", "responding", "listening", "idle"]
    assert states[6:] == ["connecting", "listening", "idle"]
    for hook_run in runs:
        # The configured arguments exactly as written, then the state (also in the environment).
        assert hook_run[1:] == [*HOSTILE_ARGUMENTS, hook_run[0]], hook_run
    assert "exited with status 1 for state listening" in log
    assert "ran longer than 1 s for state responding and was killed" in log
    assert list(tmp_path.rglob("PWNED*")) == []
    assert not any(Path.cwd().glob("PWNED*"))
