"""The daemon benchmarks: the real `talkbox run` process on a file sound card, timed.

This module owns the scenarios that time the whole daemon, as the end-to-end tests run it
(`support.daemon.run_daemon`: PyAudio over ALSA's file plugin, a microphone FIFO fed in real
time, a speaker FIFO drained in real time, sd_notify on a socket) against the fake Realtime
service on loopback, with arrival times stamped at the server (`stamped_service`):

- `measure_startups`: start, READY=1, resident memory and CPU while idle, stop;
- `measure_cycles`: repeated "hey jarvis, <question>" (one breath) → answer → "hey jarvis,
  stop, ..." while the answer plays → second answer → back to idle; gives wake latency,
  first audio upload, end-of-turn commit latency, first sound and barge-in, per cycle;
- `measure_conversation`: one scripted three-turn conversation with natural pauses; gives
  the upload ratio and the speech that never reached the server.

Clocks: the feeder, drainer, notify listener and fake service stamp `time.monotonic()` in
this process; the daemon's log lines carry wall-clock milliseconds, mapped onto the
monotonic clock with an offset measured before and after each run (`wall_minus_monotonic`).
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from bench.script import Mark, ScriptBuilder
from bench.stamped_service import StampedRealtimeServer
from bench.timeline import (
    DrainedStream,
    Pcm,
    common_prefix_bytes,
    log_stamps,
    phrase_coverage,
    spoken_time,
    wall_to_monotonic,
)
from support.audio_match import locate, resample
from support.daemon import CAPTURE_PERIOD_FRAMES, MIC_RATE, SPEAKER_RATE, run_daemon
from support.fake_realtime import ServerThread, synthetic_reply_pcm
from support.proccpu import parse_stat
from support.procmem import read_memory
from support.speech import speak

API_KEY = "bench-key-for-the-loopback-fake-0123456789"
DEPLOYMENT = "gpt-4o-realtime-preview"
SILENCE_DURATION_MS = 500
WAKE_LOG_TEXT = "wake word hey_jarvis (score"
CONNECTING_STATUS = "STATUS=connecting to the service"
SPEAKER_BYTES_PER_SECOND = SPEAKER_RATE * 2
# Every run begins with this much silence: resident memory and idle CPU are read during it.
IDLE_LEAD_SECONDS = 3.0
IDLE_CPU_WINDOW = (0.5, 2.5)  # seconds after feeding starts
# Voices and speeds the hey_jarvis model hears reliably (testing-without-hardware.md).
VOICES: tuple[tuple[str, int], ...] = (
    ("en-us", 160), ("en-gb", 150), ("en-us+f3", 170), ("en-gb-x-rp", 160))
# "Hey jarvis, <command>" in one breath: the comma's pause.
WAKE_TO_COMMAND_PAUSE_SECONDS = 0.2
FIRST_SOUND_NEEDLE_BYTES = 4800  # the first 100 ms of a reply, to find it in the speaker stream
# Random phases are drawn over this span: two capture buffers, four speaker periods.
PHASE_SPREAD_SECONDS = 0.08
RUN_SEED = 20240501  # the pseudo-random phases and think times: the same for every bench run


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result table."""
    print(message, file=sys.stderr, flush=True)


def config_text(url_base: str, follow_up_seconds: float, *, barge_in: str = "wake",
                echo_cancellation: bool = False, log_level: str = "info",
                keep_speaker_running: bool = False) -> str:
    """The daemon's config on the harness's sound card. Without a room (support.room) its
    microphone does not hear the speaker, so there is nothing to cancel: bench.echo_room and
    bench.barge_in_live measure the canceller in rooms that echo."""
    return f"""
[realtime]
provider = "azure"
endpoint = "{url_base}"
deployment = "{DEPLOYMENT}"
api_version = ""
connect_timeout_seconds = 5.0

[turn]
detection = "local"
silence_duration_ms = {SILENCE_DURATION_MS}

[audio]
input_device = "mic"
output_device = "speaker"
input_rate = {MIC_RATE}
output_rate = {SPEAKER_RATE}
echo_cancellation = {str(echo_cancellation).lower()}
keep_speaker_running = {str(keep_speaker_running).lower()}

[conversation]
follow_up_seconds = {follow_up_seconds}
barge_in = "{barge_in}"

[control]
socket = "{{control_socket}}"

[log]
level = "{log_level}"
"""


# --- the process, from /proc -----------------------------------------------------------------


