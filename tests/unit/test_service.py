"""The service's decisions with fake parts: waiting for devices, reopening them, control
commands before and after start-up, reloads, and stopping. No sound card, no systemd, no
socket, no wake model: `Service` is handed fakes (support.fake_parts), as `talkbox run` hands
it the real ones. The real devices and the real process are tested in tests/integration
(test_faults, test_reload) and tests/e2e.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from support.fake_parts import FakeNotifier, FakeParts
from support.inprocess import until
from talkbox.audio.echo_cancel import ECHO_TAIL_S, STAY_ON_S
from talkbox.config import parse_config
from talkbox.core.retry import Backoff
from talkbox.errors import AudioDeviceError
from talkbox.shell.service import SPEAKER_STANDBY_SECONDS, Service, _note_stop_phrases

CONFIG = """
[audio]
input_device = "mic"
output_device = "speaker"
[turn]
silence_duration_ms = {silence}
[control]
socket = "{socket}"
[conversation]
follow_up_seconds = {follow_up}
"""
NO_SPEAKER = AudioDeviceError("no output device matches 'speaker'")
MIC_GONE = AudioDeviceError("capture from 'mic' stopped delivering audio")


@pytest.fixture(autouse=True)
def no_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mute is not remembered across these runs (no systemd StateDirectory)."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def write_config(path: Path, silence: int = 500, follow_up: float = 8.0) -> None:
    path.write_text(
        CONFIG.format(silence=silence, socket=path.with_suffix(".sock"), follow_up=follow_up)
    )


def make_service(tmp_path: Path, fakes: FakeParts) -> Service:
    config_path = tmp_path / "talkbox.toml"
    write_config(config_path)
    cfg = parse_config(config_path.read_text(), str(config_path))
    service = Service(config_path, cfg, None, fakes.parts())
    # Device retries after 50, 100, 200 ms (no jitter): the waits of a real run, shortened.
    service.device_backoff = Backoff(rand=lambda: 1.0, base=0.05, cap=0.2)
    return service


@asynccontextmanager
async def running(service: Service) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.create_task(service.run())
    try:
        yield task
    finally:
        service.stopping.set()
        assert await asyncio.wait_for(task, 5) == 0


async def test_start_up_waits_for_the_speaker_says_why_and_is_ready_once_it_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fakes = FakeParts()
    fakes.devices.refuse_speaker = [NO_SPEAKER, NO_SPEAKER]
    service = make_service(tmp_path, fakes)
    async with running(service):
        await until(lambda: "READY=1" in fakes.notifier.lines, "READY=1")
        status = await fakes.control.ask("status")

    waiting = f"waiting for the speaker: {NO_SPEAKER}"
    assert fakes.notifier.statuses() == [
        "starting: loading the wake-word model",
        waiting,
        waiting,
        "idle, listening for hey jarvis",
    ]
    assert fakes.notifier.lines.index("READY=1") == 3, "READY=1 only once both devices are open"
    retries = [r.getMessage() for r in caplog.records if "trying again in" in r.getMessage()]
    assert retries == [f"{NO_SPEAKER}; trying again in 0 s"] * 2
    assert len(fakes.devices.speakers) == 1 and len(fakes.devices.microphones) == 1
    assert status["ok"] and status["state"] == "idle" and status["muted"] is False
    assert service.device_backoff.consecutive_failures == 0


async def test_control_before_the_devices_come_reports_waits_and_holds_mute(
    tmp_path: Path,
) -> None:
    fakes = FakeParts()
    fakes.devices.speaker_missing = NO_SPEAKER
    service = make_service(tmp_path, fakes)
    async with running(service):
        await until(lambda: service.waiting_for != {}, "the wait for the speaker")
        status = await fakes.control.ask("status")
        wake = await fakes.control.ask("wake")
        stop = await fakes.control.ask("stop")
        mute = await fakes.control.ask("mute")

        fakes.devices.speaker_missing = None  # plugged in
        await until(lambda: "READY=1" in fakes.notifier.lines, "READY=1")
        after = await fakes.control.ask("status")
        wake_while_muted = await fakes.control.ask("wake")

    assert isinstance(status.pop("uptime_seconds"), int)
    assert status == {
        "ok": True,
        "state": "starting",
        "status": f"waiting for the speaker: {NO_SPEAKER}",
        "muted": False,
        "volume": 100,
        "conversations": 0,
        "last_error": "none",
        "ringing": False,
        "next_timer": "none",
    }
    assert wake == {"ok": False, "error": f"talkbox is not ready: {status['status']}"}
    assert stop == {"ok": True, "state": "starting"}
    assert mute == {"ok": True, "muted": True}
    assert f"waiting for the speaker: {NO_SPEAKER} (muted)" in fakes.notifier.statuses()
    assert after["muted"] is True and after["state"] == "idle"
    assert after["status"] == "muted (talkbox ctl unmute to listen again)"
    assert wake_while_muted == {"ok": False, "error": "talkbox is muted; talkbox ctl unmute first"}
    assert fakes.sessions.attempts == 0


async def test_stop_while_waiting_for_a_device_ends_at_once_not_after_the_delay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="talkbox")
    fakes = FakeParts()
    fakes.devices.speaker_missing = NO_SPEAKER
    service = make_service(tmp_path, fakes)
    service.device_backoff = Backoff(rand=lambda: 1.0, base=30.0, cap=30.0)
    task = asyncio.create_task(service.run())
    await until(lambda: service.waiting_for != {}, "the wait for the speaker")
    asked_at = time.monotonic()
    service.stopping.set()

    assert await asyncio.wait_for(task, 5) == 0
    assert time.monotonic() - asked_at < 1.0, "the 30 s retry delay was waited out"
    assert fakes.notifier.lines[-1] == "STOPPING=1"
    assert "stopping before start-up was complete" in caplog.text
    assert fakes.control.closed and fakes.devices.microphones == []


async def test_a_failing_microphone_is_closed_reopened_and_reported_meanwhile(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fakes = FakeParts()
    service = make_service(tmp_path, fakes)
    async with running(service):
        await until(lambda: "READY=1" in fakes.notifier.lines, "READY=1")
        first = fakes.devices.microphones[0]
        fed_before = fakes.front_ends[0].fed_bytes
        # The next open fails too, as an unplugged microphone does.
        fakes.devices.refuse_microphone = [MIC_GONE]
        first.fail(MIC_GONE)
        await until(lambda: len(fakes.devices.microphones) == 2, "the microphone reopened")
        # Idle, the front end takes its chunks in pairs: wait for it, not for the microphone.
        await until(lambda: fakes.front_ends[0].fed_bytes > fed_before, "audio heard again")
        status_meanwhile = [s for s in fakes.notifier.statuses() if "microphone" in s]

    assert first.stopped
    assert status_meanwhile and status_meanwhile[0] == f"waiting for the microphone: {MIC_GONE}"
    retries = [r.getMessage() for r in caplog.records if "trying again in" in r.getMessage()]
    assert retries == [f"{MIC_GONE}; trying again in 0 s"] * 2
    # Not back yet: a reopened microphone must keep delivering for a while first.
    assert "is back" not in caplog.text
    assert service.device_backoff.consecutive_failures == 2
    assert fakes.devices.microphones[1].periods_delivered > 0


async def test_a_broken_speaker_ends_the_conversation_and_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="talkbox")
    fakes = FakeParts()
    service = make_service(tmp_path, fakes)
    async with running(service):
        await until(lambda: "READY=1" in fakes.notifier.lines, "READY=1")
        first = fakes.devices.speakers[0]
        first.broken = AudioDeviceError("playback on 'speaker' failed")
        fakes.devices.refuse_speaker = [NO_SPEAKER]
        woken = await fakes.control.ask("wake")  # the wake chime hits the broken speaker
        await until(lambda: "speaker 'speaker' is back" in caplog.text, "the speaker back")
        status = await fakes.control.ask("status")

    assert woken == {"ok": True, "state": "connecting"}
    assert first.closed and len(fakes.devices.speakers) == 2
    assert service.daemon is not None and service.daemon.speaker is fakes.devices.speakers[1]
    assert status["state"] == "idle", "the conversation ended with the speaker"
    assert "state idle (speaker failed)" in caplog.text
    assert f"{NO_SPEAKER}; trying again in 0 s" in caplog.text


async def test_a_reload_applies_a_valid_config_and_refuses_a_broken_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fakes = FakeParts()
    service = make_service(tmp_path, fakes)
    async with running(service):
        await until(lambda: "READY=1" in fakes.notifier.lines, "READY=1")
        write_config(service.config_path, silence=700)
        await service.reload_config()
        applied = service.cfg
        service.config_path.write_text("[turn]\nsilence_duration_ms = 'soon'\n")
        await service.reload_config()

    assert applied.turn.silence_duration_ms == 700
    assert service.cfg is applied, "a broken file changes nothing"
    assert [f.cfg.turn.silence_duration_ms for f in fakes.front_ends] == [500, 700]
    assert service.daemon is not None and service.daemon.cfg is applied
    announced = [line for line in fakes.notifier.lines if line.startswith(("READY", "RELOAD"))]
    assert announced[:5] == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1"]
    assert "reload refused, the running configuration stays in force" in caplog.text


async def test_a_reload_that_leaves_the_front_end_alone_does_not_load_the_wake_models_again(
    tmp_path: Path,
) -> None:
    fakes = FakeParts()
    service = make_service(tmp_path, fakes)
    async with running(service):
        await until(lambda: "READY=1" in fakes.notifier.lines, "READY=1")
        write_config(service.config_path, follow_up=3.0)
        await service.reload_config()
        applied = service.cfg

    assert applied.conversation.follow_up_seconds == 3.0
    assert len(fakes.front_ends) == 1, "the running front end is kept"
    assert service.daemon is not None and service.daemon.front_end is fakes.front_ends[0]


async def test_a_control_socket_that_cannot_open_leaves_the_daemon_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fakes = FakeParts()
    fakes.control.refuse = "cannot create the control socket /nowhere/ctl.sock"
    service = make_service(tmp_path, fakes)
    async with running(service):
        await until(lambda: "READY=1" in fakes.notifier.lines, "READY=1")

    assert "cannot create the control socket /nowhere/ctl.sock; talkbox ctl will not work" in (
        caplog.text
    )
    assert not fakes.control.closed, "a socket that never opened is not closed"


async def test_the_watchdog_is_pinged_while_the_microphone_delivers(tmp_path: Path) -> None:
    fakes = FakeParts()
    service = make_service(tmp_path, fakes)
    async with running(service):
        await until(lambda: fakes.notifier.lines.count("WATCHDOG=1") >= 2, "watchdog pings")
    assert fakes.devices.microphones[0].periods_delivered > 0


async def test_without_a_watchdog_systemd_gets_no_pings(tmp_path: Path) -> None:
    fakes = FakeParts(notifier=FakeNotifier(watchdog_interval=None))
    service = make_service(tmp_path, fakes)
    async with running(service):
        await until(lambda: "READY=1" in fakes.notifier.lines, "READY=1")
        microphone = fakes.devices.microphones[0]
        await until(lambda: microphone.periods_delivered >= 10, "capture")
    assert "WATCHDOG=1" not in fakes.notifier.lines


@pytest.mark.parametrize(
    ("provider", "barge_in", "transcription_model", "noted"),
    [
        ("openai", "wake", "", True),
        ("azure", "speech", "", True),
        ("openai", "wake", "gpt-4o-mini-transcribe", False),
        ("openai", "off", "", False),  # no interrupting: every answer plays to its end
        ("echo", "wake", "", False),  # the echo provider transcribes nothing anyway
    ],
)
def test_the_start_says_once_when_stop_cannot_be_heard(
    caplog: pytest.LogCaptureFixture,
    provider: str,
    barge_in: str,
    transcription_model: str,
    noted: bool,
) -> None:
    endpoint = (
        'endpoint = "https://example.openai.azure.com"\ndeployment = "gpt-realtime"'
        if provider == "azure"
        else ""
    )
    cfg = parse_config(
        f'[realtime]\nprovider = "{provider}"\n{endpoint}\n'
        f'transcription_model = "{transcription_model}"\n'
        f'[conversation]\nbarge_in = "{barge_in}"\n',
        "talkbox.toml",
    )
    caplog.set_level(logging.INFO, logger="talkbox")
    _note_stop_phrases(cfg)
    lines = [r for r in caplog.records if "transcription_model" in r.getMessage()]
    assert len(lines) == (1 if noted else 0)
    if noted:
        assert lines[0].levelno == logging.INFO
        assert '"stop"' in lines[0].getMessage() and "\n" not in lines[0].getMessage()


async def test_a_front_end_that_dies_stops_the_daemon_with_a_failure_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fakes = FakeParts()
    service = make_service(tmp_path, fakes)
    task = asyncio.create_task(service.run())
    await until(lambda: "READY=1" in fakes.notifier.lines, "READY=1")
    fakes.front_ends[0].broken = RuntimeError("a bug in the front end")

    # Deaf, the daemon is of no use: it ends with EX_SOFTWARE, and systemd restarts it.
    assert await asyncio.wait_for(task, 5) == 70
    assert "the capture front end failed" in caplog.text
    assert fakes.notifier.lines[-1] == "STOPPING=1"


async def test_ctl_volume_reads_sets_and_changes_the_level_and_a_restart_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    fakes = FakeParts()
    fakes.devices.speaker_missing = NO_SPEAKER  # it works while the daemon waits, too
    service = make_service(tmp_path, fakes)
    async with running(service):
        await until(lambda: service.waiting_for != {}, "the wait for the speaker")
        replies = [
            await fakes.control.ask("volume"),
            await fakes.control.ask("volume", "30"),
            await fakes.control.ask("volume", "+5"),
            await fakes.control.ask("volume", "-50"),
            await fakes.control.ask("volume", "120"),
            await fakes.control.ask("volume", "7", "8"),
            await fakes.control.ask("volume", "25"),
        ]
        status = await fakes.control.ask("status")
    assert replies[:4] == [
        {"ok": True, "volume": 100},
        {"ok": True, "volume": 30},
        {"ok": True, "volume": 35},
        {"ok": True, "volume": 0},
    ]
    assert replies[4] == {
        "ok": False,
        "error": "the volume is an integer from 0 to 100 (percent), or +N / -N to change it "
        "by N; got '120'",
    }
    assert replies[5] == {"ok": False, "error": "volume takes at most one argument: N, +N or -N"}
    assert status["volume"] == 25
    assert (tmp_path / "state" / "volume").read_text() == "25\n"

    restarted = make_service(tmp_path, FakeParts())
    assert restarted.volume.level == 25 and restarted.volume.gain == 0.25


def test_the_speaker_stands_by_only_once_the_echo_canceller_rests() -> None:
    # A reference the canceller still pairs with the microphone is never cut off: it rests
    # STAY_ON_S after the last sound, and the speaker stands by only after that.
    assert SPEAKER_STANDBY_SECONDS > STAY_ON_S + ECHO_TAIL_S
