"""Home Assistant MQTT discovery: the retained messages that make a talkbox appear there as one
device with its entities, with no code on Home Assistant's side.

Each entity is one retained config message on `<prefix>/<component>/<device>/<object>/config`
(Home Assistant's per-entity discovery). Every entity shares the device block and the
availability topic, whose "offline" is the connection's last will: Home Assistant greys the
speaker out when the daemon dies. An empty retained message on the same topic removes it
(`removals`, which `install.sh --uninstall` publishes through `mqtt/forget.py`).

More entities plug in at `entities`. Most read the one state message (`StateReport`) through
a value_template; a command entity has a topic of its own in `DeviceTopics.commands`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from talkbox.mqtt.topics import OFFLINE, ONLINE, DeviceTopics


@dataclass(frozen=True)
class Entity:
    component: str  # Home Assistant's platform: sensor, switch, button, notify, ...
    object_id: str
    config: dict[str, Any]


def entities(device: str) -> list[Entity]:
    """The entities of speaker `device`, without the fields every one of them shares."""
    topics = DeviceTopics(device)
    return [
        Entity(
            "sensor",
            "state",
            {
                "name": "State",
                "state_topic": topics.state,
                "value_template": "{{ value_json.state }}",
                "device_class": "enum",
                "options": ["idle", "connecting", "listening", "responding"],
                "icon": "mdi:account-voice",
            },
        ),
        Entity(
            "switch",
            "muted",
            {
                "name": "Muted",
                "state_topic": topics.state,
                "value_template": "{{ 'ON' if value_json.muted else 'OFF' }}",
                "command_topic": topics.muted_set,
                "payload_on": "ON",
                "payload_off": "OFF",
                "icon": "mdi:microphone-off",
            },
        ),
        Entity(
            "number",
            "volume",
            {
                "name": "Volume",
                "command_topic": topics.volume_set,
                "state_topic": topics.state,
                "value_template": "{{ value_json.volume }}",
                "min": 0,
                "max": 100,
                "step": 1,
                "mode": "slider",
                "unit_of_measurement": "%",
                "icon": "mdi:volume-high",
            },
        ),
        Entity(
            "sensor",
            "next_timer",
            {
                "name": "Next timer or alarm",
                "state_topic": topics.state,
                # "None" is what makes Home Assistant's sensor "unknown"; an empty payload
                # would be ignored and leave the last time shown.
                "value_template": "{{ value_json.next_timer or 'None' }}",
                "device_class": "timestamp",
                "json_attributes_topic": topics.state,
                "json_attributes_template": "{{ {'name': value_json.next_timer_name} | tojson }}",
                "icon": "mdi:timer-outline",
            },
        ),
        Entity(
            "binary_sensor",
            "ringing",
            {
                "name": "Ringing",
                "state_topic": topics.state,
                "value_template": "{{ 'ON' if value_json.ringing else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "icon": "mdi:alarm-bell",
            },
        ),
        Entity(
            "button",
            "wake",
            {"name": "Wake", "command_topic": topics.wake, "payload_press": "PRESS",
             "icon": "mdi:microphone"},
        ),
        Entity(
            "button",
            "stop",
            {"name": "Stop", "command_topic": topics.stop, "payload_press": "PRESS",
             "icon": "mdi:stop"},
        ),
        Entity(
            "sensor",
            "last_error",
            {
                "name": "Last error",
                "state_topic": topics.state,
                "value_template": "{{ value_json.last_error or 'none' }}",
                "entity_category": "diagnostic",
                "icon": "mdi:alert-circle-outline",
            },
        ),
        Entity(
            "notify",
            "announce",
            {"name": "Announce", "command_topic": topics.announce, "icon": "mdi:bullhorn"},
        ),
    ]


def discovery_topic(prefix: str, device: str, entity: Entity) -> str:
    return f"{prefix}/{entity.component}/{device}/{entity.object_id}/config"


def configs(prefix: str, device: str, version: str) -> list[tuple[str, bytes]]:
    """(topic, retained payload) for every entity of speaker `device`."""
    topics = DeviceTopics(device)
    shared = {
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": {
            "identifiers": [f"talkbox_{device}"],
            "name": f"talkbox {device}",
            "manufacturer": "talkbox",
            "model": "talkbox smart speaker",
            "sw_version": version,
        },
        "origin": {"name": "talkbox", "sw_version": version},
    }
    out = []
    for entity in entities(device):
        payload = {
            **entity.config,
            **shared,
            "unique_id": f"talkbox_{device}_{entity.object_id}",
        }
        out.append((discovery_topic(prefix, device, entity), json.dumps(payload).encode()))
    return out


def removals(prefix: str, device: str) -> list[str]:
    """The discovery topics to clear (an empty retained payload removes the entity)."""
    return [discovery_topic(prefix, device, entity) for entity in entities(device)]