def read_rss_mb(pid: int) -> float:
    """VmRSS of a live process, in MiB."""
    return read_memory(pid).rss_mib


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (all its threads)."""
    times = parse_stat(Path(f"/proc/{pid}/stat").read_text())
    return times.user + times.system


def wall_minus_monotonic() -> float:
    """time.time() - time.monotonic(), from the tightest of several readings."""
    best_width, best_offset = float("inf"), 0.0
    for _ in range(50):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        if after - before < best_width:
            best_width, best_offset = after - before, wall - (before + after) / 2
    return best_offset


def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --- one run of the daemon -------------------------------------------------------------------


@dataclass
class DaemonRecord:
    """What one run of `talkbox run` left behind, on this process's monotonic clock."""

    started: float  # just before the process was spawned
    ready: float  # READY=1 arrived on the notify socket
    rss_mb: float
    idle_cpu_percent: float
    exit_code: int
    log: str
    feeder_writes: list[tuple[float, int]]
    drained: DrainedStream
    notify_messages: list[tuple[float, str]]
    wall_offsets: tuple[float, float]  # wall - monotonic, before and after the run
    idle_states: int

    @property
    def ready_seconds(self) -> float:
        return self.ready - self.started

    @property
    def wall_offset(self) -> float:
        return sum(self.wall_offsets) / 2

    def log_times(self, text: str) -> list[float]:
        return [wall_to_monotonic(w, self.wall_offset) for w in log_stamps(self.log, text)]

    def spoken(self, boundary_sample: int) -> float:
        return spoken_time(self.feeder_writes, boundary_sample, CAPTURE_PERIOD_FRAMES, MIC_RATE)

    def notify_times(self, text: str) -> list[float]:
        return [at for at, message in self.notify_messages if text in message.splitlines()]


def drive_daemon(url_base: str, script: Pcm, *, follow_up_seconds: float,
                 conversations: int, feed_delay_seconds: float = 0.0,
                 log_level: str = "info") -> DaemonRecord:
    """Start the daemon, feed `script` in real time, wait for `conversations` to end, stop.

    `feed_delay_seconds` after READY=1 the microphone starts: it sets the phase of the 40 ms
    capture clock against the speaker's 20 ms callbacks for this run.
    """
    with tempfile.TemporaryDirectory(prefix="talkbox-bench-") as tmp:
        offset_before = wall_minus_monotonic()
        started = time.monotonic()
        with run_daemon(Path(tmp), config_text(url_base, follow_up_seconds, log_level=log_level),
                        api_key=API_KEY) as run:
            run.wait_ready(timeout=60)
            ready = run.notify.first_time("READY=1")
            assert ready is not None
            time.sleep(feed_delay_seconds)
            feeder = run.say(script.tobytes())
            fed_at = time.monotonic()
            pid = run.process.pid
            sleep_until(fed_at + IDLE_CPU_WINDOW[0])
            cpu_start, cpu_start_at = process_cpu_seconds(pid), time.monotonic()
            sleep_until(fed_at + IDLE_CPU_WINDOW[1])
            cpu_end, cpu_end_at = process_cpu_seconds(pid), time.monotonic()
            rss_mb = read_rss_mb(pid)
            if not feeder.pcm_done.wait(timeout=len(script) / MIC_RATE + 60):
                raise RuntimeError("the microphone script was not consumed in time")
            if conversations:
                try:
                    run.wait_for_log("state idle", timeout=15, count=conversations)
                except AssertionError as error:
                    log(f"  warning: {error}; the analysis skips what did not happen")
            time.sleep(0.3)
            exit_code, _ = run.terminate(timeout=10)
            daemon_log = run.log()
            writes = list(feeder.written)
        drained = DrainedStream.of(list(run.drainer.records), SPEAKER_BYTES_PER_SECOND)
        notify_messages = list(run.notify.messages)
        offset_after = wall_minus_monotonic()
    return DaemonRecord(
        started=started, ready=ready, rss_mb=rss_mb,
        idle_cpu_percent=100 * (cpu_end - cpu_start) / (cpu_end_at - cpu_start_at),
        exit_code=exit_code, log=daemon_log, feeder_writes=writes, drained=drained,
        notify_messages=notify_messages, wall_offsets=(offset_before, offset_after),
        idle_states=daemon_log.count("state idle"))


