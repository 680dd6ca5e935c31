"""The volume: the tool's arguments and `talkbox ctl volume`'s, the level arithmetic, the
software gain, the file that keeps the level, and the ALSA mixer's failures (this machine has
no sound card: a mixer that works is tested in the VM, tests/system/vm/guest_checks.sh)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from talkbox.audio.mixer import AlsaMixer, MixerError, scaled
from talkbox.config import ToolsConfig
from talkbox.shell.volume import SpeakerVolume, read_level, write_level
from talkbox.tools.builtin import toolbox
from talkbox.tools.runner import ToolRunner
from talkbox.tools.volume import (
    VOLUME,
    VolumeArgumentError,
    level_from_command,
    requested_level,
    run_volume_tool,
)


@pytest.mark.parametrize(("current", "arguments", "wanted"), [
    (70, {"action": "get"}, None),
    (70, {"action": "set", "level": 30}, 30),
    (70, {"action": "set", "level": 0}, 0),
    (70, {"action": "set", "level": 100.0}, 100),
    (70, {"action": "louder"}, 80),
    (70, {"action": "quieter", "step": 25}, 45),
    (95, {"action": "louder", "step": 20}, 100),
    (5, {"action": "quieter"}, 0),
])
def test_the_tool_asks_for_a_level(current: int, arguments: dict[str, Any],
                                   wanted: int | None) -> None:
    assert requested_level(current, arguments) == wanted


@pytest.mark.parametrize(("arguments", "message"), [
    ({"action": "set", "level": 150},
     "level must be an integer from 0 to 100 (percent); got 150"),
    ({"action": "set", "level": -1},
     "level must be an integer from 0 to 100 (percent); got -1"),
    ({"action": "set", "level": 12.5},
     "level must be an integer from 0 to 100 (percent); got 12.5"),
    ({"action": "set", "level": True},
     "level must be an integer from 0 to 100 (percent); got True"),
    ({"action": "set", "level": "50"},
     "level must be an integer from 0 to 100 (percent); got '50'"),
    ({"action": "set"}, "'set' needs level, an integer from 0 to 100 (percent)"),
    ({"action": "louder", "step": 0},
     "step must be an integer from 1 to 100 (percentage points); got 0"),
    ({"action": "mute"}, "action must be one of get, set, louder, quieter; got 'mute'"),
    ({}, "action must be one of get, set, louder, quieter; got None"),
    ({"action": "get", "volume": 3}, "unknown argument 'volume'"),
])
def test_arguments_out_of_the_schema_are_an_error_naming_what_is_allowed(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(VolumeArgumentError) as caught:
        requested_level(50, arguments)
    assert str(caught.value) == message


@pytest.mark.parametrize(("current", "text", "wanted"), [
    (70, "30", 30), (70, " 0 ", 0), (70, "100", 100),
    (70, "+10", 80), (70, "-25", 45), (95, "+20", 100), (5, "-10", 0),
])
def test_ctl_volume_sets_or_changes_the_level(current: int, text: str, wanted: int) -> None:
    assert level_from_command(current, text) == wanted


@pytest.mark.parametrize("text", ["101", "loud", "", "+", "-", "5%", "1e2", "٥", "+-5", "0x10",
                                  "1000"])
def test_ctl_volume_refuses_what_is_not_a_level(text: str) -> None:
    with pytest.raises(VolumeArgumentError) as caught:
        level_from_command(50, text)
    assert "from 0 to 100" in str(caught.value) and repr(text) in str(caught.value)


def test_the_declaration_is_a_strict_schema() -> None:
    parameters = VOLUME.parameters
    assert parameters["additionalProperties"] is False
    assert parameters["required"] == ["action"]
    assert parameters["properties"]["action"]["enum"] == ["get", "set", "louder", "quieter"]
    assert (parameters["properties"]["level"]["minimum"],
            parameters["properties"]["level"]["maximum"]) == (0, 100)


def test_the_config_switches_the_volume_tool_on_and_off() -> None:
    volume = SpeakerVolume()
    on = toolbox(ToolsConfig(), volume=volume)
    assert VOLUME in on.declarations and VOLUME.name in on.local
    off = toolbox(ToolsConfig(volume=False), volume=volume)
    assert VOLUME not in off.declarations and VOLUME.name not in off.local


async def test_the_tool_through_the_runner_sets_the_level_and_refuses_one_out_of_range(
    caplog: pytest.LogCaptureFixture,
) -> None:
    volume = SpeakerVolume()
    runner = ToolRunner(toolbox(ToolsConfig(), volume=volume).local, 5.0)
    set_to_50 = await runner.run(VOLUME.name, '{"action": "set", "level": 50}')
    assert json.loads(set_to_50) == {"volume": 50, "previous": 100}
    assert volume.level == 50 and volume.gain == 0.5
    too_loud = await runner.run(VOLUME.name, '{"action": "set", "level": 150}')
    assert json.loads(too_loud) == {
        "error": "level must be an integer from 0 to 100 (percent); got 150"
    }
    assert volume.level == 50, "a refused call changes nothing"
    assert "speaker_volume" in caplog.text and "got 150" in caplog.text
    louder = await runner.run(VOLUME.name, '{"action": "louder"}')
    assert json.loads(louder) == {"volume": 60, "previous": 50}
    assert json.loads(await runner.run(VOLUME.name, '{"action": "get"}')) == {"volume": 60}


def test_run_volume_tool_does_not_set_when_only_asked() -> None:
    class Recording:
        def __init__(self) -> None:
            self.level = 40
            self.sets: list[int] = []

        def set_level(self, level: int) -> int:
            self.sets.append(level)
            return level

    control = Recording()
    assert json.loads(run_volume_tool(control, {"action": "get"})) == {"volume": 40}
    assert control.sets == []


# --- the software gain ------------------------------------------------------------------------


def test_software_gain_at_half_is_six_decibels_down_and_full_is_untouched() -> None:
    t = np.arange(24000) / 24000
    tone = (20000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).tobytes()
    assert scaled(tone, 1.0) is tone, "no work at 100 %"
    half = np.frombuffer(scaled(tone, 0.5), dtype=np.int16).astype(np.float64)
    full = np.frombuffer(tone, dtype=np.int16).astype(np.float64)
    ratio_db = 20 * math.log10(np.sqrt(np.mean(half**2)) / np.sqrt(np.mean(full**2)))
    assert ratio_db == pytest.approx(-6.02, abs=0.01)
    assert scaled(tone, 0.0) == bytes(len(tone))
    extremes = np.array([-32768, 32767, 3, -3], dtype=np.int16).tobytes()
    assert np.frombuffer(scaled(extremes, 0.5), dtype=np.int16).tolist() == [-16384, 16384, 2, -2]
    assert scaled(b"\x01\x02\x03", 0.5) == b"\x01\x02\x03", "half a sample: the player refuses it"


# --- the file ---------------------------------------------------------------------------------


def test_the_level_file_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "volume"
    write_level(path, 35)
    assert path.read_text() == "35\n"
    assert read_level(path) == 35
    write_level(path, 0)
    assert read_level(path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume"]


def test_no_file_yet_is_the_default_without_a_complaint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert read_level(tmp_path / "volume") is None
    assert SpeakerVolume(path=tmp_path / "volume").level == 100
    assert "ignoring" not in caplog.text and "cannot" not in caplog.text


@pytest.mark.parametrize(("content", "reason"), [
    (b"loud\n", "it holds no level"),
    (b"250\n", "level must be an integer from 0 to 100 (percent); got 250"),
    (b"\xff\xfe", "it holds no level"),
    (b"", "it holds no level"),
    (b"5" * 1000, "the file is too large to be a level"),
])
def test_a_corrupt_file_is_one_log_line_and_the_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, reason: str
) -> None:
    path = tmp_path / "volume"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        volume = SpeakerVolume(path=path)
    assert volume.level == 100
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line == f"ignoring the volume in {path}: {reason}; using the default"
    volume.set_level(20)
    assert read_level(path) == 20, "the next change replaces the corrupt file"


def test_an_unreadable_file_is_one_log_line_and_the_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "volume"
    path.mkdir()  # EISDIR: what a file we may not read looks like to root too
    volume = SpeakerVolume(path=path)
    assert volume.level == 100
    assert f"cannot read the volume from {path}" in caplog.text
    assert volume.set_level(30) == 30, "a file that cannot be written is a warning, no more"
    assert f"cannot keep the volume across restarts in {path}" in caplog.text


def test_the_level_survives_a_new_speaker_volume(tmp_path: Path) -> None:
    SpeakerVolume(path=tmp_path / "volume").set_level(42)
    again = SpeakerVolume(path=tmp_path / "volume")
    assert again.level == 42 and again.gain == 0.42


# --- the ALSA mixer ---------------------------------------------------------------------------


class FakeCardMixer(AlsaMixer):
    """AlsaMixer with the card replaced by a control of 74 steps, too few for every percent (its
    40 % reads back as 41 %, as the VM's emulated card's did): SpeakerVolume's side."""

    STEPS = 74

    def __init__(self, percent: int) -> None:
        super().__init__("hw:9", "PCM")
        self.raw = round(self.STEPS * percent / 100)

    @property
    def percent(self) -> int:
        return round(self.raw * 100 / self.STEPS)

    def _act(self, percent: int | None) -> int:
        if percent is not None:
            self.raw = round(self.STEPS * percent / 100)
        return self.percent


