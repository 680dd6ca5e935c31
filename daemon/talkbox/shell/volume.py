"""The speaker's volume as the daemon keeps it: one level in percent for everything talkbox
plays (the voice and the chimes), applied to the configured ALSA mixer control or, without
one, as a gain on the audio, and kept in a file under systemd's StateDirectory= so that a
restart or a reboot keeps it.

The file holds the level as text ("40\\n"); it is replaced atomically (a temporary file,
fsync, rename), so a power cut leaves the old level or the new one. A file that cannot be
read or holds no level costs one log line and the default; writing it may fail the same way.
Without a state directory (`talkbox run` outside systemd) the level lasts as long as the
process.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from talkbox.audio.mixer import AlsaMixer, MixerError
from talkbox.safe_text import safe_line
from talkbox.state_files import write_atomically
from talkbox.tools.volume import MAX_LEVEL, VolumeArgumentError, checked_level

log = logging.getLogger("talkbox")

VOLUME_FILE = "volume"
# Larger than any level file we write: anything bigger is not ours.
_MAX_FILE_BYTES = 64


def read_level(path: Path) -> int | None:
    """The level kept in `path`; None (and one log line, unless there is no file yet) if
    there is none to be had."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("cannot read the volume from %s (%s); using the default", path, error.strerror)
        return None
    try:
        if len(data) > _MAX_FILE_BYTES:
            raise VolumeArgumentError("the file is too large to be a level")
        return checked_level(int(data.decode("ascii").strip()))
    except (UnicodeDecodeError, ValueError) as error:
        reason = error if isinstance(error, VolumeArgumentError) else "it holds no level"
        log.warning("ignoring the volume in %s: %s; using the default", path,
                    safe_line(str(reason)))
        return None


def write_level(path: Path, level: int) -> None:
    """Keep `level` in `path` (atomically). OSError if that cannot be done."""
    write_atomically(path, f"{level}\n".encode())


class SpeakerVolume:
    """The level (0..100 %), where it is applied and where it is kept.

    `mixer`: the ALSA control to move, or None for software gain (`gain`). `path`: the file
    the level is kept in, or None. A mixer that fails at start is reported once and the
    software gain is used instead.
    """

    def __init__(self, mixer: AlsaMixer | None = None, path: Path | None = None) -> None:
        self.path = path
        self.mixer = mixer
        # Set from worker threads (a tool call, `talkbox ctl volume`), one at a time.
        self._lock = threading.Lock()
        kept = read_level(path) if path is not None else None
        self._level = MAX_LEVEL if kept is None else kept
        if mixer is not None:
            try:
                if kept is None:
                    self._level = mixer.get_percent()
                else:
                    mixer.set_percent(kept)
            except MixerError as error:
                log.error("%s; [audio] mixer_control (on mixer_device %r) is not used, talkbox "
                          "scales its own audio instead", error, mixer.device)
                self.mixer = None
                self._level = MAX_LEVEL if kept is None else kept
        log.info("volume %d %% (%s)", self._level, self.applied_by)

    @property
    def applied_by(self) -> str:
        return "software gain" if self.mixer is None else str(self.mixer)

    @property
    def level(self) -> int:
        return self._level

    @property
    def gain(self) -> float:
        """What talkbox multiplies its audio by: 1 when the mixer does the work."""
        return self._level / MAX_LEVEL if self.mixer is None else 1.0

    def set_level(self, level: int) -> int:
        """Apply and keep `level` (0..100); returns the level in force. MixerError if the
        mixer control cannot be moved (the level stays as it was)."""
        level = checked_level(level)
        with self._lock:
            if self.mixer is not None:
                self.mixer.set_percent(level)
            self._level = level
            log.info("volume %d %% (%s)", level, self.applied_by)
            if self.path is not None:
                try:
                    write_level(self.path, level)
                except OSError as error:
                    log.warning("cannot keep the volume across restarts in %s: %s", self.path,
                                error.strerror or error)
        return level
