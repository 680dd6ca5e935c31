"""A reload (SIGHUP) loads the new wake models off the event loop.

The real `Service` runs in-process on the ALSA file plugin (a microphone fed with silence in
real time, a drained speaker) with a notify socket. Loading the models is made slow on
purpose (as on a Pi Zero, or under emulation, where it took 16 s), by the model loader handed
to the service: while it loads, the loop must go on capturing, pinging the watchdog and
answering the control socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from support.alsa import FifoDrainer, FifoFeeder, alsa_sandbox
from support.daemon import NotifyListener
from support.inprocess import SPEAKER_RATE, until
from talkbox.audio.capture import Capture
from talkbox.audio.frontend import FrontEnd
from talkbox.config import Config, parse_config
from talkbox.shell.app import build_front_end
from talkbox.shell.control import send_command
from talkbox.shell.service import Service, real_parts

pytestmark = pytest.mark.audio

SLOW_LOAD_S = 1.5
CONFIG = """
[audio]
input_device = "mic"
output_device = "speaker"
[turn]
silence_duration_ms = {silence}
[control]
socket = "{socket}"
"""


async def loop_stalls_while(done: asyncio.Event) -> float:
    """The longest the loop went without running this task (10 ms ticks) until `done`."""
    worst = 0.0
    last = time.monotonic()
    while not done.is_set():
        await asyncio.sleep(0.01)
        now = time.monotonic()
        worst = max(worst, now - last)
        last = now
    return worst


class ModelLoader:
    """The real wake-model loader, made slow (as on a slow machine) once `slow` is set."""

    def __init__(self) -> None:
        self.slow = False
        self.slow_loads: list[tuple[float, float]] = []  # (started, finished)

    def __call__(self, cfg: Config) -> FrontEnd:
        if not self.slow:
            return build_front_end(cfg)
        started = time.monotonic()
        time.sleep(SLOW_LOAD_S)  # blocks whichever thread runs it, as a real load does
        front_end = build_front_end(cfg)
        self.slow_loads.append((started, time.monotonic()))
        return front_end


async def test_a_slow_model_load_on_reload_stalls_nothing(
    tmp_path: Path, notify_listener: NotifyListener
) -> None:
    loader = ModelLoader()
    loads = loader.slow_loads

    socket_path = tmp_path / "ctl.sock"
    config_path = tmp_path / "talkbox.toml"
    config_path.write_text(CONFIG.format(silence=500, socket=socket_path))
    with alsa_sandbox(tmp_path / "alsa", capture_fifo=True, playback_fifo=True) as sandbox:
        speaker = FifoDrainer(sandbox.playback_path, rate=SPEAKER_RATE)
        speaker.start()
        microphone = FifoFeeder(sandbox.capture_path, b"", rate=16000, period_frames=640)
        microphone.start()
        parts = dataclasses.replace(real_parts(), build_front_end=loader)
        service = Service(config_path, parse_config(config_path.read_text(), "test"), None, parts)
        running = asyncio.create_task(service.run())
        try:
            await until(lambda: "READY=1" in notify_listener.lines(), "READY=1", timeout=20)
            await until(lambda: len(notify_listener.ping_times()) >= 2, "watchdog pings")
            loader.slow = True
            config_path.write_text(CONFIG.format(silence=700, socket=socket_path))

            reloaded = asyncio.Event()
            stalls = asyncio.create_task(loop_stalls_while(reloaded))
            asked_at = time.monotonic()
            service.reload()
            await asyncio.sleep(SLOW_LOAD_S / 2)
            status = await send_command(str(socket_path), "status", timeout=1.0)
            await until(lambda: bool(loads), "the slow load", timeout=10)
            await until(lambda: service.cfg.turn.silence_duration_ms == 700, "the new config")
            reloaded.set()
            worst_stall = await stalls

            assert status["ok"] and status["state"] == "idle", status
            assert worst_stall < 0.3, f"the loop stalled for {worst_stall:.2f} s"
            started, finished = loads[0]
            assert finished - started >= SLOW_LOAD_S
            pings_meanwhile = [t for t in notify_listener.ping_times() if started < t < finished]
            assert len(pings_meanwhile) >= 3, "the watchdog was pinged during the load"
            assert isinstance(service.capture, Capture) and service.capture.overflows == 0
            # READY=1 follows the new config a moment later, through the notify socket.
            await until(lambda: notify_listener.lines().count("READY=1") >= 2, "READY=1 again")
            lines = notify_listener.lines()
            assert "RELOADING=1" in lines and lines.count("READY=1") == 2
            assert service.daemon is not None
            assert service.daemon.front_end.gate.silence_frames == 30  # (700 - 100) / 20
            assert asked_at <= started
        finally:
            service.stopping.set()
            await asyncio.wait_for(running, 10)
            microphone.stop()
            speaker.stop()
