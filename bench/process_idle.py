"""Idle CPU of the whole `talkbox run` process, beside an always-on openWakeWord process.

Run from the repository root: `python -m bench.process_idle [--seconds N]`.

`bench.frontend_cpu` times the capture front end inside the bench process; this measures the
idle daemon as a process: the real `talkbox run` on a sound card made of files, configured and
driven as `bench.daemon_bench` does (the fake service on loopback, which it never calls: nobody
says the wake word), with the shipped echo_cancellation = true. Beside it, at the same time,
runs the plainest always-on openWakeWord listener (`bench.always_on_openwakeword`: blocking
PyAudio reads, `predict` on every 80 ms chunk, no voice activity gate) on a card of its own.
Both microphones are FIFOs fed the same audio in real time, one 40 ms period at a time (the
daemon's capture buffer, at 16 kHz), so whatever else loads the machine falls on both alike.

Three scenes, each measured for `--seconds` (30) after `--warm-up` (5) seconds of feeding
(`--scenes quiet,alarm` runs only those):
- a quiet room: low rumble (pink noise below 150 Hz) at -60 dBFS;
- continuous speech without the wake word (espeak-ng, four voices, short pauses, over quiet
  noise), the speech `bench.frontend_cpu` uses;
- the quiet room with a timer pending 6 hours away in the daemon's state directory (issue 15:
  idle CPU unchanged). Every scene's daemon has a state directory; only this one's holds a
  timer, so the difference from the quiet room is the pending timer alone: one timer on the
  event loop, woken once a minute to re-read the wall clock.
The daemon's log must show no wake word, no state change and no error.

Per process: CPU seconds per second of wall time (CPU-s/s) from /proc/PID/stat. Per thread:
its CPU-s/s and wake-ups (voluntary context switches) from /proc/PID/task, and where it
sleeps, sampled four times a second, which tells the threads apart: the main thread;
PortAudio's capture callback thread (sleeps reading the microphone FIFO); PortAudio's output
callback thread (sleeps writing the speaker FIFO; with the shipped keep_speaker_running =
false the idle daemon's speaker stream stands by and this thread is not there at all, with
`--keep-speaker-running` it runs, playing silence); threads of a pool waiting on a futex.

Prints a table and writes bench/results/process_idle.json; `process_idle_quiet_ratio` and
`process_idle_speech_ratio` are talkbox run / always-on openWakeWord (goals <= 0.15, <= 1.0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from bench.daemon_bench import API_KEY, config_text, log, sleep_until, start_service
from support.alsa import FifoFeeder, alsa_sandbox
from support.daemon import CAPTURE_PERIOD_FRAMES, MIC_RATE, run_daemon
from support.proccpu import (
    CLOCK_TICKS_PER_SECOND,
    ProcessReading,
    ThreadUsage,
    read_process,
    thread_usage,
    waiting_in,
)
from support.room import rms_dbfs
from support.speech import Pcm, ordinary_speech_stretch, pink_noise, sox_effects
from talkbox.audio.front_end_thread import THREAD_NAME
from talkbox.audio.wake import available_models
from talkbox.core.alarms import new_timer
from talkbox.tools.alarms import ALARMS_FILE, AlarmStore

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "bench" / "results" / "process_idle.json"
SECONDS = 30.0
WARM_UP_SECONDS = 5.0
QUIET_ROOM_DBFS = -60.0
RUMBLE_BELOW_HZ = 150
WAIT_SAMPLE_INTERVAL_S = 0.25
# talkbox run / always-on openWakeWord (issue 14; the pending alarm: issue 15).
GOALS = {"quiet": 0.15, "speech": 1.0, "alarm": 0.15}
ALARM_PENDING_HOURS = 6.0
MODEL = "hey_jarvis"
# In the daemon's log: it did not stay idle (a wake word, a state change), or the run was
# disturbed (an error, such as a microphone reopened).
NOT_IDLE_LOG_TEXT = ("wake word", "talkbox: state ", " ERROR ")

# What a thread is, from where it sleeps (see `thread_role`).
DAEMON_MAIN = "main: asyncio loop (the control socket, the connection, timers, the core)"
FRONT_END_THREAD = "the capture front end (echo canceller, VAD, gated wake word)"
BASELINE_MAIN = "main: blocking read + openWakeWord predict"
CAPTURE_CALLBACK = "PortAudio capture callback (microphone stream)"
OUTPUT_CALLBACK = "PortAudio output callback (speaker stream, silence while idle)"
POOL_THREAD = "pool or worker thread (waits on a futex)"


@dataclass(frozen=True)
class Scene:
    key: str  # "quiet", "speech" or "alarm": the figure is process_idle_<key>_ratio
    description: str
    audio: Pcm
    pending_alarm: bool = False


def quiet_room(seconds: float) -> Pcm:
    """Low rumble at QUIET_ROOM_DBFS: pink noise with its highs taken off."""
    rumble = sox_effects(pink_noise(seconds, MIC_RATE, volume=0.02), MIC_RATE,
                         "lowpass", str(RUMBLE_BELOW_HZ))
    gain = 10 ** ((QUIET_ROOM_DBFS - rms_dbfs(rumble)) / 20)
    quiet: Pcm = np.clip(np.rint(rumble * gain), -32768, 32767).astype(np.int16)
    return quiet


def scenes(seconds: float, keys: tuple[str, ...] = tuple(GOALS)) -> list[Scene]:
    made = {
        "quiet": lambda: Scene("quiet", f"quiet room (rumble, {QUIET_ROOM_DBFS:.0f} dBFS)",
                               quiet_room(seconds)),
        "speech": lambda: Scene("speech", "continuous speech, no wake word",
                                ordinary_speech_stretch(MIC_RATE, seconds,
                                                        pauses=(0.3, 0.5, 0.4))),
        "alarm": lambda: Scene("alarm", f"quiet room, a timer due in {ALARM_PENDING_HOURS:g} h",
                               quiet_room(seconds), pending_alarm=True),
    }
    return [made[key]() for key in keys]


def state_directory(directory: Path, pending_alarm: bool) -> dict[str, str]:
    """The daemon's StateDirectory=, holding a timer ALARM_PENDING_HOURS away if asked (as
    the daemon's own store writes it)."""
    directory.mkdir()
    if pending_alarm:
        store = AlarmStore(directory / ALARMS_FILE)
        now = dt.datetime.now().astimezone()
        store.add(lambda pending: new_timer(ALARM_PENDING_HOURS * 3600, "bench", now, pending))
    return {"STATE_DIRECTORY": str(directory)}