class ThinkingReplies:
    """The fake service's reply audio per turn, after a pseudo-random "think time".

    PortAudio asks for speaker audio every 20 ms, and the daemon's end of turn falls on the
    40 ms capture clock, so without this every answer of a run would reach the daemon at the
    same phase of those callbacks, and the wait for the next one would be the same arbitrary
    number each time. A uniform 0..80 ms pause before the response (the fake calls
    `reply_pcm` just before starting it) spreads the phase evenly,
    as a real service's varying response time does. Seeded: the same run every time.
    """

    def __init__(self, audio: Callable[[int], bytes], seed: int) -> None:
        self.audio = audio
        self._random = random.Random(seed)

    def __call__(self, turn: int) -> bytes:
        time.sleep(self._random.uniform(0.0, PHASE_SPREAD_SECONDS))
        return self.audio(turn)


def start_service(reply: Callable[[int], bytes], pace_factor: float, seed: int = 0
                  ) -> tuple[StampedRealtimeServer, ServerThread]:
    server = StampedRealtimeServer(api_key=API_KEY, deployments={DEPLOYMENT},
                                   reply_pcm=ThinkingReplies(reply, seed=seed),
                                   pace_factor=pace_factor)
    return server, server.start_in_thread()


def _say(text: str, voice: str, speed: int) -> Pcm:
    return speak(text, voice=voice, speed=speed, rate=MIC_RATE, pad=(0.0, 0.0))


# --- start-up ------------------------------------------------------------------------------


@dataclass
class StartupSamples:
    ready_seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    idle_cpu_percent: list[float] = field(default_factory=list)

    def add(self, record: DaemonRecord) -> None:
        self.ready_seconds.append(record.ready_seconds)
        self.rss_mb.append(record.rss_mb)
        self.idle_cpu_percent.append(record.idle_cpu_percent)


def measure_startups(repetitions: int, samples: StartupSamples) -> None:
    """Start the daemon `repetitions` times; each idles through the silent lead, then stops."""
    _, thread = start_service(lambda turn: b"", pace_factor=10.0)
    try:
        silence = np.zeros(round((IDLE_LEAD_SECONDS + 0.2) * MIC_RATE), dtype=np.int16)
        for index in range(repetitions):
            record = drive_daemon(thread.url_base, silence, follow_up_seconds=1.0,
                                  conversations=0)
            if record.exit_code != 0:
                raise RuntimeError(f"talkbox run exited with {record.exit_code}:\n{record.log}")
            samples.add(record)
            log(f"  start {index + 1}/{repetitions}: READY after {record.ready_seconds:.2f} s, "
                f"{record.rss_mb:.0f} MiB, {record.idle_cpu_percent:.1f} % CPU idle")
    finally:
        thread.stop()


# --- latencies over repeated conversations ---------------------------------------------------


@dataclass
class LatencySamples:
    """Raw samples in milliseconds, plus what could not be measured and why."""

    wake_latency_ms: list[float] = field(default_factory=list)
    wake_latency_status_ms: list[float] = field(default_factory=list)
    barge_wake_latency_ms: list[float] = field(default_factory=list)
    connect_ms: list[float] = field(default_factory=list)
    session_update_ms: list[float] = field(default_factory=list)
    first_audio_ms: list[float] = field(default_factory=list)
    commit_latency_ms: list[float] = field(default_factory=list)
    first_sound_at_drainer_ms: list[float] = field(default_factory=list)
    barge_in_ms: list[float] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    protocol_violations: int = 0


def _match_detections(record: DaemonRecord, marks: Sequence[Mark], detections: list[float]
                      ) -> list[tuple[Mark, float, float]]:
    """(mark, end of its speech, detection) for each wake phrase that fired."""
    unused = sorted(detections)
    matched = []
    for mark in marks:
        end = record.spoken(mark.end)
        hit = next((d for d in unused if end - 0.8 <= d <= end + 2.0), None)
        if hit is not None:
            unused.remove(hit)
            matched.append((mark, end, hit))
    return matched


def _first_delta_times(server: StampedRealtimeServer, index: int) -> dict[str, float]:
    first: dict[str, float] = {}
    for kind in ("response.output_audio.delta", "response.audio.delta"):
        for at, event in server.server_events(index, kind):
            first.setdefault(str(event["response_id"]), at)
    return first


