"""Run `talkbox run` as a real process on a sound card made of files, for end-to-end tests.

The microphone is a capture FIFO fed in real time by the test (`FifoFeeder`), the speaker a
playback FIFO drained in real time (`FifoDrainer`: what it read is what the room heard, and
when), systemd is a NOTIFY_SOCKET bound here, and the service is the fake Realtime server on
loopback (or the echo provider). Nothing in the daemon is replaced. Its speaker stands by
while idle ([audio] keep_speaker_running = false): the speaker FIFO gets nothing from READY
until the first sound, and again from 30 s after the last (`short_speaker_standby()`
shortens that). With `room=RoomSpec(...)`
the microphone also hears the speaker (support.room): one `EchoRoom` listens to the drain and
is mixed into whatever the feeder writes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from support.alsa import AlsaSandbox, FifoDrainer, FifoFeeder, alsa_sandbox
from support.room import EchoRoom, RoomSpec
from talkbox.audio_format import CAPTURE_PERIOD_MS

MIC_RATE = 16000
# Fed one capture buffer at a time, as a sound card delivers them.
CAPTURE_PERIOD_FRAMES = MIC_RATE * CAPTURE_PERIOD_MS // 1000
SPEAKER_RATE = 24000
TALKBOX = str(Path(sys.executable).with_name("talkbox"))
SPEAKER_STANDBY_HOOK = Path(__file__).with_name("speaker_standby")
# The tables of a daemon on the test sound card with its own control socket (run_daemon fills
# in {control_socket}); the echo provider answers unless a test adds a [realtime] table.
SOUND_CARD_CONFIG = """
[audio]
input_device = "mic"
output_device = "speaker"
# This microphone does not hear the speaker (no room): nothing to cancel.
echo_cancellation = false
[control]
socket = "{control_socket}"
"""


class LiveMicrophone(FifoFeeder):
    """A microphone that hears silence until the test speaks, in real time.

    Unlike a `FifoFeeder` with its one recording, the test decides what comes next while the
    daemon runs: `speak(pcm)` queues speech behind what is already queued, so a step (a
    `talkbox ctl` command, a reload) can sit between two utterances without timing games.
    """

    def __init__(
        self, fifo: Path, *, rate: int, period_frames: int, room: EchoRoom | None = None
    ) -> None:
        super().__init__(fifo, b"", rate=rate, period_frames=period_frames, room=room)
        self._queued = bytearray()
        self._queue_lock = threading.Lock()
        self._all_spoken = threading.Event()
        self._all_spoken.set()
        self._utterance_bytes: list[int] = []  # lengths of queued utterances not yet begun
        self._taken = 0  # bytes of the current queue taken since the last utterance began
        self.utterance_starts: list[float] = []
        """Device-clock time at which each utterance's first sample was heard."""

    def speak(self, pcm16k: bytes) -> None:
        """Queue `pcm16k` (padded with silence to whole periods) after what is queued."""
        remainder = len(pcm16k) % self.period_bytes
        padded = pcm16k + bytes(self.period_bytes - remainder if remainder else 0)
        with self._queue_lock:
            self._utterance_bytes.append(len(padded))
            self._queued += padded
            self._all_spoken.clear()

    def wait_spoken(self, timeout: float = 30.0) -> None:
        """Until the last queued period has been written to the microphone."""
        if not self._all_spoken.wait(timeout):
            raise AssertionError(f"the microphone did not finish speaking within {timeout:g} s")

    def _next_period(self) -> bytes:
        with self._queue_lock:
            if not self._queued:
                return bytes(self.period_bytes)
            if self._taken == 0 and self._utterance_bytes:
                # This period (written at its scheduled time) holds the 40 ms before it.
                self.utterance_starts.append(self.scheduled - self.period_s)
            chunk = bytes(self._queued[: self.period_bytes])
            del self._queued[: self.period_bytes]
            self._taken += len(chunk)
            if self._utterance_bytes and self._taken >= self._utterance_bytes[0]:
                self._taken -= self._utterance_bytes.pop(0)
            if not self._queued:
                self._all_spoken.set()
            return chunk


