"""Everything talkbox says to systemd: sd_notify, the watchdog, and logging to journald.

Owns:
- `Notifier`: READY/STATUS/WATCHDOG/RELOADING/STOPPING through `systemd.daemon.notify`, and the
  watchdog interval systemd asked for. Outside systemd (no NOTIFY_SOCKET, or systemd-python not
  importable) every call is a no-op that returns False.
- `WatchdogGate`: pure decision whether a watchdog ping is deserved — only while the capture
  stream keeps delivering audio, so a stalled microphone makes systemd restart the daemon.
- `setup_logging`: journald with structured fields when stderr is connected to the journal,
  readable `key=value` lines on stderr otherwise. Both mask the API key in every line and
  field (`safe_text.redact_secrets`), whatever put it there.
- `systemd_is_running`: whether this machine was booted with systemd (so `systemctl` works).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from talkbox.safe_text import redact_secrets

# Named as before the shell became a package: owners' log filters match these names.
_log = logging.getLogger("talkbox.systemd")

# sd_booted(3): this directory exists exactly when systemd is the running init system.
SYSTEMD_RUNTIME_DIRECTORY = Path("/run/systemd/system")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SYSLOG_IDENTIFIER = "talkbox"

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}

# journald accepts only these field names (sd_journal_sendv drops the rest silently); a
# leading underscore is reserved for fields journald adds itself.
_JOURNAL_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# Fields our journal handler fills in itself; an `extra=` with one of these names is dropped
# instead of clobbering it (systemd-python 235 would raise "multiple values for keyword").
_RESERVED_JOURNAL_FIELDS = frozenset(
    {
        "MESSAGE",
        "MESSAGE_ID",
        "PRIORITY",
        "LOGGER",
        "THREAD_NAME",
        "PROCESS_NAME",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "SYSLOG_IDENTIFIER",
    }
)


def systemd_is_running() -> bool:
    """Whether systemd runs this machine (not a chroot, a container without it, ...)."""
    return SYSTEMD_RUNTIME_DIRECTORY.is_dir()


def _import_systemd(submodule: str) -> Any:
    # By name, because the repository's unit-file folder `systemd/` would otherwise shadow
    # systemd-python for mypy, which looks in the working directory first.
    return importlib.import_module(f"systemd.{submodule}")


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """sd_notify for the daemon. Every method returns True when systemd got the message.

    `enabled` is True when NOTIFY_SOCKET is set and systemd-python is importable; otherwise
    all methods do nothing. Messages are sent by libsystemd's sd_notify, which reads
    NOTIFY_SOCKET itself at each call.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        monotonic_usec: Callable[[], int] = _monotonic_usec,
    ) -> None:
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._monotonic_usec = monotonic_usec
        self._send: Callable[[str], bool] | None = None
        if self._environ.get("NOTIFY_SOCKET"):
            try:
                daemon = _import_systemd("daemon")
            except ImportError:
                _log.warning(
                    "NOTIFY_SOCKET is set but systemd-python is not installed; "
                    "systemd will not hear that talkbox is ready"
                )
            else:
                self._send = daemon.notify

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def _notify(self, message: str) -> bool:
        if self._send is None:
            return False
        try:
            return bool(self._send(message))
        except OSError as error:
            # A vanished notify socket must not take the daemon down with it.
            _log.debug("sd_notify failed: %s", error)
            return False

    def ready(self) -> bool:
        """Start-up (or a reload) is complete."""
        return self._notify("READY=1")

    def status(self, text: str) -> bool:
        """One line for `systemctl status`."""
        return self._notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """Tell systemd we are alive; call it more often than `watchdog_interval()`."""
        return self._notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload has begun; send `ready()` when it is done.

        MONOTONIC_USEC goes in the same message: systemd 253+ (Type=notify-reload) requires it
        to match the reload to this message; older versions ignore the field.
        """
        return self._notify(f"RELOADING=1\nMONOTONIC_USEC={self._monotonic_usec()}")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self._notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds within which systemd expects WATCHDOG=1, or None when it expects none.

        WATCHDOG_PID, when set, names the process the watchdog is meant for; a child that
        merely inherited the environment must not ping.
        """
        raw_usec = self._environ.get("WATCHDOG_USEC", "")
        if not raw_usec.isdigit() or int(raw_usec) == 0:
            return None
        watchdog_pid = self._environ.get("WATCHDOG_PID", "")
        if watchdog_pid and watchdog_pid != str(os.getpid()):
            return None
        return int(raw_usec) / 1_000_000


