"""Timers and alarms: the due-time rules (core/alarms.py) with fixed times and zones, the
machine ringing them with a fake clock, the store's file, and the tools' answers."""

from __future__ import annotations

import datetime as dt
import json
import logging
import zoneinfo
from pathlib import Path

import pytest

from support.machine_driver import Driver, of
from talkbox.config.loading import parse_config
from talkbox.core.alarms import (
    CLOCK_RECHECK_SECONDS,
    MAX_PENDING,
    Alarm,
    confirmation,
    describe_duration,
    due_now,
    new_alarm,
    new_timer,
    next_local_time,
    seconds_until_check,
    select,
)
from talkbox.core.conversation import (
    ALARM_REPEAT_SECONDS,
    MISSED_RING_SECONDS,
    TIMER_ALARM_REPEAT,
    TIMER_ALARM_RING,
)
from talkbox.core.inputs import (
    AlarmClockTick,
    AlarmsChanged,
    Announce,
    ArmAlarmCheck,
    CloseConnection,
    FlushPlayback,
    Notice,
    OpenConnection,
    PlayChime,
    RemoveAlarms,
    State,
    StopRequested,
    WakeWord,
)
from talkbox.errors import ConfigError
from talkbox.tools.alarms import AlarmStore, AlarmTools

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
EVENING = dt.datetime(2026, 12, 4, 18, 32, tzinfo=BERLIN)


def at(hour: int, minute: int, day: int = 4, month: int = 12) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=BERLIN)


def timer(seconds: float, label: str = "", now: dt.datetime = EVENING,
          pending: tuple[Alarm, ...] = ()) -> Alarm:
    made = new_timer(seconds, label, now, pending)
    assert isinstance(made, Alarm), made
    return made


# --- the rules, with fixed times --------------------------------------------------------------


def test_a_timer_is_due_its_duration_after_now_and_says_so() -> None:
    pasta = timer(600, "pasta")
    assert pasta.due == EVENING.timestamp() + 600
    assert confirmation(pasta, EVENING) == "timer 'pasta' set for 10 minutes, rings at 18:42"
    assert describe_duration(5400) == "1 hour 30 minutes"
    assert describe_duration(45) == "45 seconds"


def test_an_alarm_without_a_date_is_the_next_such_time_in_the_zone() -> None:
    later_today = new_alarm("21:00", "", "", EVENING, ())
    tomorrow = new_alarm("07:00", None, "wake up", EVENING, ())
    assert isinstance(later_today, Alarm) and isinstance(tomorrow, Alarm)
    assert later_today.due == at(21, 0).timestamp()
    assert tomorrow.due == at(7, 0, day=5).timestamp()
    assert confirmation(tomorrow, EVENING) == "alarm 'wake up' set, rings tomorrow at 07:00"
    # Exactly now is not "next": tomorrow.
    assert next_local_time(at(7, 0), dt.time(7, 0)) == at(7, 0, day=5)


def test_the_next_seven_oclock_across_the_change_to_summer_time_is_local_seven() -> None:
    # Berlin moves its clocks forward in the night to 2026-03-29: 23 hours later, not 24.
    evening_before = dt.datetime(2026, 3, 28, 22, 0, tzinfo=BERLIN)
    seven = next_local_time(evening_before, dt.time(7, 0))
    assert (seven.hour, seven.minute, seven.utcoffset()) == (7, 0, dt.timedelta(hours=2))
    assert seven.timestamp() - evening_before.timestamp() == 8 * 3600


@pytest.mark.parametrize(("time_text", "date_text", "problem"), [
    ("25:00", "", "time must be a 24-hour local time"),
    ("7 am", "", "time must be a 24-hour local time"),
    ("07:00", "2026-12-04", "2026-12-04 07:00 is in the past"),
    ("07:00", "2026-02-30", "there is no date '2026-02-30'"),
    ("07:00", "tomorrow", "date must look like"),
    ("07:00", "2028-01-01", "at most 366 days ahead"),
])
def test_a_bad_alarm_is_a_clear_error(time_text: str, date_text: str, problem: str) -> None:
    made = new_alarm(time_text, date_text, "", EVENING, ())
    assert isinstance(made, str) and problem in made


@pytest.mark.parametrize(("seconds", "problem"), [
    (-5, "between 1 and 604800"), (0, "between 1"), (8 * 86400, "(7 days)"),
    ("ten", "must be a number"), (True, "must be a number"),
])
def test_a_bad_timer_is_a_clear_error(seconds: object, problem: str) -> None:
    made = new_timer(seconds, "x", EVENING, ())
    assert isinstance(made, str) and problem in made


def test_labels_and_the_number_pending_are_bounded() -> None:
    assert "label must be text" in str(new_timer(60, "x" * 61, EVENING, ()))
    pending = tuple(timer(60 + i, now=EVENING) for i in range(MAX_PENDING))
    assert "cancel one first" in str(new_timer(60, "", EVENING, pending))