class NotifyListener(threading.Thread):
    """A stand-in for systemd's notify socket: records every sd_notify message with its time."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="notify-listener", daemon=True)
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()

    def run(self) -> None:
        while not self._stop_requested.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> list[str]:
        with self._lock:
            return [line for _, text in self.messages for line in text.splitlines()]

    def ping_times(self) -> list[float]:
        """When each WATCHDOG=1 arrived."""
        with self._lock:
            return [at for at, text in self.messages if "WATCHDOG=1" in text.splitlines()]

    def first_time(self, line: str) -> float | None:
        with self._lock:
            for at, text in self.messages:
                if line in text.splitlines():
                    return at
        return None

    def stop(self) -> None:
        self._stop_requested.set()
        self.join(timeout=2)
        self._sock.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class DaemonRun:
    process: subprocess.Popen[bytes]
    sandbox: AlsaSandbox
    notify: NotifyListener
    drainer: FifoDrainer
    log_path: Path
    feeders: list[FifoFeeder] = field(default_factory=list)
    control_socket: Path = Path()
    room: EchoRoom | None = None
    """The room the microphone hears the speaker in (`run_daemon(room=...)`), if any."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0, count: int = 1) -> None:
        wait_until(lambda: self.log().count(text) >= count, timeout, f"log line {text!r}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(lambda: "READY=1" in self.notify.lines(), timeout, "READY=1")

    def say(self, pcm16k: bytes) -> FifoFeeder:
        """Start feeding the microphone (real time); afterwards it goes on with silence."""
        if self.feeders:
            raise RuntimeError("one feeder per run: put the whole script in one recording")
        feeder = FifoFeeder(
            self.sandbox.capture_path,
            pcm16k,
            rate=MIC_RATE,
            period_frames=CAPTURE_PERIOD_FRAMES,
            room=self.room,
        )
        self.feeders.append(feeder)
        feeder.start()
        return feeder

    def microphone(self) -> LiveMicrophone:
        """Start a microphone that the test speaks into step by step (silence meanwhile)."""
        if self.feeders:
            raise RuntimeError("one feeder per run: use either say() or microphone()")
        microphone = LiveMicrophone(
            self.sandbox.capture_path,
            rate=MIC_RATE,
            period_frames=CAPTURE_PERIOD_FRAMES,
            room=self.room,
        )
        self.feeders.append(microphone)
        microphone.start()
        return microphone

    def ctl(
        self, action: str, *args: str, timeout: float = 15.0
    ) -> subprocess.CompletedProcess[str]:
        """`talkbox ctl ACTION [ARGS] --socket ...` as a separate process, as a user would."""
        return subprocess.run(
            [TALKBOX, "ctl", action, *args, "--socket", str(self.control_socket)],
            env=self.sandbox.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def plug_in(self, name: str, pcm: str) -> None:
        """Add device `name` (an ALSA PCM body, see support.alsa) to the sound card, as
        plugging it in would: the daemon sees it the next time it looks for devices."""
        with self.sandbox.config_path.open("a") as asound:
            asound.write(f"pcm.{name} {pcm}\n")

    def heard(self, since: float = 0.0) -> bytes:
        return self.drainer.data(since)

    def terminate(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started


def log_monotonic(log: str, text: str) -> float:
    """time.monotonic() of the first log line containing `text` (lines carry wall-clock time)."""
    [line] = [line for line in log.splitlines() if text in line][:1]
    wall = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
    return wall - (time.time() - time.monotonic())


def short_speaker_standby(seconds: float) -> dict[str, str]:
    """`extra_env` for `run_daemon`: the daemon's speaker stands by after `seconds` of
    nothing played instead of 30 (see speaker_standby/sitecustomize.py)."""
    path = os.pathsep.join(filter(None, (str(SPEAKER_STANDBY_HOOK), os.environ.get("PYTHONPATH"))))
    return {"PYTHONPATH": path, "TALKBOX_TEST_SPEAKER_STANDBY_SECONDS": str(seconds)}


@contextmanager
def run_daemon(
    tmp_path: Path,
    config_text: str,
    *,
    api_key: str | None = None,
    extra_env: dict[str, str] | None = None,
    feeder_first: FifoFeeder | None = None,
    sound_card: bool = True,
    room: RoomSpec | None = None,
) -> Iterator[DaemonRun]:
    """Start `talkbox run` on a file sound card; stop it (SIGKILL at worst) when done.

    `config_text` may use {control_socket} for a socket path inside tmp_path. With
    `sound_card=False` there is no device at all until the test plugs some in (`plug_in`).
    With a `room`, the microphone that `say()`/`microphone()` start hears the speaker in it
    (`run.room` counts its underflows); without one it hears only what the test says.
    """
    sandbox_cm = alsa_sandbox(
        tmp_path / "alsa", capture_fifo=True, playback_fifo=True, sound_card=sound_card
    )
    sandbox = sandbox_cm.__enter__()
    control_socket = tmp_path / "ctl.sock"
    config_path = tmp_path / "talkbox.toml"
    config_path.write_text(config_text.replace("{control_socket}", str(control_socket)))
    notify = NotifyListener(tmp_path / "notify.sock")
    notify.start()
    # The speaker drains at real-time pace; the microphone FIFO is opened read-write here so
    # the daemon's capture never sees end-of-file before the test starts talking.
    echo_room = EchoRoom(room, speaker_rate=SPEAKER_RATE, mic_rate=MIC_RATE) if room else None
    drainer = FifoDrainer(sandbox.playback_path, rate=SPEAKER_RATE, room=echo_room)
    drainer.start()
    mic_fd = os.open(sandbox.capture_path, os.O_RDWR)
    env = {**sandbox.env, "NOTIFY_SOCKET": str(notify.path), **(extra_env or {})}
    env.pop("TALKBOX_API_KEY", None)
    if api_key is not None:
        env["TALKBOX_API_KEY"] = api_key
    log_path = tmp_path / "talkbox.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [TALKBOX, "run", "--config", str(config_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    run = DaemonRun(
        process, sandbox, notify, drainer, log_path, control_socket=control_socket, room=echo_room
    )
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        for feeder in run.feeders:
            feeder.stop()
        os.close(mic_fd)
        drainer.stop()
        notify.stop()
        sandbox_cm.__exit__(None, None, None)