# --- the two processes ------------------------------------------------------------------------


class Baseline:
    """The always-on openWakeWord process, reading the input device `mic` of `env`'s card."""

    def __init__(self, env: dict[str, str], stderr_path: Path) -> None:
        model = available_models()[MODEL]
        self.stderr_path = stderr_path  # PortAudio's and tflite's chatter, read on failure
        with stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.always_on_openwakeword", "--device", "mic",
                 "--rate", str(MIC_RATE), "--period", str(CAPTURE_PERIOD_FRAMES), str(model),
                 str(model.parent / "melspectrogram.tflite"),
                 str(model.parent / "embedding_model.tflite")],
                cwd=REPOSITORY, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=stderr, text=True)

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the always-on openWakeWord process did not start:\n"
                               + self.stderr_path.read_text(errors="replace"))

    def stop(self) -> list[str]:
        """Kill it; the detections it printed."""
        self.process.kill()
        output, _ = self.process.communicate(timeout=10)
        return [line for line in output.splitlines() if line.startswith("detection")]


@dataclass
class BaselineRun:
    baseline: Baseline
    microphone: FifoFeeder  # not started yet
    microphone_fifo: Path


@contextmanager
def baseline_on_own_card(directory: Path, audio: Pcm) -> Iterator[BaselineRun]:
    """The baseline started on a sound card of files of its own, with its microphone's feeder."""
    with alsa_sandbox(directory, capture_fifo=True) as card:
        # Opened before the baseline opens the FIFO, so its open() does not wait for a writer.
        microphone = FifoFeeder(card.capture_path, audio.tobytes(), rate=MIC_RATE,
                                period_frames=CAPTURE_PERIOD_FRAMES)
        baseline = Baseline(card.env, directory / "stderr.txt")
        try:
            yield BaselineRun(baseline, microphone, card.capture_path)
        finally:
            if baseline.process.poll() is None:
                baseline.process.kill()
                baseline.process.wait(timeout=10)
            microphone.stop()


# --- where the CPU goes -------------------------------------------------------------------


