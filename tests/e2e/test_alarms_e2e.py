"""Timers and alarms through the real `talkbox run`: set by a scripted function call, rung on
the speaker FIFO with no session open, kept across a stop and a start in the same state
directory (systemd's StateDirectory=, here $STATE_DIRECTORY), announced when missed, a corrupt
file moved aside, and the ring stopped by `talkbox ctl stop` and by the wake word."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from e2e.conftest import API_KEY, one_breath, phrase, service_config
from support.daemon import DaemonRun, run_daemon, wait_until
from support.fake_realtime import ServerThread
from support.service import sessions
from support.speech import concat, silence
from talkbox.audio.chimes import chime
from talkbox.core.alarms import new_timer
from talkbox.tools.alarms import AlarmStore

pytestmark = pytest.mark.slow

SPEAKER_RATE = 24000
ALARM = chime("alarm", SPEAKER_RATE, 0.6)  # the shipped [audio] volume
# The speaker plays bit-exactly what it is given at its own rate: the chime is found in what
# the room heard byte for byte, so nothing else can pass for it.


def rings(run: DaemonRun, since: float = 0.0) -> int:
    """How many alarm chimes the room heard (since a device-clock moment)."""
    return run.heard(since).count(ALARM)


def state_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return state, {"STATE_DIRECTORY": str(state)}


def keep_missed_timer(state: Path, label: str, due_seconds_ago: float) -> None:
    """A timer in the state directory's file that came due while no talkbox ran (written
    by the daemon's own store, so the file is as the daemon writes it)."""
    store = AlarmStore(state / "alarms.json")
    store.load()  # those kept already stay
    now = dt.datetime.now().astimezone() - dt.timedelta(seconds=60 + due_seconds_ago)
    store.add(lambda pending: new_timer(60, label, now, pending))


def set_timer_by_voice(run: DaemonRun, fake_service: ServerThread, seconds: float,
                       label: str) -> None:
    fake_service.server.function_calls = [[
        ("set_timer", json.dumps({"duration_seconds": seconds, "label": label}))]]
    spoken, _ = one_breath("hey jarvis", f"set a timer for {label}")
    run.say(concat(silence(1.0), spoken, silence(1.0)).tobytes())
    run.wait_for_log("tool set_timer answered", timeout=30)


def test_a_short_timer_rings_with_no_session_open(tmp_path, fake_service) -> None:
    _, env = state_env(tmp_path)
    fake_service.server.reply_duration_ms = 200  # "OK": the conversation ends before it rings
    config = service_config(fake_service.url_base, follow_up=1.0,
                            extra="[tools]\nalarm_ring_seconds = 5\n")
    with run_daemon(tmp_path, config, api_key=API_KEY, extra_env=env) as run:
        run.wait_ready()
        set_timer_by_voice(run, fake_service, 3, "pasta")
        run.wait_for_log("timer 'pasta' rings", timeout=30)
        run.wait_for_log("ringing stopped", timeout=10)
        time.sleep(0.5)
        code, _ = run.terminate()
        log = run.log()
    assert code == 0, log
    [session] = sessions(fake_service)
    [output] = session.function_outputs
    answer = json.loads(output["output"])
    assert answer["result"].startswith("timer 'pasta' set for 3 seconds, rings at "), answer
    # The conversation was over (its session closed) before the timer rang.
    assert log.index("state idle") < log.index("timer 'pasta' rings"), log
    assert "ringing stopped: it rang for its time" in log
    heard = run.heard()
    assert heard.count(ALARM) >= 3, "the chime repeats while it rings"
    assert heard.count(ALARM) <= 5 / 1.5 + 1, "and stops at its bound"
    assert fake_service.server.protocol_violations == [], log


