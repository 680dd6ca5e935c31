"""How long the speaker still sounds after playback is told to pause or stop.

Speech barge-in's figure (start of speech -> speaker silent) is detection plus this: from
`Playback.hold()` or `flush()` until the last sound leaves the device. The callback hands
over silence from its next period on, but what it handed before is still in the device's
buffer and plays out. This runs talkbox's own `Playback` in this process on a sandbox sound
card built like the daemon's (ALSA file plugin -> FIFO, drained in real time by the tests'
`FifoDrainer`), plays a tone, pauses or stops it at a random moment, and finds the drainer's
last sound. On this harness the figure includes the FIFO's one page (one period) and the
drainer's 5 ms tick; on a sound card, that page is not there.

`python -m bench.speaker_stop [--period-ms 20] [--repetitions 20]` prints a table and
writes bench/results/speaker_stop.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from bench.timeline import percentile
from support.alsa import FifoDrainer, alsa_sandbox
from talkbox.audio.playback import Playback

RESULTS = Path(__file__).resolve().parent / "results" / "speaker_stop.json"
RATE = 24000


async def _measure(directory: Path, period_ms: int, repetitions: int) -> dict[str, list[float]]:
    tone = (np.sin(np.arange(2 * RATE) * 2 * np.pi * 440 / RATE) * 8000).astype("<i2").tobytes()
    rng = random.Random(0)
    after: dict[str, list[float]] = {"hold": [], "flush": []}
    with alsa_sandbox(directory, playback_fifo=True) as sandbox:
        drainer = FifoDrainer(sandbox.playback_path, rate=RATE)
        drainer.start()
        playback = Playback("speaker", RATE, source_rate=RATE,
                            period_frames=RATE * period_ms // 1000)
        try:
            playback.start()
            for index in range(repetitions * 2):
                how = "hold" if index % 2 == 0 else "flush"
                playback.write(tone)
                await asyncio.sleep(0.5 + rng.uniform(0.0, period_ms / 1000))
                told = time.monotonic()
                if how == "hold":
                    playback.hold()
                else:
                    playback.flush()
                await asyncio.sleep(0.4)
                after[how].append((drainer.sounding(told - 0.2)[-1] - told) * 1000)
                playback.resume()
                playback.flush()
                await asyncio.sleep(0.2)
        finally:
            playback.close()
            drainer.stop()
    return after


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.speaker_stop", description=__doc__)
    parser.add_argument("--period-ms", type=int, default=20,
                        help="the output stream's period (the daemon's: 20)")
    parser.add_argument("--repetitions", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="talkbox-speaker-stop-") as tmp:
        after = asyncio.run(_measure(Path(tmp), args.period_ms, args.repetitions))
    print(f"period {args.period_ms} ms: ms from hold()/flush() to the last sound")
    print("told     p50    p95    max")
    for how, ms in after.items():
        print(f"{how:6s} {percentile(ms, 0.5):5.1f}  {percentile(ms, 0.95):5.1f}  {max(ms):5.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"period_ms": args.period_ms, "after_ms": after}, indent=2)
                       + "\n")


if __name__ == "__main__":
    main()