def thread_role(tid: int, pid: int, main_role: str, sleeps_in: str | None,
                capture_fifo: Path, speaker_fifo: Path | None, name: str = "") -> str:
    """What a thread is, from its name if the daemon gave it one, else from where it mostly
    sleeps (`waiting_in`)."""
    if tid == pid:
        return main_role
    if name == THREAD_NAME:
        return FRONT_END_THREAD
    if sleeps_in is None:
        return "unknown (never seen asleep)"
    if sleeps_in.endswith(f" {capture_fifo}"):
        return CAPTURE_CALLBACK
    if speaker_fifo is not None and sleeps_in.endswith(f" {speaker_fifo}"):
        return OUTPUT_CALLBACK
    if "futex" in sleeps_in:
        return POOL_THREAD
    return f"sleeps in {sleeps_in}"


@dataclass
class Watched:
    """One of the two processes, read at both ends of the window and sampled in between."""

    pid: int
    main_role: str
    capture_fifo: Path
    speaker_fifo: Path | None
    start: ProcessReading | None = None
    started_at: float = 0.0
    end: ProcessReading | None = None
    ended_at: float = 0.0
    sleeps: dict[int, Counter[str]] = field(default_factory=dict)  # tid -> where, how often

    def read_start(self) -> None:
        self.start, self.started_at = read_process(self.pid), time.monotonic()

    def read_end(self) -> None:
        self.end, self.ended_at = read_process(self.pid), time.monotonic()

    def sample_sleeps(self) -> None:
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            where = waiting_in(self.pid, int(tid))
            if where is not None:
                self.sleeps.setdefault(int(tid), Counter())[where] += 1

    def report(self) -> dict[str, Any]:
        assert self.start is not None and self.end is not None
        seconds = self.ended_at - self.started_at
        cpu = self.end.cpu_seconds - self.start.cpu_seconds
        threads = [self._thread(usage, seconds, cpu) for usage in thread_usage(self.start,
                                                                                self.end)]
        return {
            "pid": self.pid,
            "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu, 3),
            "cpu_per_second": cpu / seconds,
            "threads": threads,
            # Threads that ended during the window are in the process's time, not in a
            # thread's; each figure is also rounded to clock ticks, so this may be -0.02.
            "ended_threads_cpu_seconds": round(cpu - sum(t["cpu_seconds"] for t in threads), 3),
        }

    def _thread(self, usage: ThreadUsage, seconds: float, process_cpu: float
                ) -> dict[str, Any]:
        sleeps = self.sleeps.get(usage.tid, Counter())
        sleeps_in = sleeps.most_common(1)[0][0] if sleeps else None
        return {
            "tid": usage.tid,
            "name": usage.name,
            "role": thread_role(usage.tid, self.pid, self.main_role, sleeps_in,
                                self.capture_fifo, self.speaker_fifo, usage.name),
            "started_after_process_seconds": round(usage.started_after_process_seconds, 2),
            "cpu_seconds": round(usage.cpu_seconds, 3),
            "user_seconds": round(usage.user_seconds, 3),
            "system_seconds": round(usage.system_seconds, 3),
            "cpu_per_second": usage.cpu_seconds / seconds,
            "share_of_process": usage.cpu_seconds / process_cpu if process_cpu else 0.0,
            "wakeups_per_second": usage.voluntary_switches / seconds,
            "preemptions_per_second": usage.involuntary_switches / seconds,
            "sleeps_in": sleeps_in,
            "sleeps_in_share": sleeps[sleeps_in] / sum(sleeps.values()) if sleeps_in else 0.0,
        }


