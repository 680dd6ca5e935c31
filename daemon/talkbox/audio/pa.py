"""Opening PyAudio quietly and turning its errors into talkbox's own.

This module owns the boundary to PortAudio shared by capture, playback and device listing:

- `create_pyaudio()` (and the context manager `open_pyaudio()`) makes a `pyaudio.PyAudio`
  without the stderr noise its device probe causes: libjack complains that no JACK server
  runs (we never use JACK), and a stock ALSA config reports every PCM it cannot open.
  JACK's messages are dropped; ALSA's go to this module's logger at DEBUG, so they are
  still there when someone asks for them.
- `device_error()` translates PortAudio's OSError into an `AudioDeviceError` that names the
  device and the config key to check.
- `ThrottledWarning` logs events that can repeat every audio period (overflows, underruns)
  at most once per interval, with a count of what it did not log.

PortAudio enumerates devices once per `Pa_Initialize`, and initialisation is reference
counted: while any PyAudio instance is alive, a new one sees the old device list. ALSA itself
re-reads its configuration whenever `ALSA_CONFIG_PATH` or the files' times change.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyaudio

from talkbox.audio.devices import CHECK_SOUND_CARD, DeviceKind
from talkbox.errors import AudioDeviceError

log = logging.getLogger(__name__)

# void handler(const char *file, int line, const char *function, int err, const char *fmt, ...)
# Only the fixed arguments are read; on Linux ABIs they are passed as for a plain function.
# use_errno=True makes ctypes restore errno after the Python handler runs: ALSA reports with
# SYSERR() and then returns -errno, so a handler that clobbers errno turns a failed open into
# a "success" on freed memory (seen: a segfault in snd_pcm_open for a missing capture file).
_ALSA_ERROR_HANDLER = ctypes.CFUNCTYPE(
    None,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    use_errno=True,
)
_JACK_MESSAGE_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, use_errno=True)

_install_lock = threading.Lock()
_installed = False
# The C libraries keep raw pointers to these; they must live as long as the process.
_keep_alive: list[Any] = []


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def _log_alsa_error(
    file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None
) -> None:
    # The variadic arguments are out of reach from ctypes, so the format string is logged as is.
    log.debug("ALSA: %s (%s:%d %s, err %d)", _text(fmt), _text(file), line, _text(function), err)


def _ignore_jack_message(message: bytes | None) -> None:
    """JACK is never used; its 'server is not running' chatter is not worth a log line."""


def _load(library: str) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(library)
    except OSError:
        return None


def _install_quiet_handlers() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
        asound = _load("libasound.so.2")
        if asound is not None:
            alsa_handler = _ALSA_ERROR_HANDLER(_log_alsa_error)
            _keep_alive.append(alsa_handler)
            asound.snd_lib_error_set_handler(alsa_handler)
            # ALSA may report from an audio thread; never call into a finalising interpreter.
            atexit.register(asound.snd_lib_error_set_handler, None)
        jack = _load("libjack.so.0")
        if jack is not None:
            jack_handler = _JACK_MESSAGE_HANDLER(_ignore_jack_message)
            _keep_alive.append(jack_handler)
            jack.jack_set_error_function(jack_handler)
            jack.jack_set_info_function(jack_handler)


def create_pyaudio() -> Any:
    """A new `pyaudio.PyAudio`, probed without noise; the caller must `.terminate()` it."""
    _install_quiet_handlers()
    try:
        return pyaudio.PyAudio()
    except OSError as exc:
        raise AudioDeviceError(f"PortAudio could not start: {describe_os_error(exc)}") from exc


@contextmanager
def open_pyaudio() -> Iterator[Any]:
    """`with open_pyaudio() as pa:` a quiet `pyaudio.PyAudio`, terminated on the way out."""
    pa = create_pyaudio()
    try:
        yield pa
    finally:
        pa.terminate()


def describe_os_error(exc: OSError) -> str:
    """PortAudio's message and code from the OSError PyAudio raises (args: code, message)."""
    if len(exc.args) == 2 and isinstance(exc.args[0], int):
        code, message = exc.args
        return f"{message} (PortAudio error {code})"
    return str(exc)


def device_error(exc: OSError, kind: DeviceKind, device: str, rate: int) -> AudioDeviceError:
    """An AudioDeviceError for `kind` device `device` failing to open at `rate` Hz.

    The rate is named as the cause only when PortAudio says the rate was refused: with no
    device to open at all, a rate hint sends the owner looking in the wrong place.
    """
    what = f"{kind} device {device!r}"
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code == pyaudio.paInvalidSampleRate:
        action = "capture" if kind == "input" else "play"
        return AudioDeviceError(
            f"{what}: cannot {action} at {rate} Hz: {describe_os_error(exc)}; "
            f"check audio.{kind}_device and audio.{kind}_rate (see `talkbox devices`)"
        )
    if code == pyaudio.paInvalidDevice:
        return AudioDeviceError(
            f"{what}: PortAudio has no such {kind} device: {describe_os_error(exc)}; "
            f"check audio.{kind}_device (see `talkbox devices`); {CHECK_SOUND_CARD}"
        )
    return AudioDeviceError(
        f"{what}: cannot open it: {describe_os_error(exc)}; "
        f"check audio.{kind}_device (see `talkbox devices`)"
    )


class ThrottledWarning:
    """Log a repeating warning at most once per `interval_s`, reporting how many were held back.

    Call `note()` from one thread at a time, never from an audio callback.
    """

    def __init__(self, logger: logging.Logger, message: str, interval_s: float = 10.0) -> None:
        self._logger = logger
        self._message = message
        self._interval_s = interval_s
        self._last_logged: float | None = None
        self._suppressed = 0

    def note(self, total: int, now: float | None = None) -> None:
        """Record one more occurrence; `total` is the running count shown in the message."""
        now = time.monotonic() if now is None else now
        if self._last_logged is not None and now - self._last_logged < self._interval_s:
            self._suppressed += 1
            return
        self._logger.warning(
            "%s (total %d, %d more since the last report)", self._message, total, self._suppressed
        )
        self._last_logged = now
        self._suppressed = 0


def release(stream: Any, pa: Any, what: str) -> None:
    """Close `stream` (if any) and terminate `pa` (if any); `what` names the device in logs.

    A vanished device may fail to close; it is released anyway.
    """
    try:
        if stream is not None:
            stream.close()
    except OSError as exc:
        log.warning("closing %s: %s", what, describe_os_error(exc))
    finally:
        if pa is not None:
            pa.terminate()