def collect_latencies(record: DaemonRecord, server: StampedRealtimeServer,
                      builder: ScriptBuilder, reply: Callable[[int], bytes],
                      out: LatencySamples) -> None:
    """Everything a run shows about latency; see the module docstring for the definitions."""
    out.protocol_violations += len(server.protocol_violations)
    detections = record.log_times(WAKE_LOG_TEXT)
    status_times = record.notify_times(CONNECTING_STATUS)
    wakes = _match_detections(record, builder.labelled("wake"), detections)
    missed = len(builder.labelled("wake")) - len(wakes)
    if missed:
        out.skipped.append(f"{missed} wake phrase(s) not detected")
    sessions = server.stamped_sessions
    for _, end, detected in wakes:
        out.wake_latency_ms.append((detected - end) * 1000)
        # The log stamp is cut to whole milliseconds; the STATUS datagram follows within one.
        status = next((t for t in status_times if detected - 0.002 <= t <= detected + 1.0), None)
        if status is not None:
            out.wake_latency_status_ms.append((status - end) * 1000)
        session = next((s for s in sessions
                        if detected <= sessions.opened[s.index] <= detected + 5.0), None)
        if session is None:
            out.skipped.append("a wake word opened no session")
            continue
        out.connect_ms.append((sessions.opened[session.index] - detected) * 1000)
        updates = server.client_events(session.index, "session.update")
        appends = server.client_events(session.index, "input_audio_buffer.append")
        if updates:
            out.session_update_ms.append((updates[0][0] - detected) * 1000)
        if appends:
            out.first_audio_ms.append((appends[0][0] - detected) * 1000)
    barges = _match_detections(record, builder.labelled("barge"), detections)
    out.barge_wake_latency_ms += [(hit - end) * 1000 for _, end, hit in barges]

    commits = sorted(at for s in sessions
                     for at, _ in server.client_events(s.index, "input_audio_buffer.commit"))
    for mark in builder.labelled("command"):
        end = record.spoken(mark.end)
        arrival = next((at for at in commits if end <= at <= end + 3.0), None)
        if arrival is None:
            out.skipped.append(f"no commit after the command at {end - record.started:.1f} s")
            continue
        out.commit_latency_ms.append((arrival - end) * 1000 - SILENCE_DURATION_MS)

    drained = record.drained
    barge_times = [hit for _, _, hit in barges]
    for session in sessions:
        first_deltas = _first_delta_times(server, session.index)
        for response in session.responses:
            sent = first_deltas.get(response.response_id)
            if sent is None or not response.audio:
                continue
            needle = bytes(response.audio[:FIRST_SOUND_NEEDLE_BYTES])
            offset = drained.find(needle, drained.offset_at(sent))
            if offset is None:
                out.skipped.append(f"reply {response.response_id} never reached the speaker")
                continue
            out.first_sound_at_drainer_ms.append((drained.time_of(offset) - sent) * 1000)
            full = reply(response.turn)
            played = common_prefix_bytes(drained.data[offset : offset + len(full)], full)
            if played >= len(full) or offset + played >= len(drained.data):
                continue  # played to the end: no barge-in on this reply
            silenced = drained.time_of(offset + played)
            barge = max((t for t in barge_times if t <= silenced), default=None)
            if barge is None or silenced - barge > 2.0:
                out.skipped.append(f"reply {response.response_id} stopped without a barge-in")
                continue
            out.barge_in_ms.append((silenced - barge) * 1000)


def cycle_script(cycles: int) -> ScriptBuilder:
    """Per cycle: "hey jarvis, <question>"; 1.7 s into the answer "hey jarvis, stop, ...";
    then silence until the second answer is played and the follow-up time runs out."""
    builder = ScriptBuilder()
    builder.silence(IDLE_LEAD_SECONDS)
    for index in range(cycles):
        voice, speed = VOICES[index % len(VOICES)]
        builder.silence(1.5)  # the wake model needs a quiet second before the phrase
        builder.phrase("wake", _say("hey jarvis", voice, speed))
        builder.silence(WAKE_TO_COMMAND_PAUSE_SECONDS)
        builder.phrase("command", _say("what is the weather like tomorrow", voice, speed))
        builder.silence(1.7)
        builder.phrase("barge", _say("hey jarvis", voice, speed))
        builder.silence(WAKE_TO_COMMAND_PAUSE_SECONDS)
        builder.phrase("command", _say("stop, and tell me a joke instead", voice, speed))
        builder.silence(3.0)
    return builder


def cycle_reply(turn: int) -> bytes:
    # A long first answer (still streaming at barge-in), a short second one.
    return synthetic_reply_pcm(6000 if turn == 1 else 1000, turn)


