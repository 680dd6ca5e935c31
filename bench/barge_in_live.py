"""Speech barge-in through the whole `talkbox run` process: real PyAudio over ALSA file devices,
the fake Realtime service, and support.room's room between the speaker and the microphone.

Two measurements, each in several rooms at once (one daemon per room):

- self-interruptions: a long answer plays and nobody talks; every "interrupted" is false;
- interruptions: a person asks, then talks over each answer 1.5-3.5 s into it with another
  request, `--per-room` times. Heard: the daemon logged "interrupted" within 1.5 s of the
  person's first sample. Silent after: from that first sample to the speaker's last sound
  (as the drain took it, so the output buffer is included). Uploaded whole: the request's
  voiced samples found in what was committed for it. A request that is not heard ends its
  room's round (the answer it should have stopped plays on): it counts as not heard.
  Each daemon is new, so its first interruptions come while its echo canceller still learns
  the room (its first WARM_UP_S of sound, counted from what the speaker played): the table
  shows those apart from the ones after, which are a device that has been running.

bench.echo_room runs the same front end in the same rooms faster than real time, on simulated
stamps; this one pays for the real devices' timestamps, the event loop and the machine's load.
The fake service streams replies at `PACE` times real time.
`python -m bench.barge_in_live` prints a table and writes bench/results/barge_in_live.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from bench.daemon_bench import API_KEY, DEPLOYMENT, config_text, wall_minus_monotonic
from bench.timeline import log_stamps, percentile, wall_to_monotonic
from support.audio_match import uploaded_share
from support.daemon import DaemonRun, LiveMicrophone, run_daemon, wait_until
from support.fake_realtime import ServerThread
from support.room import (
    INTERRUPTING_REQUESTS,
    MIC_RATE,
    ROOMS,
    SPEAKER_RATE,
    long_answer,
    person,
)
from support.service import serving, sessions
from support.speech import concat, silence
from talkbox.audio.echo_cancel import WARM_UP_S
from talkbox.audio.near_end import sounding

RESULTS = Path(__file__).resolve().parent / "results" / "barge_in_live.json"
INTERRUPTED = "state listening (interrupted)"
# What the daemon logs (at debug) when it paused the answer for a likely voice and no turn
# opened: a pause for nobody, when nobody talks.
PLAYED_ON = "no turn opened: the answer plays on"
# Talked over in bench/__main__.py: the rooms with drift (either way), 120-200 ms of delay.
LIVE_ROOMS = ["kitchen-drift", "living-room"]
# The fake service streams replies at this many times real time, as in bench.daemon_bench. At
# its default (10x) the bench process, which also runs every room's real-time threads, fell
# behind at the start of each answer, and four rooms' self-interruptions went from 2 to 129
# between otherwise equal runs: a figure of the harness, not of the daemon.
PACE = 1.5



def silent_from(records: list[tuple[float, bytes]], since: float, quiet_s: float = 0.8
                ) -> float | None:
    """When the speaker last sounded before a silence of `quiet_s` that began after `since`
    (longer than the answer's own pauses, shorter than a request and the wait for the next)."""
    last = since
    for at, pcm in records:
        if at < since:
            continue
        if any(pcm):
            if at - last >= quiet_s:
                return last
            last = at
    return last if records and records[-1][0] - last >= quiet_s else None


def sounded_seconds(records: list[tuple[float, bytes]], until: float) -> float:
    """How long the speaker sounded before `until`, as the echo canceller counts its warm-up
    (the drained reads that near_end.sounding calls sound)."""
    sounded = 0
    for at, pcm in records:
        if at >= until:
            break
        samples = np.frombuffer(pcm, dtype="<i2")
        if sounding(samples):
            sounded += len(samples)
    return sounded / SPEAKER_RATE


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in this process while the rooms run: a full collection
    over the service's records held the GIL long enough to stall every room's real-time
    threads at once (all four rooms interrupted themselves within 0.2 s of each other)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextlib.contextmanager
def rooms_running(base: Path, url_base: str, names: list[str], log_level: str
                  ) -> Iterator[dict[str, DaemonRun]]:
    with contextlib.ExitStack() as stack:
        stack.enter_context(collector_paused())
        config = config_text(url_base, 6.0, barge_in="speech", echo_cancellation=True,
                             log_level=log_level)
        runs = {name: stack.enter_context(run_daemon(base / name, config, api_key=API_KEY,
                                                     room=ROOMS[name]))
                for name in names}
        for run in runs.values():
            run.wait_ready()
        yield runs


@dataclass
class Interruption:
    room: str
    onset: float
    request: npt.NDArray[np.int16] = field(repr=False)
    text: str = ""
    heard: bool = False
    heard_after_s: float | None = None
    silent_after_s: float | None = None
    uploaded_share: float = 0.0
    sounded_before_s: float = 0.0  # the speaker's sound before it, since the daemon started

    @property
    def in_warm_up(self) -> bool:
        """Whether the daemon's echo canceller was still learning the room (WARM_UP_S)."""
        return self.sounded_before_s < WARM_UP_S


# How long a room's person waits for their words to be committed as a turn: the first
# question (a wake word, a connection)...
ASK_COMMIT_S = 20.0
# ...and a request said over the answer (at most 2.5 s long; then the turn's 0.5 s of
# silence). Short enough that the unheard request's answer, or its follow-up, still runs
# when they ask again: a new session would not be the one the room's results are read from.
REQUEST_COMMIT_S = 8.0


@dataclass
class RoomScript:
    """One room's person: asks, then talks over each answer a few seconds in, `count` times."""

    name: str
    run: DaemonRun
    service: ServerThread
    count: int
    seed: int
    session_index: int = -1
    results: list[Interruption] = field(default_factory=list)
    error: BaseException | None = None

    def __call__(self) -> None:
        try:
            self._play()
        except BaseException as error:  # reported by the main thread
            self.error = error

    def _play(self) -> None:
        rng = random.Random(self.seed)
        mic: LiveMicrophone = self.run.microphone()
        ask = concat(silence(0.5), person("hey jarvis, tell me about rome")).tobytes()
        mic.speak(ask)
        commits: int | None = 0
        for index in range(self.count):
            seen = commits or 0
            commits = self._wait_for_commit(seen, REQUEST_COMMIT_S if index else ASK_COMMIT_S)
            if commits is None:
                # The last request went unheard (it is judged so). Ask again for an answer to
                # talk over: the unheard one, or its follow-up, still runs in this session.
                mic.speak(ask)
                commits = self._wait_for_commit(seen, ASK_COMMIT_S)
                if commits is None:
                    return
            answer_from = self._wait_for_answer()
            time.sleep(max(0.0, rng.uniform(1.5, 3.5) - (time.monotonic() - answer_from)))
            requests = INTERRUPTING_REQUESTS
            text, voice, speed = requests[(index + self.seed) % len(requests)]
            request = person(text, voice, speed)
            spoken = len(mic.utterance_starts)
            mic.speak(request.tobytes())
            wait_until(lambda n=spoken: len(mic.utterance_starts) > n, 5, "the request to start")
            self.results.append(Interruption(self.name, mic.utterance_starts[-1], request, text))
        self._wait_for_commit(commits or 0, REQUEST_COMMIT_S)

    def _wait_for_commit(self, seen: int, timeout_s: float) -> int | None:
        """Turns committed, once more than `seen` are; None if none comes within `timeout_s`:
        the last request was not heard."""
        def committed() -> int:
            return commit_count(self.service, self.session_index)
        try:
            wait_until(lambda: committed() > seen, timeout_s,
                       f"{self.name}: a turn to be committed")
        except AssertionError:
            if not self.results:
                raise  # the first question was not heard: nothing was measured
            return None
        return committed()

    def _wait_for_answer(self) -> float:
        since = time.monotonic()
        wait_until(lambda: bool(self.run.drainer.sounding(since)), 20,
                   f"{self.name}: the answer to play")
        return self.run.drainer.sounding(since)[0]


def commit_count(service: ServerThread, index: int) -> int:
    """Turns committed in session `index`, counted on the service's loop. (Not by copying the
    sessions: with all their audio, at 50 polls a second, the copies held the GIL long enough
    to starve the rooms' real-time threads.)"""
    server = service.server
    return service.call(lambda: sum(len(s.commits) for s in server.sessions if s.index == index))


def session_count(service: ServerThread) -> int:
    return service.call(lambda: len(service.server.sessions))


def judge(interruption: Interruption, records: list[tuple[float, bytes]],
          interrupted_at: list[float], commits: list[bytes]) -> None:
    onset = interruption.onset
    heard_at = [at for at in interrupted_at if onset <= at <= onset + 1.5]
    interruption.heard = bool(heard_at)
    interruption.heard_after_s = heard_at[0] - onset if heard_at else None
    silent = silent_from(records, onset)
    interruption.silent_after_s = None if silent is None else silent - onset
    interruption.uploaded_share = uploaded_share(interruption.request, commits, MIC_RATE,
                                                 SPEAKER_RATE)
    interruption.sounded_before_s = sounded_seconds(records, onset)


@dataclass
class TalkedOver:
    """What bench/__main__.py reports of the interruptions."""

    results: list[Interruption]

    @property
    def heard(self) -> list[Interruption]:
        return [r for r in self.results if r.heard]

    @property
    def after_warm_up(self) -> TalkedOver:
        """Those of a device that has learnt its room: after its canceller's warm-up."""
        return TalkedOver([r for r in self.results if not r.in_warm_up])

    @property
    def in_warm_up(self) -> TalkedOver:
        """Those of a daemon just started, while its canceller learnt the room."""
        return TalkedOver([r for r in self.results if r.in_warm_up])

    @property
    def silent_after_ms(self) -> list[float]:
        return [r.silent_after_s * 1000 for r in self.heard if r.silent_after_s is not None]

    @property
    def heard_after_ms(self) -> list[float]:
        return [r.heard_after_s * 1000 for r in self.heard if r.heard_after_s is not None]

    @property
    def missed_share(self) -> float:
        return 1 - len(self.heard) / max(1, len(self.results))

    @property
    def clipped_share(self) -> float:
        return sum(r.uploaded_share < 0.95 for r in self.heard) / max(1, len(self.heard))

    def as_dicts(self) -> list[dict[str, object]]:
        return [{"room": r.room, "request": r.text, "heard": r.heard,
                 "heard_after_s": r.heard_after_s,
                 "silent_after_s": r.silent_after_s, "uploaded_share": r.uploaded_share,
                 "sounded_before_s": r.sounded_before_s, "in_warm_up": r.in_warm_up}
                for r in self.results]


@dataclass
class SelfInterruptions:
    """Per room: how often the answer interrupted itself, how often it paused for a voice
    that was nobody's (and played on), and how much of it was played."""

    counts: dict[str, int]
    pauses: dict[str, int]
    played_s: dict[str, float]

    @property
    def per_hour(self) -> float:
        return sum(self.counts.values()) / max(1e-9, sum(self.played_s.values())) * 3600

    @property
    def pauses_per_minute(self) -> float:
        return sum(self.pauses.values()) / max(1e-9, sum(self.played_s.values())) * 60


def measure_self_interruptions(names: list[str], answer_s: float,
                               keep_logs: Path | None = None) -> SelfInterruptions:
    """One long answer in each room at once, nobody talking. An answer that interrupts itself
    ends there (the service cancels it), so what was played is counted, not assumed. The
    daemons log at debug, where their pauses for nobody are said."""
    with serving(API_KEY, deployments={DEPLOYMENT}, pace_factor=PACE) as service, \
            tempfile.TemporaryDirectory(prefix="talkbox-barge-in-") as tmp:
        service.server.reply_pcm = long_answer(answer_s)
        ask = concat(silence(1.0), person("hey jarvis, tell me a long story"), silence(1.0))
        with rooms_running(Path(tmp), service.url_base, names, "debug") as runs:
            for run in runs.values():
                run.say(ask.tobytes())
            for run in runs.values():
                run.wait_for_log("state responding", timeout=30)
            deadline = time.monotonic() + answer_s + 15
            while time.monotonic() < deadline and not all(
                    "state listening (answer played)" in run.log() for run in runs.values()):
                time.sleep(0.5)
            counts = {name: run.log().count(INTERRUPTED) for name, run in runs.items()}
            pauses = {name: run.log().count(PLAYED_ON) for name, run in runs.items()}
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                for name, run in runs.items():
                    (keep_logs / f"{name}.answer.log").write_text(run.log())
            played = {name: sum(len(pcm) / 2 / SPEAKER_RATE for _, pcm in run.drainer.records
                                if any(pcm)) for name, run in runs.items()}
    return SelfInterruptions(counts, pauses, played)


def measure_interruptions(names: list[str], per_room: int, log_level: str = "info",
                          keep_logs: Path | None = None) -> TalkedOver:
    with serving(API_KEY, deployments={DEPLOYMENT}, pace_factor=PACE) as service, \
            tempfile.TemporaryDirectory(prefix="talkbox-barge-in-") as tmp:
        service.server.reply_pcm = long_answer(20.0)
        with rooms_running(Path(tmp), service.url_base, names, log_level) as runs:
            scripts = [RoomScript(name, run, service, per_room, seed=i)
                       for i, (name, run) in enumerate(runs.items())]
            threads = []
            for script in scripts:
                before = session_count(service)
                thread = threading.Thread(target=script, name=script.name)
                thread.start()
                wait_until(lambda b=before: session_count(service) > b, 20, "a session")
                script.session_index = service.call(lambda: service.server.sessions[-1].index)
                threads.append(thread)
            for thread in threads:
                thread.join(timeout=per_room * 15 + 60)
            outcome = {s.name: (list(runs[s.name].drainer.records), runs[s.name].log())
                       for s in scripts}
        recorded = {s.index: s for s in sessions(service)}
    offset = wall_minus_monotonic()
    results: list[Interruption] = []
    for script in scripts:
        records, log = outcome[script.name]
        if keep_logs is not None:  # (a failed room's log too: it says why)
            keep_logs.mkdir(parents=True, exist_ok=True)
            (keep_logs / f"{script.name}.log").write_text(log)
        if script.error is not None:
            raise RuntimeError(f"{script.name}: {script.error!r}") from script.error
        commits = [bytes(c.audio) for c in recorded[script.session_index].commits]
        interrupted_at = [wall_to_monotonic(wall, offset)
                          for wall in log_stamps(log, INTERRUPTED)]
        for interruption in script.results:
            judge(interruption, records, interrupted_at, commits)
            results.append(interruption)
    return TalkedOver(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", default=",".join(LIVE_ROOMS))
    parser.add_argument("--per-room", type=int, default=12)
    parser.add_argument("--answer-seconds", type=float, default=0.0,
                        help="first, play a long answer in each room, nobody talking")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--keep-logs", type=Path, default=None)
    args = parser.parse_args()
    names = args.rooms.split(",")
    document: dict[str, object] = {"rooms": names}
    if args.answer_seconds > 0:
        false = measure_self_interruptions(names, args.answer_seconds, args.keep_logs)
        document["self_interruptions"] = false.counts
        document["pauses_for_nobody"] = false.pauses
        document["answer_played_seconds"] = false.played_s
        for name, count in false.counts.items():
            print(f"{name:18} self-interruptions {count}, pauses for nobody "
                  f"{false.pauses[name]}, in {false.played_s[name]:.0f} s played")
    talked_over = measure_interruptions(names, args.per_room, args.log_level, args.keep_logs)
    print("milliseconds from the start of speech: to 'interrupted' logged (heard), to the "
          "speaker's last sound (silent)")
    print(f"{'room':18} {'heard':>7} {'heard p50':>9} {'p95':>5} {'silent p50':>10} {'p95':>5} "
          f"{'whole':>7}")
    rows = [(name, TalkedOver([r for r in talked_over.results if r.room == name]))
            for name in names]
    rows += [("all", talked_over), ("after warm-up", talked_over.after_warm_up),
             (f"in warm-up ({WARM_UP_S:g} s)", talked_over.in_warm_up)]
    for name, mine in rows:
        heard, silent = mine.heard_after_ms, mine.silent_after_ms
        whole = sum(r.uploaded_share >= 0.95 for r in mine.heard)
        print(f"{name:18} {len(mine.heard):3}/{len(mine.results):<3} "
              f"{percentile(heard, 0.5):9.0f} {percentile(heard, 0.95):5.0f} "
              f"{percentile(silent, 0.5):10.0f} {percentile(silent, 0.95):5.0f} "
              f"{whole:3}/{len(mine.heard):<3}")
    for r in talked_over.results:
        if not r.heard:
            print(f"  not heard: {r.room} at {r.onset:.2f}")
    document["interruptions"] = talked_over.as_dicts()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