class WatchdogGate:
    """Decides whether the daemon deserves a watchdog ping. Pure: time is an argument.

    `feed_seen(now)` is called whenever capture delivers audio; `should_ping(now)` is True
    only if audio arrived within the last `max_silence_seconds`. The construction time counts
    as a delivery, which gives the capture stream that long to start.
    """

    def __init__(self, max_silence_seconds: float, started_at: float) -> None:
        if max_silence_seconds <= 0:
            raise ValueError("max_silence_seconds must be positive")
        self.max_silence_seconds = max_silence_seconds
        self._last_audio_at = started_at

    def feed_seen(self, now: float) -> None:
        # Out-of-order timestamps (two threads reporting) must not move the mark backwards.
        self._last_audio_at = max(self._last_audio_at, now)

    def should_ping(self, now: float) -> bool:
        return now - self._last_audio_at <= self.max_silence_seconds


# --- logging ----------------------------------------------------------------------------


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller attached with `extra=`, in the order given."""
    return {
        name: value
        for name, value in record.__dict__.items()
        if name not in _STANDARD_RECORD_ATTRIBUTES and not name.startswith("_")
    }


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(char.isspace() or char in '"=' for char in text):
        # Quote so that `key=value` pairs stay splittable by whitespace.
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class PlainFormatter(logging.Formatter):
    """`2024-05-01 12:00:00.123 INFO talkbox.app: message KEY=value ...` on one line.

    The API key is masked in the whole line, traceback included.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        line = (
            f"{stamp}.{int(record.msecs):03d} {record.levelname} {record.name}: "
            f"{record.getMessage()}"
        )
        extras = record_extras(record)
        if extras:
            line += " " + " ".join(f"{key}={_format_value(v)}" for key, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact_secrets(line)


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """The `extra=` fields of a record that journald will store as fields of their own.

    systemd-python 235's JournalHandler passes the whole `record.__dict__` along: lowercase
    attributes (msg, args, levelname, ...) are silently dropped by journald as invalid field
    names, and an extra named like one of the handler's own fields (PRIORITY, LOGGER, ...)
    raises TypeError inside emit(). So only valid, non-reserved names go through, as text.
    """
    return {
        name: redact_secrets(str(value))
        for name, value in record_extras(record).items()
        if _JOURNAL_FIELD_NAME.fullmatch(name) and name not in _RESERVED_JOURNAL_FIELDS
    }


def _journal_handler_class() -> type[logging.Handler] | None:
    try:
        journal_handler_base: Any = _import_systemd("journal").JournalHandler
    except ImportError:
        return None

    class JournalFieldsHandler(journal_handler_base):  # type: ignore[misc]  # base is Any
        """JournalHandler that sends `extra=` fields as journal fields, and nothing else;
        the API key is masked in the message and in every field."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                fields = dict(self._extra)
                fields.update(journal_fields(record))
                self.send(
                    redact_secrets(self.format(record)),
                    PRIORITY=format(self.map_priority(record.levelno)),
                    LOGGER=record.name,
                    THREAD_NAME=str(record.threadName),
                    PROCESS_NAME=str(record.processName),
                    CODE_FILE=record.pathname,
                    CODE_LINE=record.lineno,
                    CODE_FUNC=record.funcName,
                    **fields,
                )
            except Exception:
                self.handleError(record)

    return JournalFieldsHandler


def journal_handler(sender: Callable[..., Any] | None = None) -> logging.Handler | None:
    """A journald handler (None without systemd-python). `sender` replaces journal.send."""
    handler_class = _journal_handler_class()
    if handler_class is None:
        return None
    kwargs: dict[str, Any] = {"SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER}
    if sender is not None:
        kwargs["sender_function"] = sender
    handler = handler_class(**kwargs)
    # journald stamps time, priority and logger itself; a traceback stays in MESSAGE, where
    # `journalctl -u talkbox` shows it.
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def stderr_is_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    """True when `stream` is the journal stream systemd connected (JOURNAL_STREAM=dev:ino).

    Comparing device and inode, as systemd.exec(5) advises, keeps a shell started from a
    service (which inherits JOURNAL_STREAM) from logging to the journal behind the user's back.
    """
    expected = environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


_installed_handler: logging.Handler | None = None


def setup_logging(
    level: str,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route the root logger to journald under systemd, else to one-line text on stderr.

    `level` is one of LOG_LEVELS (any case). Callers attach structured fields with
    `extra={"TALKBOX_STATE": ..., "CONVERSATION_ID": ...}`: under journald they become journal
    fields (see `journal_fields`), on stderr they are appended as KEY=value. Calling it again
    replaces the handler it installed before. Returns the handler in use.
    """
    global _installed_handler
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    environ = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream

    handler: logging.Handler | None = None
    if stderr_is_journal(environ, stream):
        handler = journal_handler()
    if handler is None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PlainFormatter())

    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
        _installed_handler.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    _installed_handler = handler
    return handler
