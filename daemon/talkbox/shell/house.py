"""[mqtt]: this speaker among the others of the house, wired to the daemon.

The link (`mqtt/link.py`) carries messages; this glue turns them into what the daemon already
does: a peer's claim goes to the arbiter, Home Assistant's buttons, switch and volume slider
go through the same commands as `talkbox ctl`, an announcement to `Daemon.announce`. Every
change of state, mute, volume, ringing or pending timers is published as the speaker's state.
Nothing here waits on the broker.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from talkbox.config import Config
from talkbox.core.alarms import Alarm, next_due
from talkbox.core.arbitration import BrokerChanged, PeerClaimed
from talkbox.core.inputs import Snapshot
from talkbox.mqtt.link import (
    Announcement,
    Command,
    HouseLink,
    HouseMessage,
    PeerClaim,
    StateReport,
)
from talkbox.secrets import ApiKey
from talkbox.shell.app import Daemon

log = logging.getLogger("talkbox")


def talkbox_version() -> str:
    try:
        return version("talkbox")
    except PackageNotFoundError:
        return "unknown"


class House:
    """The link and what it is wired to; `run()` it as a task, `attach` the daemon once made.

    `command` runs a control command ("mute", "unmute", "wake", "stop", "volume" with its
    arguments) as `talkbox ctl` does.
    """

    def __init__(
        self,
        cfg: Config,
        password: ApiKey | None,
        command: Callable[[str, tuple[str, ...]], None],
    ) -> None:
        self.cfg = cfg
        self._command = command
        self.daemon: Daemon | None = None
        self.link = HouseLink(
            cfg.mqtt,
            password,
            version=talkbox_version(),
            on_message=self._on_message,
            on_connected=self._on_connected,
        )

    async def run(self) -> None:
        await self.link.run()

    def attach(self, daemon: Daemon) -> None:
        self.daemon = daemon
        daemon.join_house(
            self.cfg.mqtt.device, self.cfg.mqtt.arbitration_ms / 1000, self.link.publish_claim
        )
        daemon.arbitrate(BrokerChanged(self.link.connected))

    def report(self, snapshot: Snapshot, volume: int, pending: tuple[Alarm, ...]) -> None:
        soonest = next_due(pending)
        self.link.publish_state(
            StateReport(
                snapshot.state.value,
                snapshot.muted,
                snapshot.last_error,
                volume=volume,
                ringing=snapshot.ringing,
                # In UTC, from the epoch second it is due: unambiguous across a change of
                # summer time; Home Assistant shows it in its own time zone.
                next_timer=None if soonest is None else dt.datetime.fromtimestamp(
                    soonest.due, dt.UTC).isoformat(timespec="seconds"),
                next_timer_name="" if soonest is None else soonest.name,
            )
        )

    def _on_connected(self, connected: bool) -> None:
        if self.daemon is not None:
            self.daemon.arbitrate(BrokerChanged(connected))

    def _on_message(self, message: HouseMessage) -> None:
        match message:
            case PeerClaim():
                if self.daemon is not None:
                    self.daemon.arbitrate(PeerClaimed(message.claim))
            case Command():
                log.info("Home Assistant (MQTT): %s", " ".join((message.name, *message.args)))
                self._command(message.name, message.args)
            case Announcement():
                if self.daemon is not None:
                    self.daemon.announce(message.text, house=message.house)
