"""`python -m talkbox.mqtt.forget --config FILE`: take this speaker out of Home Assistant.

Publishes an empty retained message on each of its discovery topics (Home Assistant removes
the entities and the device) and on its availability and state topics. `install.sh
--uninstall` runs it with the installed venv. A broker that cannot be reached, or no [mqtt]
at all, is a line on stderr and exit status 0: uninstalling must not fail because of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import aiomqtt

from talkbox.config import load_config
from talkbox.errors import ConfigError
from talkbox.mqtt import discovery
from talkbox.mqtt.link import HouseLink
from talkbox.mqtt.topics import DeviceTopics
from talkbox.safe_text import safe_line
from talkbox.secrets import resolve_mqtt_password

TIMEOUT_SECONDS = 10.0


async def forget(link: HouseLink) -> int:
    settings = link.settings
    topics = DeviceTopics(settings.device)
    cleared = [
        *discovery.removals(settings.discovery_prefix, settings.device),
        topics.availability,
        topics.state,
    ]
    client = link.client(identifier=f"talkbox-{settings.device}-forget", will=False)
    async with client:
        for topic in cleared:
            await client.publish(topic, b"", qos=1, retain=True, timeout=TIMEOUT_SECONDS)
    return len(cleared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m talkbox.mqtt.forget", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if not cfg.mqtt.enabled:
            print("talkbox: [mqtt] is off: nothing to remove from the broker", file=sys.stderr)
            return 0
        password = resolve_mqtt_password(cfg.mqtt, os.environ)
    except ConfigError as error:
        print(f"talkbox: not removed from the broker: {error}", file=sys.stderr)
        return 0
    link = HouseLink(
        cfg.mqtt, password, version="", on_message=lambda _: None, on_connected=lambda _: None
    )
    try:
        count = asyncio.run(asyncio.wait_for(forget(link), 3 * TIMEOUT_SECONDS))
    except (aiomqtt.MqttError, TimeoutError, OSError) as error:
        where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
        print(
            f"talkbox: could not reach the MQTT broker {where} ({safe_line(str(error))}); "
            "Home Assistant keeps showing this speaker until you delete it there",
            file=sys.stderr,
        )
        return 0
    print(f"talkbox: removed {cfg.mqtt.device} from the broker ({count} retained messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
