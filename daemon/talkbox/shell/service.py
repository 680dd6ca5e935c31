"""`talkbox run`: the daemon as systemd runs it, around the conversation loop of `app.Daemon`.

This module owns the process-level parts: loading the config, opening and re-opening the
audio devices, sd_notify (READY, STATUS, WATCHDOG only while the front end hears audio,
RELOADING, STOPPING), signals (SIGTERM/SIGINT stop, SIGHUP reloads), the control socket,
state hooks, persisting mute, and the volume (shell/volume.py). Each failure of a device or
of the service is logged and retried; only a bad configuration at start ends the process
(exit 78).

The control socket opens first, before the wake model loads and the devices open: while the
daemon waits for a microphone or speaker, `talkbox ctl status` says what it waits for, and
mute (kept until the devices come) and stop work. READY=1 still waits for capture to run.

`Service` decides when to open, reopen, announce and reload; the things it does that with (the
sound card, systemd's notify socket, the control socket, the session opener, the wake-model
loader) are handed to it as `ServiceParts`. `real_parts()` builds the real ones, in this one
place; tests hand in fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from talkbox.audio.capture import Capture, Captured
from talkbox.audio.echo_cancel import SpeakerReference
from talkbox.audio.front_end_thread import FrontEndThread
from talkbox.audio.frontend import FrontEnd
from talkbox.audio.mixer import AlsaMixer, MixerError
from talkbox.audio.playback import Playback
from talkbox.audio_format import CAPTURE_PERIOD_MS, REALTIME_RATE
from talkbox.config import Config, load_config
from talkbox.core.alarms import describe_due, in_due_order
from talkbox.core.inputs import State
from talkbox.core.retry import Backoff, is_retryable
from talkbox.errors import EX_CONFIG, AudioDeviceError, ConfigError, TalkboxError
from talkbox.realtime.endpoint import endpoint_for
from talkbox.realtime.sessions import configured_sessions
from talkbox.safe_text import safe_line
from talkbox.secrets import ApiKey, resolve_api_key, resolve_mqtt_password
from talkbox.shell.app import (
    Daemon,
    SessionOpener,
    Speaker,
    front_end_builder,
    front_end_settings,
)
from talkbox.shell.control import ControlHandler, ControlServer
from talkbox.shell.hooks import StateHook, hook_program_warning
from talkbox.shell.house import House
from talkbox.shell.loop_lag import LoopLagProbe
from talkbox.shell.startup_signals import StartupSignals
from talkbox.shell.systemd import Notifier, WatchdogGate, setup_logging
from talkbox.shell.volume import VOLUME_FILE, SpeakerVolume
from talkbox.state_files import state_file
from talkbox.tools.alarms import ALARMS_FILE, AlarmStore, local_now
from talkbox.tools.builtin import toolbox
from talkbox.tools.mcp_servers import McpServers
from talkbox.tools.runner import RemoteTool, no_remote_tool
from talkbox.tools.volume import VolumeArgumentError, level_from_command

log = logging.getLogger("talkbox")

DEVICE_RETRY_MAX_SECONDS = 30.0
# How long a reopened microphone must keep delivering audio before it counts as back.
CAPTURE_PROVEN_SECONDS = 2.0
# How often the microphone's health and the front end's progress are looked at (the audio
# itself never passes through the event loop: see audio/front_end_thread.py).
MICROPHONE_CHECK_SECONDS = 0.5
# With [audio] keep_speaker_running = false, the speaker's stream stands by once nothing has
# played for this long (audio/playback.py). Longer than a conversation's pauses (the person's
# turn within follow_up_seconds, 8 s by default; the service's thinking), so a conversation
# runs on one stream; and, what matters for barge-in, longer than echo_cancel.STAY_ON_S (10 s):
# a pause long enough to stand by has already put the canceller to rest, so standby never
# takes away a reference it is pairing, and the restarted stream is met as any gap is (the
# speaker clock jumps, the reference starts afresh). The wake chime restarts the stream, so
# the speaker clock has the person's turn to settle before the answer plays.
SPEAKER_STANDBY_SECONDS = 30.0
# The exit status when the front end died of a bug: systemd restarts the daemon (on-failure).
EX_SOFTWARE = 70
MUTE_FILE = "muted"
STOP_NEEDS_TRANSCRIPTION = (
    'realtime.transcription_model is not set: talkbox cannot tell that you said "stop" or '
    '"never mind", so the service answers them like any request'
)


class Microphone(Protocol):
    """What the service needs of the capture device (see audio/capture.Capture); its audio
    goes to the `deliver` it was opened with."""

    def check_health(self) -> None: ...
    def stop(self) -> None: ...


class Loudspeaker(Speaker, Protocol):
    """The playback device: what the conversation loop plays through, and closing it."""

    def close(self) -> None: ...


class AudioDevices(Protocol):
    """Opens the devices a config names, started; AudioDeviceError if one cannot be opened."""

    def open_microphone(self, cfg: Config, deliver: Callable[[Captured], None]) -> Microphone: ...
    def open_speaker(self, cfg: Config, on_drained: Callable[[], None]) -> Loudspeaker: ...


class SystemdNotifier(Protocol):
    """What the service tells systemd (see systemd.Notifier)."""

    def ready(self) -> bool: ...
    def status(self, text: str) -> bool: ...
    def watchdog(self) -> bool: ...
    def reloading(self) -> bool: ...
    def stopping(self) -> bool: ...
    def watchdog_interval(self) -> float | None: ...


class ControlSocket(Protocol):
    """The socket `talkbox ctl` talks to (see control.ControlServer)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class ServiceParts:
    """What the service works through, passed in: the real ones from `real_parts()`."""

    devices: AudioDevices
    notifier: SystemdNotifier
    # The control socket at a path, answering with a handler.
    control_socket: Callable[[str, ControlHandler], ControlSocket]
    # How a config (and its key) opens sessions.
    session_opener: Callable[[Config, ApiKey | None], SessionOpener]
    # Loads the wake models: slow, so the service runs it in a worker thread.
    build_front_end: Callable[[Config], FrontEnd]
    # The tools offered by name in the current session that are answered elsewhere (MCP).
    remote_tools: Callable[[str], RemoteTool | None] = no_remote_tool