def measure_cycles(runs: int, cycles: int, latencies: LatencySamples,
                   startups: StartupSamples) -> None:
    """`runs` daemon runs of `cycles` cycles each. Within one run the speaker's callbacks
    keep one phase against the 40 ms capture clock (a multiple of their 20 ms), and a
    barge-in's flush always lands at that phase; each new run draws a new one."""
    builder = cycle_script(cycles)
    phases = random.Random(RUN_SEED)
    for index in range(runs):
        server, thread = start_service(cycle_reply, pace_factor=1.5, seed=RUN_SEED + index)
        try:
            log(f"  run {index + 1}/{runs}: {cycles} wake / answer / barge-in cycles, "
                f"{builder.seconds:.0f} s of audio")
            record = drive_daemon(thread.url_base, builder.build(), follow_up_seconds=1.0,
                                  conversations=cycles,
                                  feed_delay_seconds=phases.uniform(0, PHASE_SPREAD_SECONDS))
        finally:
            thread.stop()
        startups.add(record)
        collect_latencies(record, server, builder, cycle_reply, latencies)


# --- the event loop's lag ------------------------------------------------------------------


LOOP_LAG_LINE = re.compile(r"event loop lag: worst ([0-9.]+) ms while (\w+)")


@dataclass
class LoopLag:
    """The daemon's own probe (shell/loop_lag.py, on with [log] level = "debug"): the worst
    lateness of a 10 ms timer on its event loop in each stretch of a state."""

    idle_ms: list[float] = field(default_factory=list)  # a wake phrase's catch-up is in here
    conversation_ms: list[float] = field(default_factory=list)  # connecting .. responding


def measure_loop_lag(cycles: int) -> LoopLag:
    """The wake / answer / barge-in cycles once more, with the daemon's lag probe on. Each
    wake phrase follows silence, so the gated wake word catches up on its look-back then
    (about 25 inferences at once), while idle; the answers stream and play in the states of
    the conversation."""
    builder = cycle_script(cycles)
    _, thread = start_service(cycle_reply, pace_factor=1.5, seed=RUN_SEED)
    try:
        record = drive_daemon(thread.url_base, builder.build(), follow_up_seconds=1.0,
                              conversations=cycles, log_level="debug")
    finally:
        thread.stop()
    lag = LoopLag()
    for worst_ms, state in LOOP_LAG_LINE.findall(record.log):
        (lag.idle_ms if state == "idle" else lag.conversation_ms).append(float(worst_ms))
    if not lag.idle_ms or not lag.conversation_ms:
        raise RuntimeError("the daemon logged no event loop lag: is its probe on?")
    return lag


# --- function calls -------------------------------------------------------------------------


def measure_tool_calls(conversations: int) -> list[float]:
    """ms from the service sending a finished function_call item (get_current_time) to the
    daemon's function_call_output arriving: the device's part of a local tool's round trip,
    over loopback, stamped in this process (bench.stamped_service)."""
    builder = ScriptBuilder()
    builder.silence(IDLE_LEAD_SECONDS)
    for index in range(conversations):
        voice, speed = VOICES[index % len(VOICES)]
        builder.silence(1.5)
        builder.phrase("wake", _say("hey jarvis", voice, speed))
        builder.silence(WAKE_TO_COMMAND_PAUSE_SECONDS)
        builder.phrase("command", _say("what time is it", voice, speed))
        builder.silence(4.0)  # the answer, then the follow-up time runs out
    server, thread = start_service(lambda turn: synthetic_reply_pcm(1000, turn), pace_factor=1.5,
                                   seed=RUN_SEED)
    server.function_calls = [[("get_current_time", "{}")] for _ in range(conversations)]
    try:
        drive_daemon(thread.url_base, builder.build(), follow_up_seconds=1.0,
                     conversations=conversations)
    finally:
        thread.stop()
    samples = []
    for session in server.sessions:
        sent = {event["item"]["call_id"]: at for at, event in session.server_events.stamped()
                if event.get("type") == "response.output_item.done"
                and event["item"].get("type") == "function_call"}
        for at, event in session.client_events.stamped():
            item = event.get("item") if isinstance(event, dict) else None
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                samples.append((at - sent[item["call_id"]]) * 1000)
    if not samples:
        raise RuntimeError("no function call was answered: did the wake word fire?")
    return samples


