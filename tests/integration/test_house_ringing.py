"""A speaker of a house whose timer rings: "hey jarvis" said near it silences the ring at once,
whatever the other speakers heard, and its claim makes them stand down (no conversation
anywhere). Through the real Daemon with the house's arbiter joined, a fake speaker and no
service (the ring needs none)."""

from __future__ import annotations

import time

from support.fake_parts import FakeSpeaker
from support.inprocess import quick_daemon_config
from talkbox.core.alarms import Alarm
from talkbox.core.arbitration import BrokerChanged, Claim
from talkbox.core.inputs import AlarmsChanged, State
from talkbox.shell.app import Daemon


class NoFrontEnd:
    wake_enabled = False

    def process(self, captured: bytes) -> list[object]:
        return []


def never_opened(cfg: object) -> object:
    raise AssertionError("no session may be opened")


async def test_the_wake_word_silences_a_ring_at_once_and_the_house_stands_down() -> None:
    speaker = FakeSpeaker(lambda: None)
    daemon = Daemon(
        quick_daemon_config("wss://unused.example"),
        open_session=lambda cfg: never_opened,  # type: ignore[arg-type,return-value]
        speaker=speaker,
        front_end=NoFrontEnd(),  # type: ignore[arg-type]
    )
    published: list[Claim] = []
    daemon.join_house("kitchen", 0.15, published.append)
    daemon.arbitrate(BrokerChanged(connected=True))  # as the link says once it is up
    try:
        now = time.time()
        local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now - 1))
        due = Alarm("a1", "timer", "pasta", now - 1, local, 600.0)
        daemon.step(AlarmsChanged((due,), now))
        assert daemon.snapshot().ringing

        daemon.wake("hey_jarvis", b"\x10\x00" * 4800, 0.9)

        assert not daemon.snapshot().ringing, "the ring goes on while the house decides"
        assert daemon.snapshot().state is State.IDLE, "the wake word only stops the ring"
        assert [claim.kind for claim in published] == ["engaged"], published
    finally:
        await daemon.shutdown()
