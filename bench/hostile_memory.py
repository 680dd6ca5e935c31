"""Resident memory of `talkbox run` while a service floods it with reply audio.

Usage (from the repository root): `python -m bench.hostile_memory [SCENARIO ...]`

Each scenario starts the real daemon on a file sound card (`support.daemon.run_daemon`), asks
the fake service one question in one breath, and has it answer with the scenario's audio:

- `huge`: 40 deltas of 9 MiB (12 MiB of base64 each), as fast as the socket takes them;
- `3mib`: 40 deltas of 3 MiB less 3 KiB, the most one 4 MiB message can carry;
- `tiny`: 10,000 deltas of 1 ms (48 bytes) a second for 10 s;
- `real`: an ordinary long answer, 60 s of audio streamed at 10 times real time (the fake
  service's default pace), to show what a real conversation costs.

It prints, in MiB: VmHWM of the start-up; VmRSS before the question (VmHWM is reset there);
VmHWM and VmRSS once the answer was taken in full or the conversation failed; VmRSS after
`talkbox ctl stop`; and the log line that ended the answer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from bench.daemon_bench import API_KEY, DEPLOYMENT, config_text
from support.daemon import run_daemon, wait_until
from support.fake_realtime import AudioFlood, FakeRealtimeServer
from support.procmem import read_memory, reset_peak
from support.service import serving
from support.speech import concat, silence, speak

MIB = 2**20
ENDINGS = ("answer completed", "conversation failed: ")
ANSWER_TIMEOUT_S = 180.0
# Fixed, not derived from today's message limit, so old and new code get the same flood.
LARGEST_DELTA_BYTES = 3 * MIB - 3 * 1024


@dataclass(frozen=True)
class Scenario:
    name: str
    arrange: Callable[[FakeRealtimeServer], None]


def _flood(delta_bytes: int, count: int, per_second: float | None = None
           ) -> Callable[[FakeRealtimeServer], None]:
    def arrange(server: FakeRealtimeServer) -> None:
        server.faults.audio_flood = AudioFlood(delta_bytes, count, per_second)
    return arrange


def _real_answer(server: FakeRealtimeServer) -> None:
    server.reply_duration_ms = 60_000


SCENARIOS = {
    "huge": Scenario("40 deltas of 9 MiB", _flood(9 * MIB, 40)),
    "3mib": Scenario("40 deltas of 3 MiB", _flood(LARGEST_DELTA_BYTES, 40)),
    "tiny": Scenario("10,000 x 1 ms deltas/s for 10 s", _flood(48, 100_000, 10_000.0)),
    "real": Scenario("a real 60 s answer", _real_answer),
}


def question() -> bytes:
    spoken = concat(speak("hey jarvis", rate=16000, pad=(0.0, 0.0)), silence(0.1),
                    speak("tell me a story", rate=16000, pad=(0.0, 0.0)))
    return bytes(concat(silence(2.0), spoken, silence(1.5)).tobytes())


def measure(scenario: Scenario) -> str:
    with serving(API_KEY, deployments={DEPLOYMENT}) as service, \
            tempfile.TemporaryDirectory(prefix="talkbox-hostile-") as tmp:
        scenario.arrange(service.server)
        config = config_text(service.url_base, follow_up_seconds=2.0)
        with run_daemon(Path(tmp), config, api_key=API_KEY) as run:
            run.wait_ready(timeout=60)
            pid = run.process.pid
            time.sleep(1.0)  # settle after start-up
            start_peak = read_memory(pid).hwm_mib
            reset_peak(pid)
            before = read_memory(pid)
            run.say(question())
            wait_until(lambda: any(e in run.log() for e in ENDINGS), ANSWER_TIMEOUT_S,
                       "the answer to be taken in or to fail")
            taken = read_memory(pid)
            run.ctl("stop")
            time.sleep(1.0)
            stopped = read_memory(pid)
            run.terminate(timeout=10)
            ending = next(line for line in run.log().splitlines()
                          if any(e in line for e in ENDINGS))
    return (f"{scenario.name:34} {start_peak:10.1f} {before.rss_mib:9.1f} {taken.hwm_mib:9.1f} "
            f"{taken.rss_mib:9.1f} {stopped.rss_mib:10.1f}  {ending[24:140]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")
    names = parser.parse_args(argv).scenarios or list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    print(f"{'scenario':34} {'start peak':>10} {'RSS MiB':>9} {'peak':>9} {'RSS then':>9} "
          f"{'RSS stop':>10}  ending")
    for name in names:
        print(measure(SCENARIOS[name]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
