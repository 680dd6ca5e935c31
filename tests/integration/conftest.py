"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemon import NotifyListener


@pytest.fixture
def notify_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    """systemd's notify socket for a `Service` run in-process, with a 0.6 s watchdog."""
    listener = NotifyListener(tmp_path / "notify.sock")
    listener.start()
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # a ping every 0.2 s while deserved
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield listener
    finally:
        listener.stop()