def machine_busy(before: list[int], after: list[int]) -> float:
    """Share of all cores busy between two readings of /proc/stat's "cpu" line."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    idle = spent[3] + spent[4]  # idle, iowait
    return 1 - idle / sum(spent) if sum(spent) else 0.0


def cpu_line() -> list[int]:
    """user, nice, system, idle, iowait, irq, softirq, steal (guest time is inside user)."""
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


# --- one scene ------------------------------------------------------------------------------


def measure_scene(scene: Scene, url_base: str, seconds: float, warm_up_seconds: float,
                  echo_cancellation: bool, keep_speaker_running: bool = False
                  ) -> dict[str, Any]:
    """The daemon and the baseline side by side on `scene.audio`, measured for `seconds`."""
    load_before = os.getloadavg()
    config = config_text(url_base, 1.0, echo_cancellation=echo_cancellation,
                         keep_speaker_running=keep_speaker_running)
    with (
        tempfile.TemporaryDirectory(prefix="talkbox-process-idle-") as tmp,
        baseline_on_own_card(Path(tmp) / "baseline", scene.audio) as always_on_run,
    ):
        # The baseline first: the daemon reopens a microphone that is silent for 3 s.
        always_on_run.baseline.wait_ready()
        state = state_directory(Path(tmp) / "state", scene.pending_alarm)
        with run_daemon(Path(tmp), config, api_key=API_KEY, extra_env=state) as run:
            run.wait_ready(timeout=60)
            daemon = Watched(run.process.pid, DAEMON_MAIN, run.sandbox.capture_path,
                             run.sandbox.playback_path)
            always_on = Watched(always_on_run.baseline.process.pid, BASELINE_MAIN,
                                always_on_run.microphone_fifo, None)
            # The same audio to both, starting together.
            run.say(scene.audio.tobytes())
            always_on_run.microphone.start()
            sleep_until(time.monotonic() + warm_up_seconds)
            busy_before = cpu_line()
            daemon.read_start()
            always_on.read_start()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                daemon.sample_sleeps()
                always_on.sample_sleeps()
                sleep_until(min(end, time.monotonic() + WAIT_SAMPLE_INTERVAL_S))
            daemon.read_end()
            always_on.read_end()
            busy = machine_busy(busy_before, cpu_line())
            detections = always_on_run.baseline.stop()
            run.terminate(timeout=10)
            daemon_log = run.log()
    not_idle = [line for line in daemon_log.splitlines()
                if any(text in line for text in NOT_IDLE_LOG_TEXT)]
    if not_idle:
        raise RuntimeError(f"talkbox run was not left idle on {scene.description}:\n"
                           + "\n".join(not_idle))
    daemon_report, baseline_report = daemon.report(), always_on.report()
    return {
        "scene": scene.key,
        "description": scene.description,
        "daemon": daemon_report,
        "always_on_openwakeword": baseline_report,
        "ratio": daemon_report["cpu_per_second"] / baseline_report["cpu_per_second"],
        "goal": GOALS[scene.key],
        "always_on_detections": detections,
        "machine_busy_share": busy,  # of all cores: both processes and everything else
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "daemon_log": daemon_log.splitlines(),
    }


# --- the report -------------------------------------------------------------------------------


def summary_table(results: list[dict[str, Any]]) -> str:
    header = (f"{'scene':34} {'talkbox run':>11} {'openWakeWord':>12} {'ratio':>6}  "
              f"{'goal':8} {'result':6}  {'machine busy':>12}")
    lines = [header, "-" * len(header)]
    for result in results:
        ratio, goal = result["ratio"], result["goal"]
        lines.append(
            f"{result['description']:34} {result['daemon']['cpu_per_second']:11.4f} "
            f"{result['always_on_openwakeword']['cpu_per_second']:12.4f} {ratio:6.3f}  "
            f"{'<= ' + format(goal, 'g'):8} {'PASS' if ratio <= goal else 'MISS':6}  "
            f"{100 * result['machine_busy_share']:11.0f} %")
    return "\n".join(lines)


def _short_sleep(sleeps_in: str | None) -> str:
    """"anon_pipe_read /tmp/x/capture.raw" -> "anon_pipe_read capture.raw"."""
    if sleeps_in is None:
        return "-"
    wchan, _, target = sleeps_in.partition(" ")
    return f"{wchan} {Path(target).name or target}".strip()


def threads_table(results: list[dict[str, Any]]) -> str:
    header = (f"{'scene':7} {'process':13} {'tid':>7} {'comm':15} {'started':>8} {'CPU-s/s':>8} "
              f"{'share':>6} {'wake-ups/s':>10}  {'sleeps in':36} thread")
    lines = [header, "-" * len(header)]
    for result in results:
        for process, name in (("daemon", "talkbox run"), ("always_on_openwakeword",
                                                          "openWakeWord")):
            report = result[process]
            for thread in sorted(report["threads"], key=lambda t: -t["cpu_seconds"]):
                lines.append(
                    f"{result['scene']:7} {name:13} {thread['tid']:>7} {thread['name']:15} "
                    f"{thread['started_after_process_seconds']:6.2f} s "
                    f"{thread['cpu_per_second']:8.4f} {100 * thread['share_of_process']:5.0f} % "
                    f"{thread['wakeups_per_second']:10.1f}  "
                    f"{_short_sleep(thread['sleeps_in']):36} {thread['role']}")
            # Each thread's time is rounded to clock ticks: a difference under two is noise.
            ended = report["ended_threads_cpu_seconds"]
            lines.append(f"{result['scene']:7} {name:13} {'':7} {'(all threads)':15} {'':8} "
                         f"{report['cpu_per_second']:8.4f}   100 %"
                         + (f"  ({ended / report['seconds']:.4f} CPU-s/s in threads that ended)"
                            if ended >= 2 / CLOCK_TICKS_PER_SECOND else ""))
    return "\n".join(lines)


def main_wakeups(report: dict[str, Any]) -> float:
    """The daemon's main thread (the event loop, where the alarm timer lives): wake-ups/s."""
    [main_thread] = [t for t in report["threads"] if t["tid"] == report["pid"]]
    wakeups: float = main_thread["wakeups_per_second"]
    return wakeups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.process_idle",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=SECONDS,
                        help=f"measured per scene, after the warm-up (default {SECONDS:g})")
    parser.add_argument("--warm-up", type=float, default=WARM_UP_SECONDS,
                        help=f"seconds fed before measuring (default {WARM_UP_SECONDS:g})")
    parser.add_argument("--without-echo-canceller", action="store_true",
                        help="run the daemon with echo_cancellation = false")
    parser.add_argument("--keep-speaker-running", action="store_true",
                        help="run the daemon with keep_speaker_running = true (its speaker "
                             "stream writes silence while idle instead of standing by)")
    parser.add_argument("--scenes", default=",".join(GOALS),
                        help=f"which, comma-separated (default all: {','.join(GOALS)})")
    args = parser.parse_args(argv)
    keys = tuple(key.strip() for key in args.scenes.split(",") if key.strip())
    if not keys or set(keys) - set(GOALS):
        parser.error(f"--scenes takes some of {', '.join(GOALS)}")
    echo_cancellation = not args.without_echo_canceller

    audio_seconds = args.warm_up + args.seconds + 2.0  # the feeders go on with silence after it
    _, service = start_service(lambda turn: b"", pace_factor=10.0)
    try:
        results = []
        for scene in scenes(audio_seconds, keys):
            log(f"process idle CPU: {scene.description}, {args.seconds:g} s after "
                f"{args.warm_up:g} s of warm-up (load average {os.getloadavg()[0]:.2f})")
            results.append(measure_scene(scene, service.url_base, args.seconds, args.warm_up,
                                         echo_cancellation, args.keep_speaker_running))
    finally:
        service.stop()

    print(f"Idle CPU of whole processes, CPU-s/s (1.0 = one core busy): talkbox run "
          f"(echo_cancellation = {str(echo_cancellation).lower()}, keep_speaker_running = "
          f"{str(args.keep_speaker_running).lower()}) beside always-on "
          f"openWakeWord,\nthe same audio fed to both in real time ({MIC_RATE} Hz, "
          f"{CAPTURE_PERIOD_FRAMES}-frame periods); {args.seconds:g} s a scene after "
          f"{args.warm_up:g} s of warm-up")
    print(summary_table(results))
    print()
    print("Where the CPU goes, per thread (started: after its process; share: of its "
          "process; wake-ups: voluntary context switches)")
    print(threads_table(results))

    by_scene = {result["scene"]: result for result in results}
    report: dict[str, Any] = {
        f"process_idle_{key}_ratio": result["ratio"] for key, result in by_scene.items()}
    if "quiet" in by_scene and "alarm" in by_scene:
        # The pending timer's own cost: the same quiet room, with and without it.
        with_alarm, without = (by_scene[key]["daemon"] for key in ("alarm", "quiet"))
        report["process_idle_alarm_vs_quiet"] = (with_alarm["cpu_per_second"]
                                                 / without["cpu_per_second"])
        factor = report["process_idle_alarm_vs_quiet"]
        print(f"\nA timer pending {ALARM_PENDING_HOURS:g} h away: talkbox run "
              f"{with_alarm['cpu_per_second']:.4f} CPU-s/s, without it "
              f"{without['cpu_per_second']:.4f} CPU-s/s (x{factor:.2f}); main thread "
              f"wake-ups/s {main_wakeups(with_alarm):.1f} and {main_wakeups(without):.1f}")
    report.update({
        "goals": {f"process_idle_{key}_ratio": goal for key, goal in GOALS.items()},
        "seconds": args.seconds,
        "warm_up_seconds": args.warm_up,
        "echo_cancellation": echo_cancellation,
        "keep_speaker_running": args.keep_speaker_running,
        "input_rate": MIC_RATE,
        "capture_period_frames": CAPTURE_PERIOD_FRAMES,
        "model": MODEL,
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "scenes": results,
    })
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
