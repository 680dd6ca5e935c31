"""Timers and alarms, the pure part: what a request means, when each one is due, which are
due now, which were missed and which are too old to ring.

Wall-clock time comes in as an argument: epoch seconds, or an aware `datetime` in the
device's time zone (a `zoneinfo.ZoneInfo`, so "07:00 tomorrow" is right across a change to
or from summer time). Nothing here reads a clock, a file or the time-zone database.

A timer is a duration ("10 minutes"), an alarm a local wall-clock time ("07:00", optionally
on a date). Both are kept the same way: an `Alarm` with the epoch second it is due; the
machine (`core/conversation.py`) rings those that come due, and the shell keeps the file.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

AlarmKind = Literal["timer", "alarm"]

# Bounds on what the model may set: no real request needs more, and each pending one is
# kept in a file and listed to the model.
MAX_PENDING = 32
MAX_TIMER_SECONDS = 7 * 24 * 3600.0
MAX_ALARM_DAYS_AHEAD = 366
MAX_LABEL_CHARS = 60
# Due longer ago than this when first seen (the device was off, or the clock jumped forward):
# "missed". It still rings (a shorter ring) and the log says so.
LATE_SECONDS = 90.0
# Missed by more than this: only a log line, no ring. A timer or a wake-up alarm from more
# than half a day ago rung now would only puzzle whoever is in the room.
MISSED_LIMIT_SECONDS = 12 * 3600.0
# The shell re-reads the wall clock at least this often while one is pending, so an NTP step
# after boot (a Pi has no real-time clock) moves the ring to the right moment.
CLOCK_RECHECK_SECONDS = 60.0

_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Alarm:
    """One pending timer or alarm.

    due: epoch seconds; due_local: the same moment as local ISO text when it was set (what
    log lines and answers show); seconds: a timer's duration (0 for an alarm).
    """

    id: str
    kind: AlarmKind
    label: str
    due: float
    due_local: str
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """How a log line or an answer names it: "timer 'pasta'", "alarm at 07:00"."""
        if self.label:
            return f"{self.kind} '{self.label}'"
        return f"timer of {describe_duration(self.seconds)}" if self.kind == "timer" else (
            f"alarm at {self.clock_time}")

    @property
    def clock_time(self) -> str:
        """HH:MM of its due time, local as when it was set."""
        return dt.datetime.fromisoformat(self.due_local).strftime("%H:%M")


# --- requests ---------------------------------------------------------------------------------


def clean_label(label: object) -> str | None:
    """The label as kept (stripped, one line), or None if it cannot be one."""
    if not isinstance(label, str):
        return None
    text = " ".join(label.split())
    return text if len(text) <= MAX_LABEL_CHARS else None


def next_id(pending: Iterable[Alarm]) -> str:
    """A short id not in use: one more than the highest number in use."""
    numbers = [int(alarm.id) for alarm in pending if alarm.id.isdigit()]
    return str(max(numbers, default=0) + 1)


def new_timer(seconds: object, label: object, now: dt.datetime, pending: tuple[Alarm, ...]
              ) -> Alarm | str:
    """A timer of `seconds` from `now` (aware), or what is wrong with the request."""
    problem = _common_problem(label, pending)
    if problem:
        return problem
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "duration_seconds must be a number of seconds"
    if not 1 <= seconds <= MAX_TIMER_SECONDS:
        return (f"duration_seconds must be between 1 and {MAX_TIMER_SECONDS:.0f} "
                f"(7 days), not {seconds:g}")
    due = now + dt.timedelta(seconds=float(seconds))
    return Alarm(next_id(pending), "timer", clean_label(label) or "", due.timestamp(),
                 due.isoformat(timespec="seconds"), float(seconds))


def new_alarm(time_text: object, date_text: object, label: object, now: dt.datetime,
              pending: tuple[Alarm, ...]) -> Alarm | str:
    """An alarm at local `time_text` ("HH:MM", 24-hour) on `date_text` ("YYYY-MM-DD"), or,
    without a date, at the next such time after `now`; or what is wrong with the request."""
    problem = _common_problem(label, pending)
    if problem:
        return problem
    if not isinstance(time_text, str) or not (match := _TIME.match(time_text.strip())):
        return f"time must be a 24-hour local time like \"07:30\", not {time_text!r}"
    clock = dt.time(int(match.group(1)), int(match.group(2)))
    if date_text in (None, ""):
        due = next_local_time(now, clock)
    else:
        if not isinstance(date_text, str) or not _DATE.match(date_text.strip()):
            return f"date must look like \"2025-01-31\", not {date_text!r}"
        try:
            day = dt.date.fromisoformat(date_text.strip())
        except ValueError:
            return f"there is no date {date_text!r}"
        due = local_moment(day, clock, now)
        if due <= now:
            return (f"{day.isoformat()} {clock:%H:%M} is in the past (it is now "
                    f"{now:%Y-%m-%d %H:%M})")
        if (day - now.date()).days > MAX_ALARM_DAYS_AHEAD:
            return f"an alarm can be at most {MAX_ALARM_DAYS_AHEAD} days ahead"
    return Alarm(next_id(pending), "alarm", clean_label(label) or "", due.timestamp(),
                 due.isoformat(timespec="seconds"))


def _common_problem(label: object, pending: tuple[Alarm, ...]) -> str:
    if label is not None and clean_label(label) is None:
        return f"label must be text of at most {MAX_LABEL_CHARS} characters"
    if len(pending) >= MAX_PENDING:
        return f"there are already {MAX_PENDING} timers and alarms; cancel one first"
    return ""


def local_moment(day: dt.date, clock: dt.time, now: dt.datetime) -> dt.datetime:
    """`clock` on `day` in `now`'s time zone, as an aware datetime (summer time included: a
    time that does not exist that night comes out an hour later, as a clock on the wall)."""
    naive = dt.datetime.combine(day, clock)
    aware = naive.replace(tzinfo=now.tzinfo)
    # Round trip through UTC: normalises a time skipped by a change to summer time.
    return aware.astimezone(dt.UTC).astimezone(now.tzinfo)


def next_local_time(now: dt.datetime, clock: dt.time) -> dt.datetime:
    """The next `clock` after `now` (aware) in its time zone: today if still ahead, else
    tomorrow."""
    today = local_moment(now.date(), clock, now)
    if today > now:
        return today
    return local_moment(now.date() + dt.timedelta(days=1), clock, now)


def select(pending: tuple[Alarm, ...], alarm_id: object, label: object
           ) -> tuple[Alarm, ...] | str:
    """Those `cancel` means: by id, else every one with the label (any case); or what is
    wrong. With neither and exactly one pending, that one."""
    if isinstance(alarm_id, str) and alarm_id.strip():
        chosen = tuple(a for a in pending if a.id == alarm_id.strip())
        return chosen or f"there is no timer or alarm with id {alarm_id.strip()!r}"
    if isinstance(label, str) and label.strip():
        wanted = " ".join(label.split()).casefold()
        chosen = tuple(a for a in pending if a.label.casefold() == wanted)
        return chosen or f"there is no timer or alarm labelled {label.strip()!r}"
    if len(pending) == 1:
        return pending
    if not pending:
        return "there are no timers or alarms to cancel"
    return "several timers and alarms are set: say which one, by id or label"


# --- words ------------------------------------------------------------------------------------


def describe_duration(seconds: float) -> str:
    """10 minutes, 1 hour 30 minutes, 45 seconds, 2 days 3 hours."""
    whole = round(seconds)
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return " ".join(parts[:2]) or "0 seconds"


def describe_due(alarm: Alarm, now: dt.datetime) -> str:
    """When it rings, as a person says it: "at 18:42", "tomorrow at 07:00", "on Friday
    2025-01-31 at 07:00" (in `now`'s time zone)."""
    due = dt.datetime.fromtimestamp(alarm.due, now.tzinfo)
    days = (due.date() - now.date()).days
    if days == 0:
        return f"at {due:%H:%M}"
    if days == 1:
        return f"tomorrow at {due:%H:%M}"
    return f"on {due:%A %Y-%m-%d} at {due:%H:%M}"


