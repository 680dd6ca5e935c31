"""Reading the files an owner points talkbox at (the config file, the API key file).

One bounded reader for all of them: only a regular file is read, and at most `limit` bytes
of it. A FIFO, a device (a symlink to /dev/zero), a socket or a directory is refused before
a single byte is read, so a wrong path can neither hang talkbox nor fill its memory.
`check_regular_file` applies the same rules to a file that a library opens itself (a wake
word model).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_READ_CHUNK = 65536


class FileRefused(Exception):
    """The path names something other than a regular file of acceptable size.

    The message says what it is, fit to follow the file's name.
    """


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def check_regular_file(path: Path, limit: int) -> None:
    """Refuse (FileRefused) what `read_regular_file` would refuse, without reading it.

    For files another library opens by path; OSError when the path cannot be looked at.
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(f"is {_kind_of(info.st_mode)}, not a regular file")
    if info.st_size > limit:
        raise FileRefused(f"is larger than {limit} bytes")


def read_regular_file(path: Path, limit: int) -> bytes:
    """The content of the regular file at `path` (symlinks followed), at most `limit` bytes.

    Raises FileRefused for anything that is not a regular file or is larger than `limit`,
    and OSError (FileNotFoundError, PermissionError, ...) when it cannot be opened.
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        # A unix socket cannot be opened at all (ENXIO, "No such device or address"):
        # say what it is instead.
        if error.errno == errno.ENXIO and stat.S_ISSOCK(os.stat(path).st_mode):
            raise FileRefused(f"is {_kind_of(stat.S_IFSOCK)}, not a regular file") from None
        raise
    try:
        # fstat of the opened file, not stat of the path: the path may change in between.
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileRefused(f"is {_kind_of(mode)}, not a regular file")
        chunks = bytearray()
        # Read one byte past the limit: the size in the inode can lie (a file still growing).
        while len(chunks) <= limit:
            chunk = os.read(fd, min(_READ_CHUNK, limit + 1 - len(chunks)))
            if not chunk:
                break
            chunks += chunk
    finally:
        os.close(fd)
    if len(chunks) > limit:
        raise FileRefused(f"is larger than {limit} bytes")
    return bytes(chunks)