def test_ids_are_new_and_cancel_picks_by_id_label_or_the_only_one() -> None:
    first = timer(60, "Pasta")
    second = timer(120, "eggs", pending=(first,))
    assert (first.id, second.id) == ("1", "2")
    both = (first, second)
    assert select(both, "2", "") == (second,)
    assert select(both, "", "pasta") == (first,), "labels match in any case"
    assert select((first,), "", "") == (first,)
    assert "say which one" in str(select(both, "", ""))
    assert "no timer or alarm with id '9'" in str(select(both, "9", ""))


def test_which_are_due_on_time_missed_or_too_old_to_ring() -> None:
    now = EVENING.timestamp()
    on_time = timer(1, "a", now=EVENING - dt.timedelta(seconds=31))
    missed = timer(1, "b", now=EVENING - dt.timedelta(hours=2))
    too_old = timer(1, "c", now=EVENING - dt.timedelta(hours=13))
    future = timer(3600, "d")
    due = due_now((future, too_old, missed, on_time), now)
    assert (due.on_time, due.missed, due.too_old) == ((on_time,), (missed,), (too_old,))
    # The shell sleeps until the next, re-reading the clock at least once a minute.
    assert seconds_until_check((future,), now) == CLOCK_RECHECK_SECONDS
    assert seconds_until_check((timer(20),), now) == pytest.approx(20)
    assert seconds_until_check((), now) is None


# --- the machine rings them -------------------------------------------------------------------


def pending_timer(d: Driver, seconds: float, label: str = "pasta") -> Alarm:
    made = timer(seconds, label)
    out = d(AlarmsChanged((made,), EVENING.timestamp()))
    wait = min(seconds, CLOCK_RECHECK_SECONDS)
    assert of(ArmAlarmCheck, out) == [ArmAlarmCheck(pytest.approx(wait))]
    return made


def test_a_due_timer_rings_repeats_and_stops_by_itself_after_the_bound() -> None:
    d = Driver(alarm_ring_seconds=60.0)
    pasta = pending_timer(d, 10)
    out = d(AlarmClockTick(pasta.due + 0.01))
    assert of(PlayChime, out) == [PlayChime("alarm")]
    assert of(RemoveAlarms, out) == [RemoveAlarms(("1",))]
    assert of(ArmAlarmCheck, out) == [ArmAlarmCheck(None)], "nothing else pending"
    assert "timer 'pasta' rings (due at 18:32)" in [n.text for n in of(Notice, out)]
    assert d.m.snapshot().ringing and d.m.state is State.IDLE
    assert of(OpenConnection, out) == [], "no conversation opens"
    assert of(PlayChime, d.fire(TIMER_ALARM_REPEAT)) == [PlayChime("alarm")]
    assert TIMER_ALARM_REPEAT in d.timers
    out = d.fire(TIMER_ALARM_RING)
    assert of(FlushPlayback, out) and not d.m.ringing and not d.timers
    # The removed one, still in a list read before the file changed, does not ring again.
    assert of(PlayChime, d(AlarmsChanged((pasta,), pasta.due + 1))) == []


def test_the_wake_word_stops_the_ring_and_opens_no_conversation() -> None:
    d = Driver()
    pasta = pending_timer(d, 10)
    d(AlarmClockTick(pasta.due))
    out = d(WakeWord("hey_jarvis"))
    assert of(OpenConnection, out) == [] and d.m.state is State.IDLE
    assert of(FlushPlayback, out) and not d.m.ringing
    assert "ringing stopped: wake word" in [n.text for n in of(Notice, out)]
    assert of(OpenConnection, d(WakeWord("hey_jarvis"))), "the next wake word talks"


def test_talkbox_ctl_stop_stops_the_ring_but_a_failed_microphone_does_not() -> None:
    d = Driver()
    pasta = pending_timer(d, 10)
    d(AlarmClockTick(pasta.due))
    d(StopRequested("microphone failed", stop_ringing=False))
    assert d.m.ringing
    d(StopRequested("talkbox ctl stop"))
    assert not d.m.ringing and not d.timers


def test_one_due_during_a_conversation_ends_it_and_rings() -> None:
    d = Driver()
    pasta = pending_timer(d, 10)
    d.start_listening()
    d.respond()
    out = d(AlarmClockTick(pasta.due))
    assert of(CloseConnection, out) and d.m.state is State.IDLE
    assert of(PlayChime, out) == [PlayChime("done"), PlayChime("alarm")]
    assert set(d.timers) == {TIMER_ALARM_REPEAT, TIMER_ALARM_RING}


def test_several_due_at_once_ring_once() -> None:
    d = Driver()
    a, b = timer(10, "a"), timer(10, "b", pending=(timer(10, "a"),))
    d(AlarmsChanged((a, b), EVENING.timestamp()))
    out = d(AlarmClockTick(a.due))
    assert of(PlayChime, out) == [PlayChime("alarm")]
    assert of(RemoveAlarms, out) == [RemoveAlarms(("1", "2"))]


