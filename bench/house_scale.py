"""A house of many speakers on one broker (issue 16): does each wake still get exactly one
answer within the default window, how many claims make it into the window, and what one wake
costs the broker.

`tests/support/house_sim.py` runs the speakers: `--processes` worker processes of
`--per-process` speakers each, every one a real `HouseLink` (its own connection) and a
`WakeArbiter`, against a real Mosquitto on loopback. Every speaker claims every wake, at a
level drawn from the wake and its name: the worst case, all of them hearing it.

The traffic of one wake: a subscriber on the claims topic counts the claims and their payload
bytes; Mosquitto's $SYS counters (sys_interval 1 s) count every message and byte in and out,
headers included, from just before a wake to after it, less what the same time costs the
broker with no wake (its $SYS updates to this monitor, keep-alives).

`python -m bench.house_scale [--processes 5 --per-process 10 --wakes 10 --window-ms 150]`
prints a table and writes bench/results/house_scale.json (about 40 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import aiomqtt

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from support.house_sim import (
    WAKE_TOPIC,
    answering,
    finish,
    level_of,
    names,
    start_workers,
    wake_order,
)
from support.mosquitto import Broker
from talkbox.mqtt.topics import CLAIMS_TOPIC

RESULTS = Path(__file__).resolve().parent / "results" / "house_scale.json"
COUNTERS = ("messages/received", "messages/sent", "bytes/received", "bytes/sent")
SETTLE_S = 1.5  # after a wake: every window ended, the last $SYS update after it
IDLE_S = 3.0


class Monitor:
    """The broker's $SYS counters and the claims on the wire, as they arrive."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.updated = asyncio.Event()
        self.claims: list[tuple[float, int]] = []  # (arrival, payload bytes)

    async def run(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload
            if topic == CLAIMS_TOPIC and isinstance(payload, bytes | bytearray):
                self.claims.append((time.monotonic(), len(payload)))
            elif topic.startswith("$SYS/broker/") and isinstance(payload, bytes | bytearray):
                self.counters[topic.removeprefix("$SYS/broker/")] = int(payload)
                if all(name in self.counters for name in COUNTERS):
                    self.updated.set()

    async def fresh(self) -> tuple[float, dict[str, int]]:
        """The counters after the next $SYS update (Mosquitto sends, each second, those that
        changed; the others keep their last value)."""
        self.updated.clear()
        await self.updated.wait()
        await asyncio.sleep(0.1)  # the rest of the same update
        return time.monotonic(), dict(self.counters)


async def measure(port: int, wakes: int, window_s: float) -> dict[str, object]:
    monitor = Monitor()
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-monitor") as client:
        for name in COUNTERS:
            await client.subscribe(f"$SYS/broker/{name}")
        await client.subscribe(CLAIMS_TOPIC)
        reader = asyncio.create_task(monitor.run(client))
        # The broker's own cost of time with no wake, once the start-up traffic is over.
        await asyncio.sleep(IDLE_S)
        t0, c0 = await monitor.fresh()
        await asyncio.sleep(IDLE_S)
        t1, c1 = await monitor.fresh()
        idle_rate = {name: (c1[name] - c0[name]) / (t1 - t0) for name in COUNTERS}
        per_wake: list[dict[str, float]] = []
        claims_per_wake: list[tuple[int, int]] = []
        claim_spread_ms: list[float] = []
        for wake in range(wakes):
            t0, c0 = await monitor.fresh()
            seen = len(monitor.claims)
            sent = time.monotonic()
            await client.publish(WAKE_TOPIC, wake_order(wake, seed=wake), qos=1)
            await asyncio.sleep(window_s + SETTLE_S)
            t1, c1 = await monitor.fresh()
            # Less the idle cost and the wake order itself (in once, out to every worker).
            per_wake.append({name: c1[name] - c0[name] - idle_rate[name] * (t1 - t0)
                             for name in COUNTERS})
            these = monitor.claims[seen:]
            claims_per_wake.append((len(these), sum(size for _, size in these)))
            claim_spread_ms.append((max(at for at, _ in these) - sent) * 1000)
        reader.cancel()
    return {"idle_rate": idle_rate, "per_wake": per_wake, "claims": claims_per_wake,
            "last_claim_ms": claim_spread_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--per-process", type=int, default=10)
    parser.add_argument("--wakes", type=int, default=10)
    parser.add_argument("--window-ms", type=int, default=150)
    args = parser.parse_args()
    window_s = args.window_ms / 1000
    speakers = [n for group in names(args.processes, args.per_process) for n in group]
    with tempfile.TemporaryDirectory() as directory:
        broker = Broker(Path(directory), sys_interval=1)
        broker.start()
        try:
            workers = start_workers(broker.port, args.processes, args.per_process, window_s)
            try:
                traffic = asyncio.run(measure(broker.port, args.wakes, window_s))
            finally:
                decisions = finish(broker.port, workers)
        finally:
            broker.stop()

    by_wake = defaultdict(list)
    for decision in decisions:
        by_wake[decision.wake].append(decision)
    answered_at_first = Counter(d.wake for d in decisions if d.answered)
    yields = Counter(d.wake for d in decisions if d.yielded)
    final = {w: answering(decisions, w) for w in range(args.wakes)}
    exactly_one = sum(len(final[w]) == 1 for w in range(args.wakes))
    loudest = {w: max(speakers, key=lambda n: (level_of(w, n), [-ord(c) for c in n]))
               for w in range(args.wakes)}
    best_won = sum(final[w] == [loudest[w]] for w in range(args.wakes))
    in_window = [d.claims_seen for d in decisions if d.answered]
    per_wake = traffic["per_wake"]
    assert isinstance(per_wake, list)
    median = {name: statistics.median(w[name] for w in per_wake) for name in COUNTERS}
    claims = traffic["claims"]
    last_ms = traffic["last_claim_ms"]
    assert isinstance(claims, list) and isinstance(last_ms, list)
    n = len(speakers)
    print(f"{n} speakers in {args.processes} processes, window {args.window_ms} ms, "
          f"{args.wakes} wakes")
    print(f"exactly one answered        {exactly_one}/{args.wakes} (after the yields)")
    false_starts = [answered_at_first[w] - 1 for w in range(args.wakes)]
    print(f"false starts (yielded)      {sum(yields.values())} in all, at most "
          f"{max(false_starts)} in one wake")
    print(f"the loudest answered        {best_won}/{args.wakes}")
    print(f"claims in the winner's round median {statistics.median(in_window or [0]):.0f} of {n}")
    print(f"last claim at the monitor   median {statistics.median(last_ms):.0f} ms, "
          f"max {max(last_ms):.0f} ms after the wake order")
    print(f"claims published per wake   {statistics.median(c for c, _ in claims):.0f} "
          f"({statistics.median(b for _, b in claims):.0f} payload bytes)")
    print("broker per wake ($SYS, median, idle subtracted):")
    for name in COUNTERS:
        print(f"  {name:20} {median[name]:9.0f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "speakers": n, "processes": args.processes, "window_ms": args.window_ms,
        "wakes": args.wakes, "exactly_one": exactly_one, "loudest_answered": best_won,
        "yields": sum(yields.values()), "answered_at_first": [answered_at_first[w] for w in
                                                             range(args.wakes)],
        "claims_in_winner_round": in_window, "median_per_wake": median, **traffic,
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
