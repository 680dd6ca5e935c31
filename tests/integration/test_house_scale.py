"""Scale: 50 speakers of one house (5 processes x 10, each a real `HouseLink` and
`WakeArbiter`) on one real Mosquitto broker: every wake, exactly one answers, the best.

The default window (150 ms) is shorter than what 50 connections in five Python processes
take to hand each other their claims on a small machine: the check is that the rule holds
anyway (speakers that answered on part of the claims yield once the better one arrives), not
this machine's speed. bench/house_scale.py measures how often that happens, and the
broker's traffic."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from support.house_sim import (
    WAKE_TOPIC,
    answering,
    finish,
    level_of,
    names,
    send,
    start_workers,
    wake_order,
)
from support.mosquitto import broker as running_broker

pytestmark = pytest.mark.slow

PROCESSES, PER_PROCESS, WAKES = 5, 10, 4
WINDOW_S = 0.15


def test_fifty_speakers_on_one_broker_pick_exactly_one_the_loudest(tmp_path) -> None:
    with running_broker(tmp_path / "broker") as broker:
        workers = start_workers(broker.port, PROCESSES, PER_PROCESS, WINDOW_S)
        try:
            for wake in range(WAKES):
                asyncio.run(send(broker.port, WAKE_TOPIC, wake_order(wake, seed=wake)))
                time.sleep(WINDOW_S + 1.5)  # decided, and past the same-phrase time
        finally:
            decisions = finish(broker.port, workers)
    speakers = [name for group in names(PROCESSES, PER_PROCESS) for name in group]
    by_wake = defaultdict(list)
    for decision in decisions:
        by_wake[decision.wake].append(decision)
    assert sorted(by_wake) == list(range(WAKES))
    for wake, made in by_wake.items():
        decided = sorted({d.speaker for d in made})
        assert decided == sorted(speakers), f"wake {wake}: not all decided"
        loudest = max(speakers, key=lambda name: (level_of(wake, name), [-ord(c) for c in name]))
        assert answering(decisions, wake) == [loudest], f"wake {wake}"
