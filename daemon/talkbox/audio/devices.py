"""Audio device listing and lookup by the names users put in the config.

This module owns how `audio.input_device` / `audio.output_device` resolve to a PortAudio
device index: "default" means PortAudio's default device (index None); otherwise an exact
name wins, else a unique case-insensitive substring ("usb" finds "USB Audio Device: - (hw:1,0)").
A missing or ambiguous name is an `AudioDeviceError` that lists the candidates and names the
config key; where no device at all can record (or play), whatever the name, the error says
so and what to check (`missing_device_problem`), rather than blaming the name or the rate.
The matching itself is pure (`match_device` over `DeviceInfo`s); only
`list_devices`/`find_device` talk to PyAudio. It also renders the `talkbox devices` table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from talkbox.errors import AudioDeviceError

DeviceKind = Literal["input", "output"]
DEFAULT_DEVICE = "default"
NO_SOUND_CARD = "no sound card found: PortAudio lists no audio device"
# What an owner can check when the system shows no sound card (or none that can do a kind).
CHECK_SOUND_CARD = (
    "check that `aplay -l` (speakers) and `arecord -l` (microphones) list the card (if not: "
    "is it plugged in? a HAT's dtoverlay set in /boot/firmware/config.txt?) and that the user "
    "running talkbox is in group audio (`id` shows its groups)"
)


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate: int

    def can(self, kind: DeviceKind) -> bool:
        channels = self.max_input_channels if kind == "input" else self.max_output_channels
        return channels > 0


def list_devices(pa: Any) -> list[DeviceInfo]:
    """Every device PortAudio knows, in index order (`pa` is a `pyaudio.PyAudio`)."""
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        devices.append(
            DeviceInfo(
                index=index,
                name=str(info["name"]),
                max_input_channels=int(info["maxInputChannels"]),
                max_output_channels=int(info["maxOutputChannels"]),
                default_rate=round(float(info["defaultSampleRate"])),
            )
        )
    return devices


def _describe(devices: Sequence[DeviceInfo]) -> str:
    if not devices:
        return "  (none)"
    return "\n".join(f"  [{d.index}] {d.name}" for d in devices)


def _matching(devices: Sequence[DeviceInfo], name: str, kind: DeviceKind) -> list[DeviceInfo]:
    """Devices of `kind` named exactly `name` if any, else those containing it (any case)."""
    candidates = [d for d in devices if d.can(kind)]
    exact = [d for d in candidates if d.name == name]
    return exact or [d for d in candidates if name.lower() in d.name.lower()]


def _is_default(name: str) -> bool:
    return name.strip().lower() == DEFAULT_DEVICE


def missing_device_problem(devices: Sequence[DeviceInfo], kind: DeviceKind) -> str | None:
    """Why no device can do `kind` (no sound card at all, or none that can), or None."""
    if not devices:
        return NO_SOUND_CARD
    if any(d.can(kind) for d in devices):
        return None
    can = "record" if kind == "input" else "play"
    count = f"{len(devices)} audio device{'s' if len(devices) > 1 else ''}"
    return f"no {kind} device found: none of the {count} PortAudio lists can {can}"


def match_device(devices: Sequence[DeviceInfo], name: str, kind: DeviceKind) -> int | None:
    """The index `name` selects among `devices` able to do `kind`; None for "default"."""
    problem = missing_device_problem(devices, kind)
    if problem is not None:
        raise AudioDeviceError(
            f"{kind} device {name!r}: {problem} (audio.{kind}_device); {CHECK_SOUND_CARD}"
        )
    if _is_default(name):
        return None
    matches = _matching(devices, name, kind)
    if len(matches) == 1:
        return matches[0].index
    key = f"audio.{kind}_device"
    if matches:
        raise AudioDeviceError(
            f"{key} = {name!r} matches {len(matches)} {kind} devices:\n{_describe(matches)}\n"
            f'set {key} to one full name (or "default")'
        )
    available = [d for d in devices if d.can(kind)]
    raise AudioDeviceError(
        f"{key} = {name!r} matches no {kind} device; available {kind} devices:\n"
        f'{_describe(available)}\nset {key} to one of these names (or "default")'
    )


def find_device(pa: Any, name: str, kind: DeviceKind) -> int | None:
    """Resolve a configured device name with PyAudio's current device list."""
    return match_device(list_devices(pa), name, kind)


def _configured_line(
    devices: Sequence[DeviceInfo], kind: DeviceKind, configured: str
) -> tuple[int | None, str]:
    """The index the configured name selects, and a line saying so (or why it does not)."""
    label = f"{kind:<6} audio.{kind}_device = {configured!r}"
    problem = missing_device_problem(devices, kind)
    if problem is not None:
        return None, f"{label}: NOTHING TO SELECT, {problem}"
    if _is_default(configured):
        return None, f"{label}: PortAudio's default device"
    matches = _matching(devices, configured, kind)
    if len(matches) == 1:
        return matches[0].index, f"{label}: [{matches[0].index}] {matches[0].name}"
    if matches:
        listed = ", ".join(f"[{d.index}] {d.name}" for d in matches)
        return None, f"{label}: AMBIGUOUS, matches {listed}"
    return None, f"{label}: NOT FOUND, no {kind} device has this name"


def format_device_table(
    devices: Sequence[DeviceInfo], configured: tuple[str, str] | None = None
) -> str:
    """The `talkbox devices` listing: one row per device; with `configured` (the input and
    output device names of a config), the ones they select are marked and explained."""
    if configured is None:
        input_index = output_index = None
        explained = [
            "no config read: with --config PATH, the devices that config selects are marked"
        ]
    else:
        input_index, input_line = _configured_line(devices, "input", configured[0])
        output_index, output_line = _configured_line(devices, "output", configured[1])
        explained = [input_line, output_line]
    rows = [f"{'index':>5}  {'in':>3}  {'out':>3}  {'rate':>6}  name"]
    for d in devices:
        marks = [m for m, i in (("input", input_index), ("output", output_index)) if i == d.index]
        suffix = f"   <- {' + '.join(marks)}" if marks else ""
        rows.append(
            f"{d.index:>5}  {d.max_input_channels:>3}  {d.max_output_channels:>3}  "
            f"{d.default_rate:>6}  {d.name}{suffix}"
        )
    return "\n".join([*rows, "", *explained])