class SoundCard:
    """The real audio devices, through PortAudio. Whatever speaker is open plays into
    `reference` too, for the echo canceller (which outlives a reopened speaker)."""

    def __init__(self, reference: SpeakerReference | None = None) -> None:
        self.reference = reference

    def open_microphone(self, cfg: Config, deliver: Callable[[Captured], None]) -> Capture:
        frames = cfg.audio.input_rate * CAPTURE_PERIOD_MS // 1000
        capture = Capture(
            cfg.audio.input_device,
            cfg.audio.input_rate,
            frames,
            asyncio.get_running_loop(),
            deliver=deliver,
        )
        capture.start()
        return capture

    def open_speaker(self, cfg: Config, on_drained: Callable[[], None]) -> Playback:
        playback = Playback(
            cfg.audio.output_device,
            cfg.audio.output_rate,
            REALTIME_RATE,
            on_drained=on_drained,
            reference=self.reference,
            standby_after_s=None if cfg.audio.keep_speaker_running else SPEAKER_STANDBY_SECONDS,
        )
        playback.start()
        return playback


def real_parts() -> ServiceParts:
    """The parts `talkbox run` works through: the sound card, systemd, the control socket, the
    configured service (or the echo provider) and the wake models on disk."""
    reference = SpeakerReference()
    mcp = McpServers()

    def session_opener(cfg: Config, key: ApiKey | None) -> SessionOpener:
        # Called for each config the daemon takes: its servers are listed from then on.
        servers = cfg.tools.mcp if cfg.realtime.provider != "echo" and key else ()
        mcp.warm(servers)
        more_tools = (lambda: mcp.declarations(servers)) if servers else None
        return configured_sessions(
            cfg, key, toolbox(cfg.tools).declarations, more_tools
        ).open

    return ServiceParts(
        devices=SoundCard(reference),
        notifier=Notifier(),
        control_socket=ControlServer,
        session_opener=session_opener,
        build_front_end=front_end_builder(reference),
        remote_tools=mcp.tool,
    )