def confirmation(alarm: Alarm, now: dt.datetime) -> str:
    """What the model reads back: "timer 'pasta' set for 10 minutes, rings at 18:42"."""
    when = describe_due(alarm, now)
    label = f" '{alarm.label}'" if alarm.label else ""
    if alarm.kind == "timer":
        return f"timer{label} set for {describe_duration(alarm.seconds)}, rings {when}"
    return f"alarm{label} set, rings {when}"


# --- when ---------------------------------------------------------------------------------


def in_due_order(pending: Iterable[Alarm]) -> list[Alarm]:
    """Soonest first (those due at the same moment by id, so every list agrees)."""
    return sorted(pending, key=_due_order)


def next_due(pending: Iterable[Alarm]) -> Alarm | None:
    return min(pending, key=_due_order, default=None)


def _due_order(alarm: Alarm) -> tuple[float, str]:
    return alarm.due, alarm.id


@dataclass(frozen=True)
class DueNow:
    """Of the pending ones at `now`: those to ring on time, those missed (late by more than
    LATE_SECONDS: ring, and say so), those missed too long ago to ring."""

    on_time: tuple[Alarm, ...] = ()
    missed: tuple[Alarm, ...] = ()
    too_old: tuple[Alarm, ...] = ()

    @property
    def all(self) -> tuple[Alarm, ...]:
        return self.on_time + self.missed + self.too_old


def due_now(pending: Iterable[Alarm], now: float) -> DueNow:
    due = in_due_order(a for a in pending if a.due <= now)
    return DueNow(
        on_time=tuple(a for a in due if now - a.due <= LATE_SECONDS),
        missed=tuple(a for a in due if LATE_SECONDS < now - a.due <= MISSED_LIMIT_SECONDS),
        too_old=tuple(a for a in due if now - a.due > MISSED_LIMIT_SECONDS),
    )


def seconds_until_check(pending: Iterable[Alarm], now: float) -> float | None:
    """How long the shell may sleep before telling the machine the time again: until the
    next one is due, but never longer than CLOCK_RECHECK_SECONDS; None when none is pending."""
    upcoming = next_due(pending)
    if upcoming is None:
        return None
    return max(0.0, min(upcoming.due - now, CLOCK_RECHECK_SECONDS))
