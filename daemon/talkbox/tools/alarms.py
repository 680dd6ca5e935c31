"""Timers and alarms on the device: the tools the model calls (set a timer, set an alarm,
list, cancel) and `AlarmStore`, which keeps what is pending in a file.

The file is `alarms.json` under systemd's StateDirectory= (/var/lib/talkbox), written
atomically (a temporary file, fsync, rename, fsync of the directory), so a power cut leaves
the old list or the new one, never half of one. A file that cannot be read as ours is moved
aside to `alarms.json.corrupt` with one log line, and talkbox goes on with none. Without
STATE_DIRECTORY (a foreground run, not under systemd) they are kept in memory only.

What a request means and when each one is due is decided in `core.alarms`; what comes due is
decided by the machine. The store changes only when a tool sets or cancels one, or the
machine has one removed (`RemoveAlarms`); the shell then tells the machine what is pending.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

from talkbox.core.alarms import (
    MAX_LABEL_CHARS,
    MAX_TIMER_SECONDS,
    Alarm,
    clean_label,
    confirmation,
    describe_due,
    in_due_order,
    new_alarm,
    new_timer,
    select,
)
from talkbox.core.events import NO_ARGUMENTS, ToolDeclaration
from talkbox.safe_text import safe_line
from talkbox.state_files import write_atomically

log = logging.getLogger("talkbox.alarms")

ALARMS_FILE = "alarms.json"
FILE_VERSION = 1
# Far more than MAX_PENDING alarms take: a larger file is not ours.
MAX_FILE_BYTES = 64 * 1024


def local_now() -> dt.datetime:
    """Now in the device's time zone, with its rules (summer time) where they can be read:
    $TZ, else /etc/localtime (what `timedatectl set-timezone` sets), else a fixed offset."""
    zone: dt.tzinfo | None = None
    try:
        name = os.environ.get("TZ", "").lstrip(":")
        if name:
            zone = zoneinfo.ZoneInfo(name)
        elif Path("/etc/localtime").exists():
            with open("/etc/localtime", "rb") as tzfile:
                zone = zoneinfo.ZoneInfo.from_file(tzfile)
    except (OSError, ValueError, zoneinfo.ZoneInfoNotFoundError):
        zone = None
    return dt.datetime.now(zone) if zone is not None else dt.datetime.now().astimezone()


class AlarmStore:
    """The pending timers and alarms, in memory and (with a `path`) in a file. Thread-safe:
    tools run on worker threads."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._alarms: tuple[Alarm, ...] = ()

    def load(self) -> tuple[Alarm, ...]:
        """Read the file (none yet: no alarms). A broken one is moved aside and logged."""
        if self.path is None:
            log.info("timers and alarms are kept in memory only (no STATE_DIRECTORY: not run "
                     "by systemd); they do not survive a restart")
            return ()
        try:
            with self.path.open("rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return ()
        except OSError as error:
            log.error("cannot read the timers and alarms in %s: %s; starting with none",
                      self.path, error.strerror)
            return ()
        try:
            alarms = _parse(data)
        except ValueError as error:
            self._move_aside(str(error))
            return ()
        with self._lock:
            self._alarms = alarms
        return alarms

    def _move_aside(self, problem: str) -> None:
        assert self.path is not None
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, aside)
            where = f"moved to {aside}"
        except OSError as error:
            where = f"could not be moved aside: {error.strerror}"
        log.error("the timers and alarms file %s is unreadable (%s); %s; starting with none",
                  self.path, safe_line(problem), where)

    def pending(self) -> tuple[Alarm, ...]:
        with self._lock:
            return self._alarms

    def add(self, make: Callable[[tuple[Alarm, ...]], Alarm | str]) -> Alarm | str:
        """Add what `make` builds from those pending (or return its complaint), and save."""
        with self._lock:
            made = make(self._alarms)
            if isinstance(made, Alarm):
                self._replace((*self._alarms, made))
            return made

    def cancel(self, choose: Callable[[tuple[Alarm, ...]], tuple[Alarm, ...] | str]
               ) -> tuple[Alarm, ...] | str:
        """Remove those `choose` picks (or return its complaint), and save."""
        with self._lock:
            chosen = choose(self._alarms)
            if not isinstance(chosen, str):
                ids = {alarm.id for alarm in chosen}
                self._replace(tuple(a for a in self._alarms if a.id not in ids))
            return chosen

    def remove(self, ids: tuple[str, ...]) -> None:
        """Those that came due: gone from the list and the file."""
        with self._lock:
            self._replace(tuple(a for a in self._alarms if a.id not in ids))

    def _replace(self, alarms: tuple[Alarm, ...]) -> None:
        # The list in memory changes even if the disk fails: they ring until a restart.
        self._alarms = alarms
        if self.path is None:
            return
        try:
            write_atomically(self.path, _serialise(alarms))
        except OSError as error:
            log.error("cannot save the timers and alarms to %s: %s; they are kept until "
                      "talkbox stops", self.path, error.strerror)


def _serialise(alarms: tuple[Alarm, ...]) -> bytes:
    return json.dumps({
        "version": FILE_VERSION,
        "alarms": [{"id": a.id, "kind": a.kind, "label": a.label, "due": a.due,
                    "due_local": a.due_local, "seconds": a.seconds} for a in alarms],
    }, indent=1).encode()