# --- upload ratio and lost speech ------------------------------------------------------------


@dataclass
class UploadResult:
    uploaded_seconds: float
    session_seconds: float  # WebSocket accepted -> closed: what streaming everything uploads
    wake_to_last_answer_seconds: float  # the same without the final follow-up wait
    phrases: list[dict[str, Any]]

    @property
    def upload_ratio(self) -> float:
        return self.uploaded_seconds / self.session_seconds

    @property
    def speech_lost_ms(self) -> float:
        return float(sum(p["lost_ms"] for p in self.phrases))


CONVERSATION_REPLY_MS = 2000
# As shipped (config/talkbox.toml): the session stays open this long for a follow-up, and a
# client that streamed everything would upload the room throughout.
CONVERSATION_FOLLOW_UP_SECONDS = 8.0


def conversation_script() -> ScriptBuilder:
    """Three turns, each a question of one or two sentences with a short pause inside; the
    next turn starts about a second after the answer has been played."""
    voice, speed = VOICES[0]
    reply_s = CONVERSATION_REPLY_MS / 1000
    # End of a turn -> answer played: local silence, commit, the answer, and a margin.
    answer_s = SILENCE_DURATION_MS / 1000 + 0.1 + reply_s + 0.2
    builder = ScriptBuilder()
    builder.silence(IDLE_LEAD_SECONDS)
    builder.phrase("wake", _say("hey jarvis", voice, speed))
    builder.silence(WAKE_TO_COMMAND_PAUSE_SECONDS)
    turns = (("what is the weather like tomorrow", "and should I take an umbrella"),
             ("what about the weekend", "we want to go walking in the hills"),
             ("thank you, that is all for now",))
    for turn, sentences in enumerate(turns):
        for index, sentence in enumerate(sentences):
            if index:
                builder.silence(0.35)  # a breath between sentences: shorter than the turn end
            label = "command" if index == len(sentences) - 1 else "speech"
            builder.phrase(label, _say(sentence, voice, speed))
        if turn < len(turns) - 1:
            builder.silence(answer_s + 1.0)  # the user listens, then thinks for a second
    builder.silence(answer_s + CONVERSATION_FOLLOW_UP_SECONDS + 1.5)
    return builder


def conversation_reply(turn: int) -> bytes:
    return synthetic_reply_pcm(CONVERSATION_REPLY_MS, turn)


def measure_conversation(latencies: LatencySamples, startups: StartupSamples) -> UploadResult:
    builder = conversation_script()
    server, thread = start_service(conversation_reply, pace_factor=10.0, seed=RUN_SEED - 1)
    try:
        log(f"  three-turn conversation, {builder.seconds:.0f} s of audio")
        record = drive_daemon(thread.url_base, builder.build(),
                              follow_up_seconds=CONVERSATION_FOLLOW_UP_SECONDS, conversations=1)
    finally:
        thread.stop()
    startups.add(record)
    collect_latencies(record, server, builder, conversation_reply, latencies)
    sessions = server.stamped_sessions
    if len(sessions) != 1:
        raise RuntimeError(f"expected one session, the daemon opened {len(sessions)}:\n"
                           f"{record.log}")
    session = sessions[0]
    uploaded = np.frombuffer(bytes(session.appended_audio), dtype="<i2")
    phrases = []
    for mark in builder.labelled("speech") + builder.labelled("command"):
        spoken_24k = resample(mark.pcm, MIC_RATE, SPEAKER_RATE)
        offset, correlation = locate(uploaded, spoken_24k)
        coverage = phrase_coverage(uploaded, spoken_24k, SPEAKER_RATE, offset, correlation)
        phrases.append({"at_seconds": round(mark.start / MIC_RATE, 3),
                        "voiced_ms": coverage.voiced_ms, "lost_ms": coverage.lost_ms,
                        "correlation": round(correlation, 4)})
    opened, closed = sessions.opened[0], sessions.closed.get(0)
    if closed is None:
        raise RuntimeError("the conversation's session never closed")
    detections = record.log_times(WAKE_LOG_TEXT)
    answers_played = record.log_times("state listening (answer played)")
    wake = min(detections) if detections else opened
    last_answer = max(answers_played) if answers_played else closed
    return UploadResult(uploaded_seconds=len(uploaded) / SPEAKER_RATE,
                        session_seconds=closed - opened,
                        wake_to_last_answer_seconds=last_answer - wake, phrases=phrases)
