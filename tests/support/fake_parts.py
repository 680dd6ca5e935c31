"""Fake parts for a `Service` run in-process: no sound card, no systemd, no socket, no model.

Each fake records what the service did with it, and the test decides what it does: a device
that cannot be opened (`FakeDevices.refuse_*`), a microphone that fails mid-run
(`FakeMicrophone.fail`), a speaker that breaks when it next plays. The control socket is not
bound: the test calls the service's handler as `talkbox ctl` would (`FakeControlSocket.ask`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from talkbox.audio.capture import Captured
from talkbox.config import Config
from talkbox.errors import AudioDeviceError, TalkboxError
from talkbox.secrets import ApiKey
from talkbox.shell.control import ControlHandler
from talkbox.shell.service import ServiceParts

# A 40 ms capture period of silence at 16 kHz.
SILENT_PERIOD = bytes(16000 * 40 // 1000 * 2)


class FakeMicrophone:
    """Delivers silence each capture period, from a task on the loop, until told to fail."""

    def __init__(self, deliver: Callable[[Captured], None], period_seconds: float = 0.04) -> None:
        self.period_seconds = period_seconds
        self.stopped = False
        self._failure: AudioDeviceError | None = None
        self.periods_delivered = 0
        self._deliver = deliver
        self._task = asyncio.get_running_loop().create_task(self._run())

    def fail(self, error: AudioDeviceError) -> None:
        """Audio stops and the next health check raises `error`, as a lost device does."""
        self._failure = error

    def check_health(self) -> None:
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        self.stopped = True
        self._task.cancel()

    async def _run(self) -> None:
        while self._failure is None:
            await asyncio.sleep(self.period_seconds)
            self.periods_delivered += 1
            self._deliver(Captured(SILENT_PERIOD, time.monotonic()))


class FakeSpeaker:
    """Takes what the conversation loop plays, and counts it; `broken` makes it fail."""

    def __init__(self, on_drained: Callable[[], None]) -> None:
        self.on_drained = on_drained
        self.played_samples = 0
        self.chimes: list[bytes] = []
        self.written = bytearray()
        self.broken: AudioDeviceError | None = None
        self.closed = False

    def _check(self) -> None:
        if self.broken is not None:
            raise self.broken

    def write(self, pcm_source_rate: bytes) -> None:
        self._check()
        self.written += pcm_source_rate

    def end_of_stream(self) -> None:
        self._check()

    def play_chime(self, pcm_source_rate: bytes) -> None:
        self._check()
        self.chimes.append(pcm_source_rate)

    def flush(self) -> None:
        self._check()

    def hold(self) -> None:
        """Nothing is played here, so there is nothing to pause."""

    def resume(self) -> None:
        """Nothing is played here, so there is nothing to play on."""

    def reset_count(self) -> None:
        self.played_samples = 0

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeDevices:
    """Opens fake devices; a refusal queued in `refuse_*` is raised by the next open."""

    refuse_microphone: list[AudioDeviceError] = field(default_factory=list)
    refuse_speaker: list[AudioDeviceError] = field(default_factory=list)
    # Raised by every open of the speaker while set (a sound card that is not there at all).
    speaker_missing: AudioDeviceError | None = None
    microphones: list[FakeMicrophone] = field(default_factory=list)
    speakers: list[FakeSpeaker] = field(default_factory=list)

    def open_microphone(self, cfg: Config, deliver: Callable[[Captured], None]) -> FakeMicrophone:
        if self.refuse_microphone:
            raise self.refuse_microphone.pop(0)
        microphone = FakeMicrophone(deliver)
        self.microphones.append(microphone)
        return microphone

    def open_speaker(self, cfg: Config, on_drained: Callable[[], None]) -> FakeSpeaker:
        if self.speaker_missing is not None:
            raise self.speaker_missing
        if self.refuse_speaker:
            raise self.refuse_speaker.pop(0)
        speaker = FakeSpeaker(on_drained)
        self.speakers.append(speaker)
        return speaker


class FakeNotifier:
    """Records each sd_notify message as the line systemd would get."""

    def __init__(self, watchdog_interval: float | None = 0.3) -> None:
        self.lines: list[str] = []
        self._watchdog_interval = watchdog_interval

    def ready(self) -> bool:
        self.lines.append("READY=1")
        return True

    def status(self, text: str) -> bool:
        self.lines.append(f"STATUS={text}")
        return True

    def watchdog(self) -> bool:
        self.lines.append("WATCHDOG=1")
        return True

    def reloading(self) -> bool:
        self.lines.append("RELOADING=1")
        return True

    def stopping(self) -> bool:
        self.lines.append("STOPPING=1")
        return True

    def watchdog_interval(self) -> float | None:
        return self._watchdog_interval

    def statuses(self) -> list[str]:
        return [line.removeprefix("STATUS=") for line in self.lines if line.startswith("STATUS=")]


class FakeControlSocket:
    """Stands for the control socket; `refuse` makes start() fail as an unusable path does."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.path = ""
        self.handler: ControlHandler | None = None
        self.started = False
        self.closed = False

    def __call__(self, path: str, handler: ControlHandler) -> FakeControlSocket:
        self.path, self.handler = path, handler
        return self

    async def start(self) -> None:
        if self.refuse:
            raise TalkboxError(self.refuse)
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def ask(self, command: str, *args: str) -> dict[str, Any]:
        """The daemon's reply to `talkbox ctl COMMAND [ARGS]`."""
        assert self.handler is not None and self.started, "the control socket is not open"
        return await self.handler(command, list(args))


class FakeFrontEnd:
    """Hears nothing in what it is fed; remembers the config it was built for. Set `broken`
    and it raises that, as a front end with a bug would."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.wake_enabled = False
        self.fed_bytes = 0
        self.broken: Exception | None = None

    def process(self, captured: bytes, capture_time: float | None = None) -> list[Any]:
        if self.broken is not None:
            raise self.broken
        self.fed_bytes += len(captured)
        return []


class UnansweredSessions:
    """A service that never completes a connection: a wake stays CONNECTING until stopped."""

    def __init__(self) -> None:
        self.attempts = 0

    def __call__(self, cfg: Config, key: ApiKey | None) -> Callable[[], Any]:
        async def open_session() -> Any:
            self.attempts += 1
            await asyncio.Event().wait()

        return open_session


@dataclass
class FakeParts:
    """The fakes, and the `ServiceParts` made of them."""

    devices: FakeDevices = field(default_factory=FakeDevices)
    notifier: FakeNotifier = field(default_factory=FakeNotifier)
    control: FakeControlSocket = field(default_factory=FakeControlSocket)
    sessions: UnansweredSessions = field(default_factory=UnansweredSessions)
    front_ends: list[FakeFrontEnd] = field(default_factory=list)

    def build_front_end(self, cfg: Config) -> Any:
        front_end = FakeFrontEnd(cfg)
        self.front_ends.append(front_end)
        return front_end

    def parts(self) -> ServiceParts:
        return ServiceParts(
            devices=self.devices,
            notifier=self.notifier,
            control_socket=self.control,
            session_opener=self.sessions,
            build_front_end=self.build_front_end,
        )