def load_checked(path: Path) -> tuple[Config, ApiKey | None]:
    """The config and key, or ConfigError: everything a reload must check before it applies."""
    cfg = load_config(path)
    key = resolve_api_key(cfg.realtime, os.environ)
    if key is not None:
        endpoint_for(cfg.realtime, key)  # the URL rules, checked now rather than at a wake
    return cfg, key


def status_text(
    state: State, muted: bool, wake_models: tuple[str, ...], waiting_for: dict[str, str]
) -> str:
    """The daemon's state in words, for systemd's STATUS= and `talkbox ctl status`.

    `waiting_for` maps a device ("microphone", "speaker") to why it is not open yet.
    """
    if waiting_for:
        waits = "; ".join(f"waiting for the {device}: {why}" for device, why in waiting_for.items())
        return f"{waits} (muted)" if muted else waits
    if muted:
        return "muted (talkbox ctl unmute to listen again)"
    if state is State.IDLE:
        return f"idle, listening for {' or '.join(m.replace('_', ' ') for m in wake_models)}"
    if state is State.CONNECTING:
        return "connecting to the service"
    return "in a conversation"


class Service:
    """The running daemon: devices, systemd, signals, control socket, hooks."""

    def __init__(
        self,
        config_path: Path,
        cfg: Config,
        key: ApiKey | None,
        parts: ServiceParts,
        startup_signals: StartupSignals | None = None,
    ) -> None:
        self.config_path = config_path
        self._parts = parts
        self._startup_signals = startup_signals
        # READY=1 has been sent: from then on a reload announces RELOADING=1 ... READY=1.
        self.ready = False
        self.cfg = cfg
        self.cfg_at_start = cfg
        self.key = key
        self.notifier = parts.notifier
        self.stopping = asyncio.Event()
        # Done once `stopping` is set: what a pause waits on besides its timeout.
        self._stop_requested: asyncio.Task[Any] | None = None
        self.hook = StateHook(cfg.hooks.on_state, cfg.hooks.timeout_seconds)
        self.capture: Microphone | None = None
        self.playback: Loudspeaker | None = None
        self.daemon: Daemon | None = None
        # Runs the daemon's front end on what the microphone captured (none before that).
        self.front_end_thread: FrontEndThread | None = None
        self.exit_status = 0
        # Only with [log] level = "debug": see loop_lag.py.
        self.loop_lag: LoopLagProbe | None = None
        self._lag_state = State.IDLE
        self.device_backoff = Backoff(base=1.0, cap=DEVICE_RETRY_MAX_SECONDS)
        self.started_monotonic = time.monotonic()
        # Devices not open, and why (shown by STATUS= and `talkbox ctl status`).
        self.waiting_for: dict[str, str] = {}
        # Mute before the conversation loop exists (while waiting for the devices): as
        # remembered from the last run, then as `talkbox ctl mute`/`unmute` asked.
        self.muted_at_start = cfg.control.persist_mute and self._mute_file_says_muted()
        # Before the devices: `talkbox ctl volume` works while the daemon waits for them.
        mixer = cfg.audio.mixer_control
        self.volume = SpeakerVolume(
            AlsaMixer(cfg.audio.mixer_device, mixer) if mixer else None, state_file(VOLUME_FILE)
        )
        self.watchdog_gate = WatchdogGate(max_silence_seconds=5.0, started_at=time.monotonic())
        self._speaker_broken = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        # A reload asked for while another waits adds nothing: the waiting one reads the file
        # as it will then be. So a burst of SIGHUPs costs at most two reloads.
        self._reload_waiting = False
        # [mqtt]: the house's broker (None when off, or when its password cannot be read).
        self.house: House | None = None

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a small job in the background, keeping a reference so it is not collected."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- start and stop -----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop_requested = loop.create_task(self.stopping.wait(), name="stop-requested")
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self._startup_signals is not None and self._startup_signals.take_reload_request():
            log.info("SIGHUP arrived during start-up: re-reading the configuration")
            self.reload()
        control = await self._start_control_socket()
        house_task = self._start_house()
        try:
            if await self._start_up():
                await self._serve_until_stopped()
            else:
                log.info("stopping before start-up was complete")
                self.notifier.stopping()
        finally:
            if house_task is not None:  # says "offline" on its way out
                house_task.cancel()
                await asyncio.wait({house_task}, timeout=2.0)
            if control is not None:
                await control.close()
            self._close_devices()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hook.aclose(), 2.0)
            self._stop_requested.cancel()  # still waiting only if run() ended by an exception
        return self.exit_status

    async def _start_up(self) -> bool:
        """Load the wake model, wait for both devices, make the conversation loop; False if
        asked to stop first. A wake model that cannot load is a ConfigError."""
        self._report_state()
        built_for = self.cfg
        # In a worker thread, so the control socket answers meanwhile.
        front_end = await asyncio.to_thread(self._parts.build_front_end, built_for)
        if not await self._open_devices_until_ready():
            return False
        if self.cfg is not built_for:  # reloaded while starting
            front_end = await asyncio.to_thread(self._parts.build_front_end, self.cfg)
        assert self.playback is not None
        self.daemon = Daemon(
            self.cfg,
            open_session=lambda cfg: self._parts.session_opener(cfg, self.key),
            speaker=self.playback,
            front_end=front_end,
            on_state=self._state_changed,
            on_status=self._report_to_house,
            on_speaker_error=self._speaker_failed,
            alarm_store=AlarmStore(state_file(ALARMS_FILE)),
            remote_tools=self._parts.remote_tools,
            volume=self.volume,
        )
        if self.muted_at_start:
            self.daemon.set_muted(True)
        if self.house is not None:
            self.house.attach(self.daemon)
        return True

    def _start_house(self) -> asyncio.Task[None] | None:
        """Connect to [mqtt]'s broker in the background; a password that cannot be read is
        one error line, and this speaker runs alone."""
        if not self.cfg.mqtt.enabled:
            return None
        try:
            password = resolve_mqtt_password(self.cfg.mqtt, os.environ)
        except ConfigError as error:
            log.error("MQTT off: %s", error)
            return None
        self.house = House(self.cfg, password, self._house_command)
        return asyncio.get_running_loop().create_task(self.house.run(), name="mqtt")

    def _house_command(self, command: str, args: tuple[str, ...]) -> None:
        async def run() -> None:
            reply = await self._control(command, list(args))
            if not reply.get("ok"):
                log.warning("MQTT %s refused: %s", command, reply.get("error"))

        self._spawn(run())

    async def _serve_until_stopped(self) -> None:
        daemon = self.daemon
        assert daemon is not None
        # The front end in hand is the daemon's current one: a reload may replace it.
        front_end = self.front_end_thread = FrontEndThread(
            lambda pcm, capture_time: daemon.front_end.process(pcm, capture_time),
            daemon.on_front_end_events,
            asyncio.get_running_loop(),
        )
        front_end.start()
        tasks = [
            asyncio.create_task(self._microphone_loop(), name="microphone"),
            asyncio.create_task(self._speaker_supervisor(), name="speaker"),
            asyncio.create_task(self._watchdog_loop(), name="watchdog"),
        ]
        if self.cfg.log.level == "debug":
            self.loop_lag = LoopLagProbe()
            tasks.append(asyncio.create_task(self.loop_lag.run(), name="loop-lag"))
        self.ready = True
        self.notifier.ready()
        self._state_changed(State.IDLE, "ready")
        log.info("talkbox ready: %s", self._describe_service())
        daemon.start_alarms()  # after READY: those missed meanwhile ring on open devices
        await self.stopping.wait()

        log.info("stopping")
        self.notifier.stopping()
        front_end.stop()
        await daemon.shutdown()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _start_control_socket(self) -> ControlSocket | None:
        control = self._parts.control_socket(self.cfg.control.socket, self._control)
        try:
            await control.start()
        except TalkboxError as error:
            log.error("%s; talkbox ctl will not work", error)
            return None
        return control

    def _describe_service(self) -> str:
        return configured_sessions(self.cfg, self.key).description

    # --- audio devices ------------------------------------------------------------------------

    async def _open_devices_until_ready(self) -> bool:
        """READY=1 only once both devices are open: wait (with backoff) until they are.
        False if asked to stop meanwhile."""
        while not self.stopping.is_set():
            try:
                self._open_device("speaker", self._open_playback)
                self._open_device("microphone", self._open_capture)
            except AudioDeviceError as error:
                self._close_devices()
                await self._wait_before_device_retry(error)
            else:
                self.device_backoff.success()
                return True
        return False

    def _open_device(self, device: str, open_it: Callable[[], None]) -> None:
        """Open one device at start-up, noting why it is not open if it fails."""
        try:
            open_it()
        except AudioDeviceError as error:
            self.waiting_for[device] = str(error)
            raise
        self.waiting_for.pop(device, None)

    def _open_capture(self) -> None:
        self.capture = self._parts.devices.open_microphone(self.cfg, self._on_captured)

    def _on_captured(self, chunk: Captured) -> None:
        # PortAudio's thread: hand the chunk on; none is wanted before the daemon runs.
        thread = self.front_end_thread
        if thread is not None:
            thread.submit(chunk)

    def _open_playback(self) -> None:
        self.playback = self._parts.devices.open_speaker(self.cfg, self._on_drained)

    def _close_devices(self) -> None:
        if self.capture is not None:
            self.capture.stop()
            self.capture = None
        if self.playback is not None:
            self.playback.close()
            self.playback = None

    async def _wait_before_device_retry(self, error: AudioDeviceError) -> None:
        """Log the failure, say in STATUS= what is awaited, and wait (less, if stopping)."""
        delay = (
            self.device_backoff.failure(is_retryable(error), time.monotonic())
            or DEVICE_RETRY_MAX_SECONDS
        )
        log.error("%s; trying again in %.0f s", error, delay)
        self._report_state()
        # Nothing is cancelled here: the pause simply ends at the delay or at the stop.
        assert self._stop_requested is not None, "only run() waits for devices"
        await asyncio.wait([self._stop_requested], timeout=delay)

    async def _microphone_loop(self) -> None:
        """Watch the microphone and the front end: reopen a failed microphone (with backoff),
        and feed the watchdog only while the front end keeps processing fresh audio."""
        assert self.daemon is not None and self.front_end_thread is not None
        front_end = self.front_end_thread
        reopened_at: float | None = None  # a reopened mic not yet proven to keep working
        while True:
            try:
                if self.capture is None:
                    self._open_capture()
                    reopened_at = time.monotonic()
                await asyncio.sleep(MICROPHONE_CHECK_SECONDS)
                assert self.capture is not None
                self.capture.check_health()
            except AudioDeviceError as error:
                # The watchdog is withheld meanwhile: systemd sees a daemon without ears.
                # A ringing alarm goes on: it needs no microphone.
                self.daemon.stop_conversation("microphone failed", stop_ringing=False)
                if self.capture is not None:
                    self.capture.stop()
                    self.capture = None
                self.waiting_for["microphone"] = str(error)
                await self._wait_before_device_retry(error)
                if self.stopping.is_set():
                    return
                continue
            if front_end.failure is not None:
                # A bug, logged by the thread with its traceback: deaf, the daemon is of no
                # use, and a restart (Restart=on-failure) is the way back. (Not merely "not
                # alive": the stop ends the thread before this task is cancelled.)
                self.exit_status = EX_SOFTWARE
                self.stopping.set()
                return
            now = time.monotonic()
            if reopened_at is not None:
                if now - reopened_at < CAPTURE_PROVEN_SECONDS:
                    # A loose plug opens and dies again within a few periods: until the mic
                    # has kept delivering for a while, it neither resets the backoff nor
                    # feeds the watchdog, or a flapping mic would look healthy forever.
                    continue
                reopened_at = None
                self.device_backoff.success()
                self.waiting_for.pop("microphone", None)
                log.info("microphone %r is back", self.cfg.audio.input_device)
                self._report_state()
            self.watchdog_gate.feed_seen(front_end.last_done_at)

    def _speaker_failed(self, error: AudioDeviceError) -> None:
        if not self._speaker_broken.is_set():
            log.error("%s", error)
            self._speaker_broken.set()

    async def _speaker_supervisor(self) -> None:
        assert self.daemon is not None
        while True:
            await self._speaker_broken.wait()
            self.daemon.stop_conversation("speaker failed")
            if self.playback is not None:
                self.playback.close()
                self.playback = None
            while self.playback is None:
                try:
                    self._open_playback()
                except AudioDeviceError as error:
                    self.waiting_for["speaker"] = str(error)
                    await self._wait_before_device_retry(error)
                    if self.stopping.is_set():
                        return
            self.daemon.speaker = self.playback
            self._speaker_broken.clear()
            if self.waiting_for.pop("speaker", None) is not None:
                self._report_state()
            log.info("speaker %r is back", self.cfg.audio.output_device)

    def _on_drained(self) -> None:
        if self.daemon is not None:
            self.daemon.on_playback_drained()

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            if self.watchdog_gate.should_ping(time.monotonic()):
                self.notifier.watchdog()
            await asyncio.sleep(interval / 3)

    # --- state, reload, control ---------------------------------------------------------------

    def _state_changed(self, state: State, reason: str) -> None:
        if self.front_end_thread is not None:
            # Idle, nobody waits on the VAD: half the front end's wake-ups (see the module).
            self.front_end_thread.in_pairs = state is State.IDLE
        if self.loop_lag is not None:
            log.debug(
                "event loop lag: worst %.1f ms while %s",
                1000 * self.loop_lag.take_worst(),
                self._lag_state.value,
            )
            self._lag_state = state
        self._report_state()
        self._spawn(self.hook.notify(state.value))

    def _status_text(self) -> str:
        if self.daemon is None:
            state, muted = State.IDLE, self.muted_at_start
            if not self.waiting_for:
                return "starting: loading the wake-word model"
        else:
            snapshot = self.daemon.snapshot()
            state, muted = snapshot.state, snapshot.muted
        return status_text(state, muted, self.cfg.wake.models, self.waiting_for)

    def _report_state(self) -> None:
        self.notifier.status(self._status_text())
        self._report_to_house()

    def _report_to_house(self) -> None:
        """The house's retained state (Home Assistant's entities); systemd's STATUS= does not
        show the volume nor the timers."""
        if self.house is not None and self.daemon is not None:
            self.house.report(
                self.daemon.snapshot(), self.volume.level, self.daemon.alarms.pending()
            )

    def reload(self) -> None:
        """SIGHUP: re-read the config in the background (see `reload_config`)."""
        if self._reload_waiting:
            return
        self._reload_waiting = True
        self._spawn(self.reload_config())

    async def reload_config(self) -> None:
        """Re-read the config; a valid one applies from the next conversation.

        Reading and checking the file and, if what the front end is built from changed,
        loading the wake models happen in a worker thread: meanwhile the loop goes on
        pinging the watchdog, answering the control socket and signals (a slow load, or a
        huge or hostile file, used to stall all of them). Reloads run one at a time, in the
        order they were asked for.
        """
        async with self._reload_lock:
            self._reload_waiting = False
            # During start-up there is no READY=1 yet to take back (or to give early).
            announce = self.ready
            if announce:
                self.notifier.reloading()
            try:
                cfg, key = await asyncio.to_thread(load_checked, self.config_path)
                front_end = None
                if front_end_settings(cfg) != front_end_settings(self.cfg):
                    # A wake model that cannot load must not get in.
                    front_end = await asyncio.to_thread(self._parts.build_front_end, cfg)
            except ConfigError as error:
                log.error("reload refused, the running configuration stays in force: %s", error)
            else:
                self.cfg, self.key = cfg, key
                old_hook, self.hook = (
                    self.hook,
                    StateHook(cfg.hooks.on_state, cfg.hooks.timeout_seconds),
                )
                self._spawn(old_hook.aclose())
                _warn_about_the_hook(cfg)
                if self.daemon is not None:
                    self.daemon.reload(cfg, front_end)
                if cfg.mqtt != self.cfg_at_start.mqtt:
                    log.warning("[mqtt] changes take effect after a restart")
                log.info(
                    "configuration %s reloaded; it applies from the next conversation",
                    self.config_path,
                )
            if announce:
                self.notifier.ready()
            self._report_state()

    async def _control(self, command: str, args: list[str]) -> dict[str, Any]:
        daemon = self.daemon
        if command == "status":
            snapshot = None if daemon is None else daemon.snapshot()
            return {
                "ok": True,
                "state": "starting" if snapshot is None else snapshot.state.value,
                "status": self._status_text(),
                "muted": self.muted_at_start if snapshot is None else snapshot.muted,
                "volume": self.volume.level,
                "uptime_seconds": round(time.monotonic() - self.started_monotonic),
                "conversations": 0 if snapshot is None else snapshot.conversations,
                "last_error": (snapshot.last_error if snapshot else "") or "none",
                "ringing": bool(snapshot and snapshot.ringing),
                "next_timer": self._timers_text(first_only=True),
            }
        if command == "timers":
            return {"ok": True, "timers": self._timers_text()}
        if command in ("mute", "unmute"):
            muted = command == "mute"
            if daemon is None:
                self.muted_at_start = muted  # applies once the devices are open
            else:
                daemon.set_muted(muted)
            self._remember_mute(muted)
            self._report_state()
            return {"ok": True, "muted": muted}
        if command == "volume":
            return await self._control_volume(args)
        if command == "wake":
            if daemon is None:
                return {"ok": False, "error": f"talkbox is not ready: {self._status_text()}"}
            if daemon.snapshot().muted:
                return {"ok": False, "error": "talkbox is muted; talkbox ctl unmute first"}
            daemon.wake("ctl")
            return {"ok": True, "state": daemon.snapshot().state.value}
        if command == "stop":
            if daemon is None:  # no conversation yet: nothing to stop
                return {"ok": True, "state": "starting"}
            daemon.stop_conversation("talkbox ctl stop")
            return {"ok": True, "state": daemon.snapshot().state.value}
        return {"ok": False, "error": f"unknown command {safe_line(command)!r}"}

    def _timers_text(self, *, first_only: bool = False) -> str:
        """The pending timers and alarms in words, soonest first ("none" if none)."""
        pending = () if self.daemon is None else self.daemon.alarms.pending()
        ordered = in_due_order(pending)[: 1 if first_only else None]
        now = local_now()
        return "; ".join(f"{a.name} (id {a.id}) rings {describe_due(a, now)}"
                         for a in ordered) or "none"

    async def _control_volume(self, args: list[str]) -> dict[str, Any]:
        """`talkbox ctl volume [N|+N|-N]`: the level, after setting it if asked."""
        if len(args) > 1:
            return {"ok": False, "error": "volume takes at most one argument: N, +N or -N"}
        if args:
            try:
                wanted = level_from_command(self.volume.level, args[0])
            except VolumeArgumentError as error:
                return {"ok": False, "error": safe_line(str(error))}
            try:
                # Off the loop: a mixer and an fsync can take a few ms on an SD card.
                await asyncio.to_thread(self.volume.set_level, wanted)
            except MixerError as error:
                log.warning("%s", error)
                return {"ok": False, "error": str(error)}
            self._report_to_house()
        return {"ok": True, "volume": self.volume.level}

    def _mute_path(self) -> Path | None:
        return state_file(MUTE_FILE)

    def _mute_file_says_muted(self) -> bool:
        path = self._mute_path()
        return path is not None and path.exists()

    def _remember_mute(self, muted: bool) -> None:
        path = self._mute_path()
        if not self.cfg.control.persist_mute or path is None:
            return
        try:
            if muted:
                path.touch()
            else:
                path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("cannot remember mute across restarts in %s: %s", path, error)


def _warn_about_the_hook(cfg: Config) -> None:
    warning = hook_program_warning(cfg.hooks.on_state)
    if warning:
        log.warning("%s; each state change will log that it failed", warning)


def _note_stop_phrases(cfg: Config) -> None:
    # Once, at start: the one place an owner of a default install learns why "stop" is answered.
    realtime = cfg.realtime
    needs_it = realtime.provider != "echo" and cfg.conversation.barge_in != "off"
    if needs_it and not realtime.transcription_model:
        log.info("%s", STOP_NEEDS_TRANSCRIPTION)


def run_daemon(config_path: Path, startup_signals: StartupSignals | None = None) -> int:
    try:
        cfg, key = load_checked(config_path)
    except ConfigError as error:
        print(f"talkbox: {error}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(cfg.log.level)
    _warn_about_the_hook(cfg)
    _note_stop_phrases(cfg)
    try:
        return asyncio.run(Service(config_path, cfg, key, real_parts(), startup_signals).run())
    except ConfigError as error:  # e.g. a wake model that does not exist
        log.error("%s", error)
        return EX_CONFIG
