"""The device's own tools and how a call is run: every failure is an output the model can
talk about, with one log line that names the tool."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from typing import Any

import pytest

from talkbox.config import ToolsConfig
from talkbox.config.loading import parse_config
from talkbox.errors import ConfigError
from talkbox.shell.volume import SpeakerVolume
from talkbox.tools.alarms import DECLARATIONS as TIMER_DECLARATIONS
from talkbox.tools.alarms import AlarmStore, AlarmTools
from talkbox.tools.builtin import CURRENT_TIME, END_CONVERSATION, LocalTool, current_time, toolbox
from talkbox.tools.runner import ToolRunner
from talkbox.tools.volume import VOLUME


def runner_with(run: Any, timeout: float = 5.0) -> ToolRunner:
    return ToolRunner({"probe": LocalTool(CURRENT_TIME, run)}, timeout)


async def test_a_tool_gets_its_parsed_arguments_and_its_output_is_passed_on() -> None:
    seen: list[dict[str, Any]] = []

    def run(arguments: dict[str, Any]) -> str:
        seen.append(arguments)
        return '{"ok": true}'

    assert await runner_with(run).run("probe", '{"minutes": 5}') == '{"ok": true}'
    assert seen == [{"minutes": 5}]
    assert await runner_with(run).run("probe", "") == '{"ok": true}', "no arguments: {}"
    assert seen[-1] == {}


async def test_an_unknown_tool_is_an_error_output_naming_it(caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    output = await runner_with(lambda a: "{}").run("open_pod_bay_doors", "{}")
    assert json.loads(output) == {"error": "there is no tool named 'open_pod_bay_doors'"}
    assert "open_pod_bay_doors" in caplog.text


@pytest.mark.parametrize(("arguments", "problem"), [
    ("{not json", "arguments are not valid JSON"),
    ("[1, 2]", "arguments are not a JSON object"),
    ('{"a": "' + "x" * 20000 + '"}', "arguments of 20009 characters are too long"),
])
async def test_bad_arguments_are_an_error_output_and_the_tool_is_not_run(
    arguments: str, problem: str
) -> None:
    ran: list[object] = []
    output = await runner_with(lambda a: ran.append(a) or "{}").run("probe", arguments)
    assert json.loads(output) == {"error": problem}
    assert ran == []


async def test_a_tool_that_raises_is_an_error_output_and_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(arguments: dict[str, Any]) -> str:
        raise OSError("mixer is gone")

    with caplog.at_level(logging.WARNING):
        output = await runner_with(broken).run("probe", "{}")
    assert json.loads(output) == {"error": "the tool failed: OSError"}
    assert "tool probe failed: OSError: mixer is gone" in caplog.text


async def test_a_tool_that_hangs_is_answered_at_its_time_limit() -> None:
    release = threading.Event()

    def hangs(arguments: dict[str, Any]) -> str:
        release.wait(10)
        return "{}"

    try:
        output = await runner_with(hangs, timeout=0.2).run("probe", "{}")
    finally:
        release.set()
    assert json.loads(output) == {"error": "the tool did not finish within 0.2 s"}


def test_current_time_is_the_local_time_date_and_zone() -> None:
    zone = dt.timezone(dt.timedelta(hours=-5), "EST")
    answer = json.loads(current_time(lambda: dt.datetime(2026, 12, 4, 14, 5, tzinfo=zone)))
    assert answer == {"time": "14:05", "weekday": "Friday", "date": "2026-12-04",
                      "time_zone": "EST", "utc_offset": "-05:00"}


def test_the_config_switches_each_tool_on_and_off() -> None:
    store = AlarmTools(AlarmStore(None))
    volume = SpeakerVolume()
    everything = toolbox(ToolsConfig(), alarms=store, volume=volume)
    assert everything.declarations == (
        END_CONVERSATION, CURRENT_TIME, VOLUME, *TIMER_DECLARATIONS)
    assert set(everything.local) == {CURRENT_TIME.name, VOLUME.name} | {
        d.name for d in TIMER_DECLARATIONS}, "goodbye is the core's, not run here"
    assert set(toolbox(ToolsConfig()).local) == {CURRENT_TIME.name}, (
        "timers need the store, the volume a volume to set")
    nothing = toolbox(ToolsConfig(end_conversation=False, time=False, timers=False, volume=False),
                      alarms=store, volume=volume)
    assert nothing.declarations == () and not nothing.local


def test_a_tool_time_limit_out_of_range_names_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[tools]\ntimeout_seconds = 0\n", "test.toml")
    assert "tools.timeout_seconds" in str(caught.value)
