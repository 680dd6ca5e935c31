"""The daemon's recovery path for a speaker that cannot start again after standing by.

`Service` runs on the test's loop with fake parts, except the speaker: a real `Playback`
opened by the real `SoundCard` (PyAudio over ALSA's file plugin, a FIFO drained in real
time), standing by as the daemon ships it. When the next sound cannot start the stream, the
AudioDeviceError takes the path every failed speaker takes (Daemon._perform ->
Service._speaker_failed -> the supervisor reopens it): the daemon neither dies nor stays mute.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from support.alsa import FifoDrainer, alsa_sandbox
from support.fake_parts import FakeMicrophone, FakeParts
from support.inprocess import until
from talkbox.audio.capture import Captured
from talkbox.audio.chimes import chime
from talkbox.audio.playback import Playback
from talkbox.config import Config, parse_config
from talkbox.core.retry import Backoff
from talkbox.shell import service as service_module
from talkbox.shell.service import Service, SoundCard

pytestmark = pytest.mark.audio

SPEAKER_RATE = 24000
LINGER_S = 0.3
CONFIG = """
[audio]
input_device = "mic"
output_device = "speaker"
output_rate = 24000
[control]
socket = "{socket}"
"""


@dataclass
class FakeMicrophoneRealSpeaker:
    """A fake microphone; the speaker opened as `talkbox run` opens it."""

    speakers: list[Playback] = field(default_factory=list)
    sound_card: SoundCard = field(default_factory=SoundCard)

    def open_microphone(self, cfg: Config, deliver: Callable[[Captured], None]) -> FakeMicrophone:
        return FakeMicrophone(deliver)

    def open_speaker(self, cfg: Config, on_drained: Callable[[], None]) -> Playback:
        speaker = self.sound_card.open_speaker(cfg, on_drained)
        self.speakers.append(speaker)
        return speaker


async def test_a_speaker_that_cannot_start_after_standby_is_reopened_and_plays_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="talkbox")
    monkeypatch.setattr(service_module, "SPEAKER_STANDBY_SECONDS", LINGER_S)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    devices = FakeMicrophoneRealSpeaker()
    fakes = FakeParts()
    config_path = tmp_path / "talkbox.toml"
    config_path.write_text(CONFIG.format(socket=tmp_path / "ctl.sock"))
    cfg = parse_config(config_path.read_text(), str(config_path))
    with (
        alsa_sandbox(tmp_path / "alsa", playback_fifo=True) as sandbox,
        FifoDrainer(sandbox.playback_path, rate=SPEAKER_RATE) as drainer,
    ):
        service = Service(config_path, cfg, None, replace(fakes.parts(), devices=devices))
        service.device_backoff = Backoff(rand=lambda: 1.0, base=0.05, cap=0.2)
        task = asyncio.create_task(service.run())
        try:
            await until(lambda: "READY=1" in fakes.notifier.lines, "READY=1")
            [first] = devices.speakers
            await asyncio.sleep(0.3)
            assert drainer.drained == 0, "the idle daemon's speaker stands by"
            # The device goes away while standing by: its PortAudio stream cannot start again.
            first._stream.close()
            await fakes.control.ask("wake")  # the wake chime needs the speaker
            await until(lambda: "speaker 'speaker' is back" in caplog.text, "the speaker back")
            assert not task.done(), "the daemon must not die of its speaker"
            [_, second] = devices.speakers
            assert service.daemon is not None and service.daemon.speaker is second
            assert "state idle (speaker failed)" in caplog.text
            # The next wake's chime plays through the reopened speaker, started from standby.
            await fakes.control.ask("wake")
            wake_chime = chime("wake", SPEAKER_RATE, cfg.audio.volume)
            await until(lambda: wake_chime in drainer.data(), "the wake chime heard", 5)
        finally:
            service.stopping.set()
            assert await asyncio.wait_for(task, 5) == 0

    assert "output device 'speaker' could not start playing" in caplog.text