def test_a_timer_survives_a_restart_and_one_missed_meanwhile_is_announced(
    tmp_path, fake_service
) -> None:
    state, env = state_env(tmp_path)
    config = service_config(fake_service.url_base, follow_up=1.0)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with run_daemon(first, config, api_key=API_KEY, extra_env=env) as run:
        run.wait_ready()
        set_timer_by_voice(run, fake_service, 25, "bread")
        run.wait_for_log("state idle", timeout=30)
        code, _ = run.terminate()
        assert code == 0, run.log()
        assert rings(run) == 0
    stopped_at = time.monotonic()
    # A second one, due while no talkbox runs: the next start must announce it.
    keep_missed_timer(state, "tea", due_seconds_ago=120)
    with run_daemon(second, config, api_key=API_KEY, extra_env=env) as run:
        run.microphone()  # a quiet room
        run.wait_ready()
        run.wait_for_log("was missed while talkbox was off", timeout=10)
        status = run.ctl("status")
        listed = run.ctl("timers")
        run.wait_for_log("timer 'bread' rings", timeout=40)
        rang_after = time.monotonic() - stopped_at
        time.sleep(2.0)
        run.ctl("stop")
        code, _ = run.terminate()
        log = run.log()
        heard = run.heard()
    assert code == 0, log
    assert "timer 'tea' due at" in log and "was missed while talkbox was off" in log
    assert "next_timer: timer 'bread' (id 1) rings at " in status.stdout, status.stdout
    assert "timer 'bread' (id 1)" in listed.stdout, listed.stdout
    assert "timer 'bread' rings (due at" in log, "on time: not missed"
    assert rang_after < 25, "it rang when due, counted from when it was set"
    assert heard.count(ALARM) >= 2
    assert sessions(fake_service)[1:] == [], "the second run opened no session"
    assert json.loads((state / "alarms.json").read_text())["alarms"] == []


def test_a_corrupt_state_file_is_moved_aside_and_the_daemon_runs(tmp_path) -> None:
    state, env = state_env(tmp_path)
    (state / "alarms.json").write_text('{"version": 1, "alarms": [{"id": ')
    config = service_config("http://127.0.0.1:9", follow_up=1.0)
    with run_daemon(tmp_path, config, api_key=API_KEY, extra_env=env) as run:
        run.microphone()
        run.wait_ready()
        run.wait_for_log("is unreadable", timeout=10)
        status = run.ctl("status")
        code, _ = run.terminate()
        log = run.log()
    assert code == 0, log
    assert status.returncode == 0 and "next_timer: none" in status.stdout
    assert f"the timers and alarms file {state / 'alarms.json'} is unreadable (not JSON)" in log
    assert (state / "alarms.json.corrupt").read_text().startswith('{"version": 1')
    assert not (state / "alarms.json").exists()


def test_talkbox_ctl_stop_stops_the_ringing(tmp_path) -> None:
    state, env = state_env(tmp_path)
    keep_missed_timer(state, "eggs", due_seconds_ago=30)
    config = service_config("http://127.0.0.1:9", follow_up=1.0)
    with run_daemon(tmp_path, config, api_key=API_KEY, extra_env=env) as run:
        run.microphone()
        run.wait_ready()
        run.wait_for_log("timer 'eggs' due at", timeout=10)
        wait_until(lambda: rings(run) >= 2, 10, "the alarm chime, twice")
        stop = run.ctl("stop")
        run.wait_for_log("ringing stopped: talkbox ctl stop", timeout=5)
        time.sleep(0.5)  # what was already in the device's buffer plays out
        after_stop = len(run.heard())
        time.sleep(3.0)
        later = run.heard()[after_stop:]
        code, _ = run.terminate()
    assert code == 0, run.log()
    assert stop.returncode == 0, stop.stderr
    assert ALARM not in later, "no chime after the stop"


def test_the_wake_word_stops_the_ringing_and_opens_no_conversation(
    tmp_path, fake_service
) -> None:
    state, env = state_env(tmp_path)
    keep_missed_timer(state, "laundry", due_seconds_ago=30)
    config = service_config(fake_service.url_base, follow_up=1.0)
    with run_daemon(tmp_path, config, api_key=API_KEY, extra_env=env) as run:
        microphone = run.microphone()
        run.wait_ready()
        wait_until(lambda: rings(run) >= 1, 10, "the alarm chime")
        microphone.speak(concat(phrase("hey jarvis"), silence(1.0)).tobytes())
        run.wait_for_log("ringing stopped: wake word", timeout=15)
        after_stop = len(run.heard()) + SPEAKER_RATE  # what was queued plays out
        time.sleep(3.0)
        later = run.heard()[after_stop:]
        code, _ = run.terminate()
        log = run.log()
    assert code == 0, log
    assert "state connecting" not in log, "the wake word only stopped the ring"
    assert sessions(fake_service) == []
    assert ALARM not in later
