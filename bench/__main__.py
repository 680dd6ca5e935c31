"""`python -m bench [--quick]`: every benchmark, one table, bench/results.json.

Runs, in order: the front end's idle CPU (`bench.frontend_cpu`, in a subprocess; it also
refreshes bench/results/frontend_cpu.json), the whole daemon's idle CPU beside an always-on
openWakeWord process (`bench.process_idle`, the same way; bench/results/process_idle.json),
openWakeWord's resident memory on its own, the speaker harness calibration, a profile of the
daemon's receive path, daemon start-ups, the wake / answer / barge-in cycles and the
three-turn conversation (`bench.daemon_bench`), speech barge-in in simulated rooms
(`bench.echo_room`) and through the whole process (`bench.barge_in_live`).
Progress goes to stderr, the table to stdout.
What each figure means and how it is measured: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from bench.barge_in_live import LIVE_ROOMS, measure_interruptions, measure_self_interruptions
from bench.daemon_bench import (
    LatencySamples,
    StartupSamples,
    log,
    measure_conversation,
    measure_cycles,
    measure_loop_lag,
    measure_startups,
    measure_tool_calls,
)
from bench.echo_room import simulate_rooms
from bench.memory import openwakeword_alone_rss_mb
from bench.receive_path import profile_receive_path
from bench.report import Figure, repeated, results_document, single, table
from bench.speaker_calibration import calibrate_speaker
from support.room import ROOMS
from talkbox.audio.echo_cancel import WARM_UP_S

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "bench" / "results.json"
FRONTEND_CPU_RESULTS = REPOSITORY / "bench" / "results" / "frontend_cpu.json"
PROCESS_IDLE_RESULTS = REPOSITORY / "bench" / "results" / "process_idle.json"


@dataclass(frozen=True)
class Plan:
    """How many times each measurement is repeated."""

    cpu_repetitions: int
    process_idle_seconds: float  # measured per scene (bench.process_idle)
    openwakeword_processes: int
    speaker_calibrations: int
    receive_path_deltas: int
    startups: int
    cycle_runs: int
    cycles_per_run: int
    echo_room_seconds: float  # of answer per simulated room (bench.echo_room)
    # Of answer per room, nobody talking (real process); the answer's pauses are 20 % of it,
    # so four rooms play the 5 minutes of sound at 95 s a room.
    self_interruption_seconds: float
    interruptions_per_room: int  # people talking over answers (real process)
    tool_conversations: int  # each answered with one function call (get_current_time)


FULL = Plan(cpu_repetitions=5, process_idle_seconds=30, openwakeword_processes=3,
            speaker_calibrations=24, receive_path_deltas=200, startups=3, cycle_runs=6,
            cycles_per_run=3, echo_room_seconds=120, self_interruption_seconds=95,
            interruptions_per_room=12, tool_conversations=6)
QUICK = Plan(cpu_repetitions=2, process_idle_seconds=10, openwakeword_processes=1,
             speaker_calibrations=10, receive_path_deltas=50, startups=1, cycle_runs=2,
             cycles_per_run=2, echo_room_seconds=40, self_interruption_seconds=30,
             interruptions_per_room=3, tool_conversations=3)


def run_alone(module: str, args: list[str], results: Path) -> dict[str, Any]:
    """Run `python -m MODULE ARGS` as it is run on its own, and read the JSON it wrote."""
    done = subprocess.run([sys.executable, "-m", module, *args],
                          cwd=REPOSITORY, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(results.read_text())
    return result


def frontend_cpu(repetitions: int) -> dict[str, Any]:
    return run_alone("bench.frontend_cpu", ["--repetitions", str(repetitions)],
                     FRONTEND_CPU_RESULTS)


def process_idle(seconds: float) -> dict[str, Any]:
    return run_alone("bench.process_idle", ["--seconds", str(seconds)], PROCESS_IDLE_RESULTS)


def _process_idle_note(scene: dict[str, Any]) -> str:
    return (f"{scene['daemon']['cpu_per_second']:.4f} / "
            f"{scene['always_on_openwakeword']['cpu_per_second']:.4f} CPU-s/s")


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    for key in ("model name", "Model", "Hardware"):
        for line in lines:
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _memory_total_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _git_revision() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=REPOSITORY, capture_output=True, text=True, check=False)
    return done.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("talkbox", "openwakeword", "tflite-runtime", "numpy", "soxr", "pyaudio",
                    "webrtcvad-wheels", "websockets"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpu": _cpu_model(), "cpus": os.cpu_count(), "memory_mb": _memory_total_mb(),
            "python": platform.python_version(), "revision": _git_revision(),
            "packages": versions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions (about 5 minutes instead of about 11)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="keep the debug logs of the speech barge-in daemons here (a "
                             "self-interruption's log shows how its turn opened)")
    args = parser.parse_args(argv)
    barge_in_logs = ("debug", args.keep_logs) if args.keep_logs else ("info", None)
    plan = QUICK if args.quick else FULL
    began = time.monotonic()

    log(f"front end idle CPU ({plan.cpu_repetitions} repetitions)")
    cpu = frontend_cpu(plan.cpu_repetitions)
    log(f"whole process idle CPU beside always-on openWakeWord ({plan.process_idle_seconds:g} s "
        "a scene)")
    idle = process_idle(plan.process_idle_seconds)
    quiet, speech, alarm = (next(s for s in idle["scenes"] if s["scene"] == key)
                            for key in ("quiet", "speech", "alarm"))
    log(f"  quiet room {_process_idle_note(quiet)}, speech {_process_idle_note(speech)}, "
        f"timer pending {_process_idle_note(alarm)}")
    log("openWakeWord alone: resident memory")
    openwakeword_rss = openwakeword_alone_rss_mb(plan.openwakeword_processes)
    log("speaker harness calibration")
    speaker = calibrate_speaker(plan.speaker_calibrations)
    pipeline_ms = statistics.median(speaker.handover_to_drain_ms)
    playback_alone_ms = statistics.median(speaker.write_to_drain_ms)
    log(f"  callback -> drainer {pipeline_ms:.1f} ms median "
        f"({min(speaker.handover_to_drain_ms):.1f}..{max(speaker.handover_to_drain_ms):.1f}); "
        f"Playback.write -> drainer {playback_alone_ms:.1f} ms median "
        f"({min(speaker.write_to_drain_ms):.0f}..{max(speaker.write_to_drain_ms):.0f})")
    log("daemon receive path (decode, state machine, Playback.write)")
    receive_ms = {rate: profile_receive_path(plan.receive_path_deltas, rate)
                  for rate in (24000, 48000)}
    startups, latencies = StartupSamples(), LatencySamples()
    log(f"daemon start-ups ({plan.startups})")
    measure_startups(plan.startups, startups)
    log("daemon latencies")
    measure_cycles(plan.cycle_runs, plan.cycles_per_run, latencies, startups)
    upload = measure_conversation(latencies, startups)
    log("the daemon's event loop lag (its debug probe), over the same cycles")
    loop_lag = measure_loop_lag(plan.cycles_per_run)
    log(f"function calls ({plan.tool_conversations} conversations, one call each)")
    tool_call_ms = measure_tool_calls(plan.tool_conversations)
    log(f"echo rooms, simulated ({plan.echo_room_seconds:.0f} s of answer each)")
    echo = simulate_rooms(plan.echo_room_seconds)
    log(f"speech barge-in, whole process: {plan.self_interruption_seconds:.0f} s of answer "
        f"in each of {len(ROOMS)} rooms, nobody talking")
    self_interrupted = measure_self_interruptions(list(ROOMS), plan.self_interruption_seconds,
                                                  args.keep_logs)
    log(f"speech barge-in, whole process: {plan.interruptions_per_room} interruptions in "
        f"each of {', '.join(LIVE_ROOMS)}")
    talked_over = measure_interruptions(LIVE_ROOMS, plan.interruptions_per_room, *barge_in_logs)
    # Sent -> handed to PortAudio: the drainer's time minus the harness's own delay after the
    # callback (calibrated, tight). Against Playback alone through the same harness: what the
    # daemon adds on top of the wait for PortAudio's next callback (every 20 ms).
    first_sound_ms = [ms - pipeline_ms for ms in latencies.first_sound_at_drainer_ms]
    beyond_playback_alone_ms = [ms - playback_alone_ms
                                for ms in latencies.first_sound_at_drainer_ms]
    receive_24k = statistics.median(receive_ms[24000])

    figures: list[Figure] = [
        single("idle_cpu_quiet_ratio", cpu["idle_cpu_quiet_ratio"], "ratio",
               "front end / always-on openWakeWord, quiet room", cpu["repetitions"]),
        single("idle_cpu_speech_ratio", cpu["idle_cpu_speech_ratio"], "ratio",
               "same, on continuous speech without the wake word", cpu["repetitions"]),
        single("process_idle_quiet_ratio", idle["process_idle_quiet_ratio"], "ratio",
               f"talkbox run / always-on openWakeWord process, quiet room: "
               f"{_process_idle_note(quiet)}"),
        single("process_idle_speech_ratio", idle["process_idle_speech_ratio"], "ratio",
               f"same, continuous speech without the wake word: {_process_idle_note(speech)}"),
        single("process_idle_alarm_ratio", idle["process_idle_alarm_ratio"], "ratio",
               f"same, quiet room with a timer pending 6 h away: {_process_idle_note(alarm)}; "
               f"x{idle['process_idle_alarm_vs_quiet']:.2f} the quiet room's"),
        repeated("rss_mb", startups.rss_mb, "MiB", "talkbox run, idle after start"),
        repeated("rss_mb_openwakeword_alone", openwakeword_rss, "MiB",
                 "python + openwakeword + hey_jarvis, idle"),
        repeated("ready_seconds", startups.ready_seconds, "s", "spawn -> READY=1"),
        repeated("wake_latency_ms", latencies.wake_latency_ms, "ms",
                 "end of 'hey jarvis' -> wake log line"),
        repeated("first_audio_ms", latencies.first_audio_ms, "ms",
                 "wake -> first append at the server"),
        repeated("commit_latency_ms", latencies.commit_latency_ms, "ms",
                 "end of speech -> commit, minus 500 ms"),
        repeated("first_sound_ms", first_sound_ms, "ms",
                 f"delta sent -> handed to PortAudio (drainer - {pipeline_ms:.0f} ms); "
                 f"daemon adds {statistics.median(beyond_playback_alone_ms):+.0f} ms to "
                 "Playback alone"),
        repeated("barge_in_ms", latencies.barge_in_ms, "ms",
                 "barge-in wake log line -> speaker silent (drainer)"),
        single("upload_ratio", upload.upload_ratio, "ratio",
               f"{upload.uploaded_seconds:.1f} s uploaded / {upload.session_seconds:.1f} s open"),
        single("speech_lost_ms", upload.speech_lost_ms, "ms",
               "voiced speech of the script missing upstream", len(upload.phrases)),
        single("echo_reduction_db", echo.reduction_db_median, "dB",
               f"simulated rooms, median (least {echo.reduction_db_least:.0f} dB)",
               len(echo.rooms)),
        single("echo_false_barge_ins_per_hour", echo.false_per_hour, "/h",
               f"simulated, {echo.echo_only_s / 60:.0f} min of echo alone"),
        repeated("echo_detect_ms", echo.detect_ms, "ms",
                 f"simulated: start of speech -> turn opens ({echo.heard}/"
                 f"{echo.interruptions} heard)"),
        repeated("echo_silent_ms", echo.silent_ms, "ms",
                 "simulated: start of speech -> answer paused or stopped"),
        single("echo_false_pauses_per_hour", echo.false_pauses_per_hour, "/h",
               "simulated: answer paused 0.8 s for no one, echo alone"),
        single("reply_cpu_with_aec", echo.cpu_with_aec, "CPU-s/s",
               "simulated front end while an answer plays"),
        single("reply_cpu_without_aec", echo.cpu_without_aec, "CPU-s/s",
               "same, echo_cancellation = false"),
        single("self_interruptions", sum(self_interrupted.counts.values()), "",
               f"whole process, {sum(self_interrupted.played_s.values()):.0f} s of answer "
               f"played in {len(ROOMS)} rooms: {self_interrupted.counts}"),
        single("answer_pauses_per_minute", self_interrupted.pauses_per_minute, "/min",
               f"same answers: paused 0.8 s for a voice that was nobody's, "
               f"{self_interrupted.pauses}"),
        repeated("speech_barge_in_ms", talked_over.after_warm_up.silent_after_ms, "ms",
                 "whole process: start of speech -> speaker silent (drainer), after the "
                 "canceller's warm-up"),
        repeated("speech_barge_in_warm_up_ms", talked_over.in_warm_up.silent_after_ms, "ms",
                 f"same, in a new daemon's first {WARM_UP_S:g} s of sound (canceller learning)"),
        single("speech_barge_in_missed", talked_over.missed_share, "ratio",
               f"whole process, {len(talked_over.results)} interruptions"),
        single("speech_request_clipped", talked_over.clipped_share, "ratio",
               "interrupting requests uploaded < 95 % whole"),
        single("loop_lag_idle_ms", max(loop_lag.idle_ms), "ms",
               "worst lateness of a 10 ms timer, idle (wake phrases' catch-up)",
               len(loop_lag.idle_ms)),
        single("loop_lag_conversation_ms", max(loop_lag.conversation_ms), "ms",
               "same, connecting to the end of the answer", len(loop_lag.conversation_ms)),
        repeated("tool_call_ms", tool_call_ms, "ms",
                 "function_call item sent -> its output received (get_current_time)"),
    ]
    elapsed = time.monotonic() - began
    raw: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "plan": asdict(plan),
        "duration_seconds": round(elapsed, 1),
        "samples": {
            "rss_mb": startups.rss_mb,
            "rss_mb_openwakeword_alone": openwakeword_rss,
            "ready_seconds": startups.ready_seconds,
            "daemon_idle_cpu_percent": startups.idle_cpu_percent,
            **{name: values for name, values in asdict(latencies).items()
               if isinstance(values, list)},
            "first_sound_ms": first_sound_ms,
            "first_sound_beyond_playback_alone_ms": beyond_playback_alone_ms,
        },
        "protocol_violations": latencies.protocol_violations,
        "speaker_harness": {
            "handover_to_drain_ms": speaker.handover_to_drain_ms,
            "write_to_handover_ms": speaker.write_to_handover_ms,
            "subtracted_from_first_sound_ms": pipeline_ms,
            "playback_alone_write_to_drain_median_ms": playback_alone_ms,
            "portaudio_output_latency_ms": speaker.reported_output_latency_ms,
        },
        "receive_path_ms": {f"output_rate_{rate}": values for rate, values in receive_ms.items()},
        "receive_path_median_ms_at_24000": receive_24k,
        "upload": {
            "uploaded_seconds": upload.uploaded_seconds,
            "session_seconds": upload.session_seconds,
            "wake_to_last_answer_seconds": upload.wake_to_last_answer_seconds,
            "ratio_until_last_answer": upload.uploaded_seconds
            / upload.wake_to_last_answer_seconds,
            "phrases": upload.phrases,
        },
        "echo_rooms": echo.as_dict(),
        "speech_barge_in": {"self_interruptions": self_interrupted.counts,
                            "pauses_for_nobody": self_interrupted.pauses,
                            "answer_played_seconds": self_interrupted.played_s,
                            "interruptions": talked_over.as_dicts()},
        "frontend_cpu": {key: cpu[key] for key in (
            "idle_cpu_quiet_ratio_vs_our_always_on", "idle_cpu_speech_ratio_vs_our_always_on",
            "repetitions", "scenarios")},
        # Per scene: both processes' CPU and each thread's (without the daemon's log).
        "process_idle": {
            "seconds": idle["seconds"], "warm_up_seconds": idle["warm_up_seconds"],
            "scenes": [{key: value for key, value in scene.items() if key != "daemon_log"}
                       for scene in idle["scenes"]]},
    }
    print(table(figures))
    print(f"({raw['mode']} run, {elapsed:.0f} s; details and raw samples in "
          f"{RESULTS.relative_to(REPOSITORY)})")
    RESULTS.write_text(json.dumps(results_document(figures, machine(), raw), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
