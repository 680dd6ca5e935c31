"""What talkbox keeps across restarts and reboots (mute, volume, timers and alarms): where,
and how it is written.

Each is a small file in systemd's StateDirectory= (/var/lib/talkbox), replaced atomically:
written to a temporary file, fsync'ed, renamed over the old one, and the directory fsync'ed,
so a power cut leaves the old content or the new, never half of either.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def state_file(name: str) -> Path | None:
    """`name` in systemd's StateDirectory= (its first entry), or None outside systemd."""
    state_dir = os.environ.get("STATE_DIRECTORY", "")
    return Path(state_dir.split(":")[0]) / name if state_dir else None


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically. OSError if that cannot be done."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself must reach the disk too
    finally:
        os.close(directory)
