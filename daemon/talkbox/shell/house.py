"""[mqtt]: this speaker among the others of the house, wired to the daemon.

The link (`mqtt/link.py`) carries messages; this glue turns them into what the daemon already
does: a peer's claim goes to the arbiter, Home Assistant's buttons and switch go through the
same commands as `talkbox ctl`, an announcement to `Daemon.announce`. Every state change and
mute is published as the speaker's state. Nothing here waits on the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from talkbox.config import Config
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

    `command` runs a control command ("mute", "unmute", "wake", "stop") as `talkbox ctl` does.
    """

    def __init__(
        self, cfg: Config, password: ApiKey | None, command: Callable[[str], None]
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

    def report(self, snapshot: Snapshot) -> None:
        self.link.publish_state(
            StateReport(snapshot.state.value, snapshot.muted, snapshot.last_error)
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
                log.info("Home Assistant (MQTT): %s", message.name)
                self._command(message.name)
            case Announcement():
                if self.daemon is not None:
                    self.daemon.announce(message.text, house=message.house)