def test_with_a_mixer_the_level_is_the_mixers_and_the_audio_is_not_scaled(tmp_path: Path) -> None:
    mixer = FakeCardMixer(90)
    volume = SpeakerVolume(mixer, tmp_path / "volume")
    assert volume.level == 91, "no level kept yet: the card's own (its nearest step to 90 %)"
    assert volume.gain == 1.0
    assert volume.set_level(40) == 40, "the level asked for, though the card holds 41 %"
    assert mixer.percent == 41 and read_level(tmp_path / "volume") == 40
    volume.set_level(30)
    assert mixer.percent == 30 and read_level(tmp_path / "volume") == 30
    restarted_card = FakeCardMixer(90)
    assert SpeakerVolume(restarted_card, tmp_path / "volume").level == 30
    assert restarted_card.percent == 30, "the kept level is put back on the card at start"


@pytest.mark.parametrize(("device", "control"), [("default", "PCM"), ("hw:7", "Master"),
                                                 ("no-such-device", "PCM")])
def test_a_mixer_that_cannot_be_used_is_an_error_naming_it(device: str, control: str) -> None:
    with pytest.raises(MixerError) as caught:
        AlsaMixer(device, control).set_percent(40)
    assert f"ALSA mixer control {control!r} on {device!r}" in str(caught.value)


def test_an_unusable_mixer_at_start_is_one_log_line_naming_the_key_and_software_gain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "volume").write_text("50\n")
    volume = SpeakerVolume(AlsaMixer("hw:7", "Speaker"), tmp_path / "volume")
    assert volume.mixer is None and volume.level == 50 and volume.gain == 0.5
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "'Speaker'" in line and "[audio] mixer_control (on mixer_device 'hw:7')" in line
    assert "talkbox scales its own audio instead" in line