def _parse(data: bytes) -> tuple[Alarm, ...]:
    """The alarms in a file's bytes; ValueError saying what is wrong."""
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(document, dict) or document.get("version") != FILE_VERSION:
        raise ValueError(f"not a version {FILE_VERSION} talkbox alarms file")
    entries = document.get("alarms")
    if not isinstance(entries, list):
        raise ValueError('no "alarms" list')
    alarms = []
    for entry in entries:
        try:
            alarm = Alarm(
                id=_typed(entry["id"], str), kind=entry["kind"],
                label=_typed(entry["label"], str), due=float(_typed(entry["due"], float)),
                due_local=_typed(entry["due_local"], str),
                seconds=float(_typed(entry["seconds"], float)))
            dt.datetime.fromisoformat(alarm.due_local)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"an entry is not a timer or alarm: {str(entry)[:80]}") from None
        if alarm.kind not in ("timer", "alarm") or clean_label(alarm.label) != alarm.label:
            raise ValueError(f"an entry is not a timer or alarm: {str(entry)[:80]}")
        alarms.append(alarm)
    if len({alarm.id for alarm in alarms}) != len(alarms):
        raise ValueError("two entries have the same id")
    return tuple(alarms)


def _typed(value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise TypeError(f"expected {kind.__name__}")


# --- the tools the model calls ----------------------------------------------------------------

_LABEL = {"type": "string", "maxLength": MAX_LABEL_CHARS,
          "description": "A short name to tell it apart, e.g. \"pasta\"; \"\" for none."}

SET_TIMER = ToolDeclaration(
    name="set_timer",
    description=(
        "Start a timer that rings on the device after a duration, e.g. \"a 10 minute timer "
        "for the pasta\". Convert the duration to seconds. Read back what the result says."
    ),
    parameters={
        "type": "object",
        "properties": {
            "duration_seconds": {"type": "number", "minimum": 1,
                                 "maximum": MAX_TIMER_SECONDS,
                                 "description": "How long until it rings, in seconds."},
            "label": _LABEL,
        },
        "required": ["duration_seconds", "label"],
        "additionalProperties": False,
    },
)

SET_ALARM = ToolDeclaration(
    name="set_alarm",
    description=(
        "Set an alarm that rings on the device at a local wall-clock time, e.g. \"wake me at "
        "7\". Without a date it rings at the next such time. Read back what the result says."
    ),
    parameters={
        "type": "object",
        "properties": {
            "time": {"type": "string", "description": "24-hour local time, \"HH:MM\"."},
            "date": {"type": "string",
                     "description": "\"YYYY-MM-DD\", or \"\" for the next time it is that time."},
            "label": _LABEL,
        },
        "required": ["time", "date", "label"],
        "additionalProperties": False,
    },
)

LIST_TIMERS = ToolDeclaration(
    name="list_timers",
    description="The timers and alarms set on the device, with when each rings.",
    parameters=NO_ARGUMENTS,
)

CANCEL_TIMER = ToolDeclaration(
    name="cancel_timer",
    description=(
        "Cancel a timer or alarm by its id (from list_timers or when it was set) or by its "
        "label. With both \"\" and exactly one set, that one is cancelled."
    ),
    parameters={
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "Its id, or \"\"."},
            "label": {"type": "string", "description": "Its label, or \"\"."},
        },
        "required": ["id", "label"],
        "additionalProperties": False,
    },
)

DECLARATIONS = (SET_TIMER, SET_ALARM, LIST_TIMERS, CANCEL_TIMER)


def _error(message: str) -> str:
    return json.dumps({"error": message})


def _described(alarm: Alarm, now: dt.datetime) -> dict[str, Any]:
    return {"id": alarm.id, "kind": alarm.kind, "label": alarm.label,
            "rings": describe_due(alarm, now),
            "rings_at": dt.datetime.fromtimestamp(alarm.due, now.tzinfo).isoformat(
                timespec="seconds")}


class AlarmTools:
    """The four tools over one store; `now` gives the local time (tests fix it)."""

    def __init__(self, store: AlarmStore, now: Callable[[], dt.datetime] = local_now) -> None:
        self.store = store
        self.now = now

    def set_timer(self, arguments: dict[str, Any]) -> str:
        now = self.now()
        made = self.store.add(lambda pending: new_timer(
            arguments.get("duration_seconds"), arguments.get("label", ""), now, pending))
        return self._answer_set(made, now)

    def set_alarm(self, arguments: dict[str, Any]) -> str:
        now = self.now()
        made = self.store.add(lambda pending: new_alarm(
            arguments.get("time"), arguments.get("date"), arguments.get("label", ""), now,
            pending))
        return self._answer_set(made, now)

    def _answer_set(self, made: Alarm | str, now: dt.datetime) -> str:
        if isinstance(made, str):
            return _error(made)
        message = confirmation(made, now)
        log.info("%s (id %s)", safe_line(message), made.id)
        return json.dumps({"result": message, **_described(made, now)})

    def list_timers(self, _arguments: dict[str, Any]) -> str:
        now = self.now()
        pending = in_due_order(self.store.pending())
        return json.dumps({"now": now.strftime("%Y-%m-%d %H:%M"),
                           "pending": [_described(alarm, now) for alarm in pending]})

    def cancel_timer(self, arguments: dict[str, Any]) -> str:
        chosen = self.store.cancel(lambda pending: select(
            pending, arguments.get("id"), arguments.get("label")))
        if isinstance(chosen, str):
            return _error(chosen)
        names = ", ".join(alarm.name for alarm in chosen)
        log.info("cancelled %s", safe_line(names))
        return json.dumps({"result": f"cancelled {names}",
                           "cancelled": [alarm.id for alarm in chosen]})