def test_at_start_a_missed_one_rings_shortly_and_says_so_and_a_very_old_one_is_only_logged(
) -> None:
    d = Driver(alarm_ring_seconds=300.0)
    wake_up = new_alarm("07:00", "", "wake up", at(6, 0), ())
    assert isinstance(wake_up, Alarm)
    ancient = timer(60, "tea", now=EVENING - dt.timedelta(days=2), pending=(wake_up,))
    out = d(AlarmsChanged((wake_up, ancient), at(9, 0).timestamp(), at_start=True))
    notices = [n.text for n in of(Notice, out)]
    assert "alarm 'wake up' due at 07:00 was missed while talkbox was off" in notices
    assert any("timer 'tea'" in n and "not rung" in n for n in notices)
    assert of(PlayChime, out) == [PlayChime("alarm")]
    assert of(RemoveAlarms, out) == [RemoveAlarms(("1", "2"))]


def test_the_ring_of_a_missed_one_is_bounded_by_the_shorter_time() -> None:
    d = Driver(alarm_ring_seconds=300.0)
    pasta = timer(10)
    out = d(AlarmsChanged((pasta,), pasta.due + 600, at_start=True))
    starts = [a for a in out if getattr(a, "name", "") == TIMER_ALARM_RING]
    assert [s.seconds for s in starts] == [MISSED_RING_SECONDS]
    assert ALARM_REPEAT_SECONDS < MISSED_RING_SECONDS


def test_a_clock_step_forward_rings_what_it_jumped_past() -> None:
    d = Driver()
    in_an_hour = pending_timer(d, 3600, "bread")
    # A check a minute later finds the clock an hour and a half on (NTP after boot).
    out = d(AlarmClockTick(in_an_hour.due + 1800))
    assert "timer 'bread' due at 19:32 was missed (the clock jumped past it)" in [
        n.text for n in of(Notice, out)]
    assert d.m.ringing


# --- the file ---------------------------------------------------------------------------------


def test_the_store_keeps_them_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "alarms.json"
    tools = AlarmTools(AlarmStore(path), now=lambda: EVENING)
    answer = json.loads(tools.set_timer({"duration_seconds": 600, "label": "pasta"}))
    assert answer["result"] == "timer 'pasta' set for 10 minutes, rings at 18:42"
    tools.set_alarm({"time": "07:00", "date": "", "label": ""})
    again = AlarmStore(path)
    assert again.load() == tools.store.pending()
    assert [a.name for a in again.load()] == ["timer 'pasta'", "alarm at 07:00"]
    assert not list(tmp_path.glob(".*tmp")), "the temporary file was renamed"


def test_a_corrupt_file_is_moved_aside_and_logged(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "alarms.json"
    for broken in (b"{not json", b'{"version": 1, "alarms": [{"id": 1}]}', b"[]"):
        path.write_bytes(broken)
        with caplog.at_level(logging.ERROR):
            assert AlarmStore(path).load() == ()
        assert not path.exists()
        assert (tmp_path / "alarms.json.corrupt").read_bytes() == broken
        assert f"the timers and alarms file {path} is unreadable" in caplog.text
        caplog.clear()


def test_tool_answers_for_bad_values_lists_and_cancels(tmp_path: Path) -> None:
    tools = AlarmTools(AlarmStore(tmp_path / "alarms.json"), now=lambda: EVENING)
    bad = json.loads(tools.set_timer({"duration_seconds": -5, "label": ""}))
    assert "duration_seconds must be between 1" in bad["error"]
    assert "time must be" in json.loads(tools.set_alarm({"time": "25:00", "date": "",
                                                         "label": ""}))["error"]
    tools.set_timer({"duration_seconds": 60, "label": "eggs"})
    listed = json.loads(tools.list_timers({}))
    assert [(p["id"], p["label"], p["rings"]) for p in listed["pending"]] == [
        ("1", "eggs", "at 18:33")]
    cancelled = json.loads(tools.cancel_timer({"id": "", "label": "EGGS"}))
    assert cancelled == {"result": "cancelled timer 'eggs'", "cancelled": ["1"]}
    assert AlarmStore(tmp_path / "alarms.json").load() == ()


def test_the_ring_time_out_of_range_names_the_key() -> None:
    shorter = parse_config("[tools]\nalarm_ring_seconds = 60\n", "t.toml")
    assert shorter.tools.alarm_ring_seconds == 60
    with pytest.raises(ConfigError) as caught:
        parse_config("[tools]\nalarm_ring_seconds = 2\n", "t.toml")
    assert "tools.alarm_ring_seconds" in str(caught.value)


def test_an_announcement_while_a_timer_rings_is_logged_not_spoken_over_it() -> None:
    d = Driver(speak_announcements=True)
    pasta = pending_timer(d, 10)
    d(AlarmClockTick(pasta.due + 0.01))
    out = d(Announce("Dinner is ready."))
    assert of(OpenConnection, out) == [] and d.m.ringing and d.m.state is State.IDLE
    assert "not spoken: a timer rings" in of(Notice, out)[0].text
