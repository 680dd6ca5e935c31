"""Many simulated speakers of one house on a real broker, spread over several processes.

Each speaker is the part of a talkbox that takes part in arbitration, as the daemon builds it:
a real `HouseLink` (its own MQTT connection, discovery, last will) and a `WakeArbiter`, whose
actions are carried out as `Daemon.arbitrate` does (a claim published on the link, the window
a timer on the event loop). Everything else of the daemon is left out: no audio, no session.

`run_house` starts `processes` worker processes (`python -m support.house_sim`) of
`per_process` speakers each, waits until every link is connected, then sends wakes: each
wake is one message on `WAKE_TOPIC` that every worker receives, and at which every one of its
speakers claims the wake at a level drawn from the wake's seed and its name (`level_of`), as
if all of them had heard the same phrase. Each worker reports, per wake, which of its
speakers answered and which stood down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WAKE_TOPIC = "bench/house/wake"
QUIT_TOPIC = "bench/house/quit"
TESTS = Path(__file__).resolve().parent.parent


def level_of(seed: int, speaker: str) -> float:
    """The level (dBFS, to 0.1 dB) `speaker` heard wake `seed` at."""
    return round(random.Random(f"{seed}:{speaker}").uniform(-60.0, -20.0), 1)


def names(processes: int, per_process: int) -> list[list[str]]:
    return [[f"s{p:02d}x{i:02d}" for i in range(per_process)] for p in range(processes)]


@dataclass(frozen=True)
class Decision:
    wake: int
    speaker: str
    answered: bool  # False: stood down, or (yielded) stopped after answering
    claims_seen: int  # the claims in its round (its own included), when it answered
    yielded: bool = False


def answering(decisions: list[Decision], wake: int) -> list[str]:
    """Who answers `wake` in the end: answered, and did not yield after."""
    made = [d for d in decisions if d.wake == wake]
    yielded = {d.speaker for d in made if d.yielded}
    return sorted(d.speaker for d in made if d.answered and d.speaker not in yielded)


class SimulatedSpeaker:
    """One speaker: a `HouseLink` and a `WakeArbiter`, wired as shell/house.py and
    `Daemon.arbitrate` wire them."""

    def __init__(self, port: int, name: str, window_s: float, record: list[Decision]) -> None:
        from talkbox.config import MqttConfig
        from talkbox.core.arbitration import BrokerChanged, PeerClaimed, WakeArbiter
        from talkbox.mqtt.link import HouseLink, PeerClaim

        self.name = name
        self.record = record
        self.wake_number = -1
        self.arbiter = WakeArbiter(name, window_s)

        def on_message(message: object) -> None:
            if isinstance(message, PeerClaim):
                self.step(PeerClaimed(message.claim))

        self.link = HouseLink(
            MqttConfig(enabled=True, host="127.0.0.1", port=port, device=name),
            None,
            version="0.0.0",
            on_message=on_message,  # type: ignore[arg-type]
            on_connected=lambda connected: self.step(BrokerChanged(connected)),
        )

    def step(self, event: Any) -> None:
        from talkbox.core.arbitration import (
            Answered,
            PublishClaim,
            StartWindow,
            StoodDown,
            WindowEnded,
            Yielded,
        )

        for action in self.arbiter.step(event, time.monotonic()):
            if isinstance(action, PublishClaim):
                self.link.publish_claim(action.claim)
            elif isinstance(action, StartWindow):
                ended = WindowEnded(action.subject, action.token)
                asyncio.get_running_loop().call_later(action.seconds, self.step, ended)
            elif isinstance(action, Answered):
                self.record.append(
                    Decision(self.wake_number, self.name, True, len(action.rivals) + 1)
                )
            elif isinstance(action, StoodDown):
                self.record.append(Decision(self.wake_number, self.name, False, 0))
            elif isinstance(action, Yielded):
                self.record.append(Decision(self.wake_number, self.name, False, 0, True))

    def wake(self, number: int, seed: int) -> None:
        from talkbox.core.arbitration import WAKE, Claim, OwnClaim
        from talkbox.core.inputs import WakeWord

        self.wake_number = number
        claim = Claim(self.name, WAKE, "heard", level_of(seed, self.name), 0.9)
        self.step(OwnClaim(claim, WakeWord()))


async def worker(port: int, speaker_names: list[str], window_s: float) -> None:
    """A worker process: its speakers, until QUIT_TOPIC; prints its decisions as JSON."""
    import aiomqtt

    record: list[Decision] = []
    speakers = [SimulatedSpeaker(port, name, window_s, record) for name in speaker_names]
    tasks = [asyncio.create_task(s.link.run()) for s in speakers]
    control_id = f"control-{speaker_names[0]}"
    async with aiomqtt.Client("127.0.0.1", port, identifier=control_id) as control:
        await control.subscribe(WAKE_TOPIC, qos=1)
        await control.subscribe(QUIT_TOPIC, qos=1)
        while not all(s.link.connected for s in speakers):
            await asyncio.sleep(0.02)
        print(json.dumps({"ready": len(speakers)}), flush=True)
        async for message in control.messages:
            if str(message.topic) == QUIT_TOPIC:
                break
            assert isinstance(message.payload, bytes | bytearray)
            order = json.loads(message.payload)
            for speaker in speakers:
                speaker.wake(order["wake"], order["seed"])
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=3)
    print(json.dumps({"decisions": [d.__dict__ for d in record]}), flush=True)


def start_workers(port: int, processes: int, per_process: int,
                  window_s: float) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    workers = []
    for group in names(processes, per_process):
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "support.house_sim", "--port", str(port), "--window",
             str(window_s), *group],
            stdout=subprocess.PIPE, text=True, env=env,
        ))
    for process in workers:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith('{"ready"'):
            raise RuntimeError(f"a worker did not start: {line!r}")
    return workers


async def send(port: int, topic: str, payload: bytes) -> None:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier="house-sim-control") as client:
        await client.publish(topic, payload, qos=1)


def finish(port: int, workers: list[subprocess.Popen[str]]) -> list[Decision]:
    asyncio.run(send(port, QUIT_TOPIC, b"quit"))
    decisions = []
    for process in workers:
        out, _ = process.communicate(timeout=30)
        for line in out.splitlines():
            if line.startswith('{"decisions"'):
                decisions += [Decision(**d) for d in json.loads(line)["decisions"]]
    return decisions


def wake_order(number: int, seed: int) -> bytes:
    return json.dumps({"wake": number, "seed": seed}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description="one worker of simulated speakers")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--window", type=float, required=True)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    asyncio.run(worker(args.port, args.names, args.window))


if __name__ == "__main__":
    main()
