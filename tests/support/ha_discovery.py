"""Home Assistant's MQTT discovery schema, as its documentation and its MQTT integration's
voluptuous schemas state it (homeassistant/components/mqtt: schemas.py, entity.py, and one
module per platform), written out here for the platforms talkbox uses.

`problems(component, payload)` lists what Home Assistant would refuse or silently drop:
a missing required key, a wrong type, a value outside the allowed set, an invalid topic, a
device without an identifier; and unknown keys (Home Assistant drops them without a word, so
for us they are mistakes).
"""

from __future__ import annotations

from typing import Any

# Keys every MQTT entity takes (MQTT_ENTITY_COMMON_SCHEMA + the availability schema).
COMMON: dict[str, type | tuple[type, ...]] = {
    "name": (str, type(None)),
    "unique_id": str,
    "object_id": str,
    "default_entity_id": str,
    "icon": str,
    "entity_category": str,
    "enabled_by_default": bool,
    "device": dict,
    "origin": dict,
    "availability_topic": str,
    "availability_template": str,
    "availability_mode": str,
    "availability": list,
    "payload_available": str,
    "payload_not_available": str,
    "json_attributes_topic": str,
    "json_attributes_template": str,
    "encoding": str,
    "qos": int,
    "entity_picture": str,
}

PLATFORMS: dict[str, dict[str, Any]] = {
    "sensor": {
        "required": {"state_topic"},
        "keys": {
            "state_topic": str, "value_template": str, "device_class": str,
            "state_class": str, "unit_of_measurement": str, "expire_after": int,
            "force_update": bool, "last_reset_value_template": str, "options": list,
            "suggested_display_precision": int,
        },
        "device_classes": None,  # many; checked below for "enum" and "timestamp"
    },
    "binary_sensor": {
        "required": {"state_topic"},
        "keys": {
            "state_topic": str, "value_template": str, "payload_on": str, "payload_off": str,
            "device_class": str, "expire_after": int, "force_update": bool, "off_delay": int,
        },
        "device_classes": None,  # many
    },
    "switch": {
        "required": {"command_topic"},
        "keys": {
            "command_topic": str, "command_template": str, "state_topic": str,
            "value_template": str, "payload_on": str, "payload_off": str, "state_on": str,
            "state_off": str, "optimistic": bool, "retain": bool, "device_class": str,
        },
        "device_classes": {"outlet", "switch"},
    },
    "button": {
        "required": {"command_topic"},
        "keys": {
            "command_topic": str, "command_template": str, "payload_press": str,
            "retain": bool, "device_class": str,
        },
        "device_classes": {"identify", "restart", "update"},
    },
    "notify": {
        "required": {"command_topic"},
        "keys": {"command_topic": str, "command_template": str, "retain": bool},
        "device_classes": set(),
    },
    "number": {
        "required": {"command_topic"},
        "keys": {
            "command_topic": str, "command_template": str, "state_topic": str,
            "value_template": str, "min": (int, float), "max": (int, float),
            "step": (int, float), "mode": str, "unit_of_measurement": str,
            "optimistic": bool, "retain": bool, "device_class": str,
            "payload_reset": str,
        },
        "device_classes": None,
    },
}

DEVICE_KEYS = {
    "identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version",
    "serial_number", "sw_version", "via_device", "suggested_area", "configuration_url",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}


def _topic_problem(topic: object, *, subscribe: bool) -> str | None:
    if not isinstance(topic, str) or not topic:
        return "must be a non-empty string"
    if len(topic.encode()) > 65535 or "\0" in topic:
        return "too long or holds a NUL"
    if not subscribe and ("+" in topic or "#" in topic):
        return "a publish topic may not hold wildcards"
    return None


def problems(component: str, payload: dict[str, Any]) -> list[str]:
    found: list[str] = []
    platform = PLATFORMS.get(component)
    if platform is None:
        return [f"no schema written here for platform {component!r}"]
    allowed = {**COMMON, **platform["keys"]}
    for key in platform["required"]:
        if key not in payload:
            found.append(f"{key}: required")
    for key, value in payload.items():
        if key not in allowed:
            found.append(f"{key}: not a {component} option (Home Assistant drops it)")
        elif not isinstance(value, allowed[key]) or (
            isinstance(value, bool) and allowed[key] in (int, (int, float))
        ):
            found.append(f"{key}: wrong type {type(value).__name__}")
    for key in ("state_topic", "command_topic", "availability_topic", "json_attributes_topic"):
        if key in payload:
            problem = _topic_problem(payload[key], subscribe=key != "command_topic")
            if problem:
                found.append(f"{key}: {problem}")
    if "entity_category" in payload and payload["entity_category"] not in ("config", "diagnostic"):
        found.append("entity_category: must be config or diagnostic")
    if "availability_mode" in payload and payload["availability_mode"] not in (
        "all", "any", "latest"
    ):
        found.append("availability_mode: must be all, any or latest")
    if "availability" in payload and "availability_topic" in payload:
        found.append("availability and availability_topic are exclusive")
    classes = platform["device_classes"]
    device_class = payload.get("device_class")
    if device_class is not None and classes is not None and device_class not in classes:
        found.append(f"device_class: {device_class!r} is not one of {sorted(classes)}")
    if component == "sensor" and device_class == "enum":
        if not payload.get("options"):
            found.append("options: required for device_class enum")
        if "unit_of_measurement" in payload or "state_class" in payload:
            found.append("an enum sensor takes no unit_of_measurement nor state_class")
    if component == "sensor" and device_class == "timestamp" and (
        "unit_of_measurement" in payload or "state_class" in payload
    ):
        found.append("a timestamp sensor takes no unit_of_measurement nor state_class")
    if component == "number":
        if payload.get("mode", "auto") not in ("auto", "box", "slider"):
            found.append("mode: must be auto, box or slider")
        low, high = payload.get("min", 1), payload.get("max", 100)
        if isinstance(low, int | float) and isinstance(high, int | float) and low >= high:
            found.append("min must be below max")
        step = payload.get("step", 1)
        if isinstance(step, int | float) and step < 0.001:
            found.append("step: must be at least 0.001")
    if "options" in payload and device_class != "enum":
        found.append("options: only with device_class enum")
    device = payload.get("device")
    if isinstance(device, dict):
        unknown = set(device) - DEVICE_KEYS
        if unknown:
            found.append(f"device: unknown keys {sorted(unknown)}")
        if not (device.get("identifiers") or device.get("connections")):
            found.append("device: needs identifiers or connections")
        if "unique_id" not in payload:
            found.append("unique_id: required for an entity with a device")
    origin = payload.get("origin")
    if isinstance(origin, dict):
        if "name" not in origin:
            found.append("origin: name is required")
        if set(origin) - ORIGIN_KEYS:
            found.append(f"origin: unknown keys {sorted(set(origin) - ORIGIN_KEYS)}")
    return found
