"""The one bounded reader for the files an owner points talkbox at."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from talkbox.owner_files import FileRefused, read_regular_file


def test_a_file_of_exactly_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100_000)
    assert read_regular_file(path, 100_000) == b"x" * 100_000


def test_one_byte_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100_001)
    with pytest.raises(FileRefused, match=r"^is larger than 100000 bytes$"):
        read_regular_file(path, 100_000)


def test_a_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"key")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_regular_file(tmp_path / "link", 10) == b"key"


def test_special_files_are_refused_before_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer ever: a blocking open would hang this test
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "sock"))
    try:
        cases = {
            fifo: "is a FIFO (named pipe), not a regular file",
            Path("/dev/zero"): "is a character device, not a regular file",
            tmp_path: "is a directory, not a regular file",
            tmp_path / "sock": "is a socket, not a regular file",
        }
        for path, message in cases.items():
            with pytest.raises(FileRefused) as refused:
                read_regular_file(path, 10)
            assert str(refused.value) == message
    finally:
        listening.close()


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing", 10)
