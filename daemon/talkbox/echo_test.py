"""`talkbox echo-test`: does the microphone hear the speaker, and does the daemon mistake it
for someone talking?

It plays a test signal (talkbox/audio/echo_test.py: speech-like sound, then a sweep, at -20
dBFS RMS) on the configured speaker while capturing the configured microphone, and runs the
daemon's own front end (`build_front_end`, with the speaker's blocks as the echo canceller's
reference, exactly as `talkbox run` wires it) on what it captures. From that recording it
reports the echo's delay and level, what the canceller leaves of it, how much of it the VAD
and the daemon's speech decision still call speech, the turns the daemon would have opened
(each a false barge-in with [conversation] barge_in = "speech"), and one verdict line.

It needs the devices to itself: with the daemon running, stop it first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import stat
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyaudio

from talkbox.audio.capture import Capture
from talkbox.audio.devices import (
    CHECK_SOUND_CARD,
    NO_SOUND_CARD,
    DeviceKind,
    list_devices,
    match_device,
)
from talkbox.audio.echo_cancel import ECHO_TAIL_S, EchoCanceller, EchoStats, SpeakerReference
from talkbox.audio.echo_test import (
    ADAPTING_S,
    CONVERGED_SHARE,
    SWEEP_S,
    TEST_SIGNAL_DBFS,
    EchoReport,
    Recording,
    analyse,
    join_stream,
    make_signal,
)
from talkbox.audio.frontend import ECHO_SPEECH_FLOOR_DBFS, VadFrame, WakeDetected
from talkbox.audio.pa import open_pyaudio
from talkbox.audio.playback import Playback
from talkbox.audio.vad import GateSpeechStarted
from talkbox.audio_format import BYTES_PER_SAMPLE, CAPTURE_PERIOD_MS
from talkbox.config import Config
from talkbox.errors import AudioDeviceError
from talkbox.shell.app import FRAME_MS, build_front_end

# The room's own noise is recorded this long before the signal (the streams settle meanwhile).
LEAD_S = 0.8
# ...and the capture goes on this long after it: the echo's delay, the room's reverberation
# and the canceller's tail, over which the daemon still holds speech to the stricter rules.
TAIL_S = ECHO_TAIL_S
# The speaker must have started the signal this long after it was queued, and the capture
# must have delivered its end this long after it should have: else a device is stuck.
_START_TIMEOUT_S = 3.0
_END_TIMEOUT_S = 5.0
STOP_THE_DAEMON = "stop the daemon first: sudo systemctl stop talkbox"


class _RecordingReference(SpeakerReference):
    """The canceller's reference, which also keeps every block for the measurement."""

    def __init__(self) -> None:
        super().__init__()
        self._kept_lock = threading.Lock()
        self.kept: list[tuple[float, bytes, bool]] = []

    def played(self, pcm: bytes, dac_time: float, audible: bool, reply: bool = False) -> None:
        super().played(pcm, dac_time, audible, reply)
        with self._kept_lock:
            self.kept.append((dac_time, pcm, audible))

    def blocks(self) -> list[tuple[float, bytes, bool]]:
        with self._kept_lock:
            return list(self.kept)


@dataclass(frozen=True)
class EchoTestRun:
    cfg: Config
    report: EchoReport
    output_latency_s: float
    input_latency_s: float
    canceller: EchoStats | None
    capture_overflows: int
    signal_dac_time: float
    """When the reference says the signal's first sample reached the DAC (time.monotonic())."""


async def _record(cfg: Config, seconds: float) -> EchoTestRun:
    audio = cfg.audio
    reference = _RecordingReference()
    front_end = build_front_end(cfg, reference)
    canceller = front_end.echo  # None with [audio] echo_cancellation = false
    front_end.monitor = True
    if front_end.wake is not None:
        front_end.wake_enabled = True  # as while an answer plays with barge_in = "wake"
    signal = make_signal(audio.output_rate, seconds)
    frames = audio.input_rate * CAPTURE_PERIOD_MS // 1000
    capture = Capture(audio.input_device, audio.input_rate, frames, asyncio.get_running_loop())
    playback = Playback(
        audio.output_device, audio.output_rate, audio.output_rate, reference=reference
    )
    captured: list[tuple[float, bytes]] = []
    cleaned: list[bytes] = []
    decisions: list[tuple[float, bool]] = []  # (16 kHz audio time of the frame's start, speech)
    turn_starts: list[float] = []  # audio times
    wakes: list[float] = []
    queued_at: float | None = None
    signal_span: tuple[float, float] | None = None
    socket = cfg.control.socket
    open_device(capture.start, "input", audio.input_device, socket)
    try:
        open_device(playback.start, "output", audio.output_device, socket)
        # The device's own rate when it does not take the configured one (audio/alsa.py):
        # the reference holds what was handed over, at that rate.
        played_rate = playback.output_rate
        played_length = len(signal) * played_rate // audio.output_rate
        try:
            while True:
                chunk = await capture.read()
                events = front_end.process(chunk.pcm, chunk.time)
                captured.append((chunk.time, chunk.pcm))
                cleaned.append(_heard(canceller, chunk.pcm))
                for event in events:
                    if isinstance(event, VadFrame):
                        decisions.append((event.audio_time - FRAME_MS / 1000, event.is_speech))
                    elif isinstance(event, GateSpeechStarted):
                        turn_starts.append(front_end.audio_time)
                    elif isinstance(event, WakeDetected):
                        wakes.append(event.audio_time)
                now = time.monotonic()
                if queued_at is None:
                    if front_end.audio_time >= LEAD_S:
                        # As when an answer starts: no turn is open (the room's noise may
                        # have opened one while the VAD settled, at the stream's start).
                        front_end.gate.reset()
                        playback.play_chime(signal.tobytes())
                        queued_at = now
                    continue
                if signal_span is None:
                    signal_span = _signal_span(reference.blocks(), played_rate, played_length)
                    if signal_span is None and now - queued_at > _START_TIMEOUT_S:
                        raise AudioDeviceError(
                            f"output device {audio.output_device!r} did not start playing "
                            f"within {_START_TIMEOUT_S:g} s"
                        )
                if signal_span is not None:
                    if chunk.time >= signal_span[1] + TAIL_S:
                        break
                    if now > signal_span[1] + TAIL_S + _END_TIMEOUT_S:
                        raise AudioDeviceError(
                            f"input device {audio.input_device!r} fell behind: its audio of "
                            "the test signal did not arrive"
                        )
        finally:
            playback.close()
    finally:
        capture.stop()
    # Placed again on all the blocks' stamps, as `played` is, now that they are all in.
    signal_span = _signal_span(reference.blocks(), played_rate, played_length)
    assert signal_span is not None
    played, played_start = join_stream(
        [(at, pcm) for at, pcm, _ in reference.blocks()], played_rate
    )
    raw, captured_start = join_stream(captured, audio.input_rate)
    recording = Recording(
        played=played,
        played_rate=played_rate,
        played_start=played_start,
        signal=signal_span,
        captured=raw,
        cleaned=np.frombuffer(b"".join(cleaned), dtype="<i2").astype(np.int16),
        capture_rate=audio.input_rate,
        captured_start=captured_start,
        decisions=[(captured_start + at, speech) for at, speech in decisions],
        turn_starts=[captured_start + at for at in turn_starts],
        wakes=[captured_start + at for at in wakes],
        aggressiveness=cfg.turn.vad_aggressiveness,
        echo_cancellation=canceller is not None,
    )
    report = analyse(recording)
    if capture.overflows:
        # Chunks were dropped as in the daemon when it falls behind: the capture after a gap
        # is placed as if it followed on, so the delay and levels are less exact.
        report = dataclasses.replace(
            report,
            notes=(
                *report.notes,
                f"the measurement fell behind the microphone and lost {capture.overflows} of its "
                f"{CAPTURE_PERIOD_MS} ms chunks: the machine was busy; run it again",
            ),
        )
    return EchoTestRun(
        cfg=cfg,
        report=report,
        output_latency_s=playback.output_latency_s,
        input_latency_s=capture.input_latency_s,
        canceller=canceller.stats if canceller is not None else None,
        capture_overflows=capture.overflows,
        signal_dac_time=signal_span[0],
    )


def _heard(canceller: EchoCanceller | None, captured: bytes) -> bytes:
    """What the front end went on with of a chunk it just took: the canceller's output while
    it runs (an odd trailing byte passes as it does in the canceller), else the chunk."""
    if canceller is None or not canceller.last_chunk_cleaned:
        return captured
    return canceller.last_cleaned + captured[len(canceller.last_cleaned) :]


def _signal_span(
    blocks: list[tuple[float, bytes, bool]], rate: int, length: int
) -> tuple[float, float] | None:
    """DAC times of the signal's start and end, once its first block was handed over: it
    starts with the first audible block (queued while nothing played, it begins a block)."""
    first = next((i for i, (_, _, audible) in enumerate(blocks) if audible), None)
    if first is None:
        return None
    _, start = join_stream([(at, pcm) for at, pcm, _ in blocks], rate)
    before = sum(len(pcm) for _, pcm, _ in blocks[:first]) // BYTES_PER_SAMPLE
    begins = start + before / rate
    return begins, begins + length / rate


def open_device(
    start: Callable[[], object], kind: DeviceKind, device: str, control_socket: str
) -> None:
    """Open a device with `start`; when that fails because the device is busy, or while the
    daemon seems to run (its control socket is there), the error says to stop the daemon."""
    try:
        start()
    except AudioDeviceError as error:
        cause = error.__cause__
        busy = (
            isinstance(cause, OSError)
            and bool(cause.args)
            and cause.args[0] == pyaudio.paDeviceUnavailable
        )
        if busy:
            raise AudioDeviceError(
                f"{kind} device {device!r} is busy (is talkbox running?): {STOP_THE_DAEMON}"
            ) from error
        if _is_socket(control_socket):
            raise AudioDeviceError(
                f"{error}\n(the daemon is running and may hold the sound card: {STOP_THE_DAEMON})"
            ) from error
        raise


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _check_devices(cfg: Config) -> None:
    """Fail early, as `talkbox devices` would, when there is no sound card or a configured
    device is not there (before the wake model loads and the room is asked to be quiet)."""
    socket = cfg.control.socket
    with open_pyaudio() as pa:
        devices = list_devices(pa)
    if not devices:
        raise AudioDeviceError(f"{NO_SOUND_CARD}\n{CHECK_SOUND_CARD}")
    audio = cfg.audio
    open_device(
        functools.partial(match_device, devices, audio.input_device, "input"),
        "input", audio.input_device, socket,
    )  # fmt: skip
    open_device(
        functools.partial(match_device, devices, audio.output_device, "output"),
        "output", audio.output_device, socket,
    )  # fmt: skip


def run_echo_test(cfg: Config, seconds: float, as_json: bool = False) -> int:
    """Play, record, measure and print; 0 once measured, whatever the verdict."""
    _check_devices(cfg)
    if not as_json:
        audio = cfg.audio
        print(
            f"playing {seconds:g} s of test sound on {audio.output_device!r} and recording "
            f"{audio.input_device!r}: keep the room quiet",
            flush=True,
        )
    run = asyncio.run(_record(cfg, seconds))
    print(json.dumps(as_dict(run), indent=2) if as_json else format_run(run))
    return 0


def as_dict(run: EchoTestRun) -> dict[str, Any]:
    """The run for `--json` (the benchmark and the tests read it)."""
    r, audio = run.report, run.cfg.audio
    return {
        "verdict": r.verdict,
        "verdict_line": r.verdict_line,
        "notes": list(r.notes),
        "delay_ms": _round(r.delay_ms),
        "delay_basis": _delay_basis(run),
        "signal_dac_time": run.signal_dac_time,
        "output_latency_ms": _round(1000 * run.output_latency_s),
        "input_latency_ms": _round(1000 * run.input_latency_s),
        "noise_dbfs": _round(r.noise_dbfs),
        "played_dbfs": _round(r.played_dbfs),
        "echo_dbfs": _round(r.echo_dbfs),
        "echo_relative_db": _round(r.echo_relative_db),
        "cleaned_dbfs": _round(r.cleaned_dbfs),
        "reduction_db": _round(r.reduction_db),
        "levels_over": f"the last {100 * CONVERGED_SHARE:.0f} % of the signal",
        "vad_aggressiveness": r.aggressiveness,
        "vad_raw_share": _round(r.vad_raw_share, 3),
        "vad_cleaned_share": _round(r.vad_cleaned_share, 3),
        "decision_share": _round(r.decision_share, 3),
        "speech_floor_dbfs": ECHO_SPEECH_FLOOR_DBFS,
        "false_starts": r.false_starts,
        "false_starts_adapting": r.false_starts_adapting,
        "adapting_seconds": ADAPTING_S if r.echo_cancellation else 0.0,
        "false_start_offsets": [round(at, 2) for at in r.false_start_offsets],
        "false_wakes": r.false_wakes,
        "clipped_share": _round(r.clipped_share, 5),
        "capture_overflows": run.capture_overflows,
        "echo_significance": _round(r.significance),
        "echo_cancellation": r.echo_cancellation,
        "canceller": (
            None
            if run.canceller is None
            else {
                "chunks_cleaned": run.canceller.chunks_cleaned,
                "short_reference_samples": run.canceller.short_reference_samples,
                "resyncs": run.canceller.resyncs,
                "steered_samples": run.canceller.steered_samples,
            }
        ),
        "signal_seconds": _round(r.signal_seconds, 2),
        "signal_dbfs": TEST_SIGNAL_DBFS,
        "input_device": audio.input_device,
        "input_rate": audio.input_rate,
        "output_device": audio.output_device,
        "output_rate": audio.output_rate,
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _delay_basis(run: EchoTestRun) -> str:
    return (
        "from when the speaker's block reached the DAC (handed to the device + the output "
        f"latency it reports, {1000 * run.output_latency_s:.0f} ms) to when the microphone's "
        f"chunk left the ADC (received - the input latency it reports, "
        f"{1000 * run.input_latency_s:.0f} ms), as the echo canceller pairs them: the "
        "acoustic delay plus the error in those reported latencies"
    )


def format_run(run: EchoTestRun) -> str:
    """The run for people: one labelled paragraph per measurement, then the verdict line."""
    r, audio = run.report, run.cfg.audio
    entries = [
        ("speaker", f"{audio.output_device!r} at {audio.output_rate} Hz, microphone "
         f"{audio.input_device!r} at {audio.input_rate} Hz"),
        ("test sound", f"{r.signal_seconds - SWEEP_S:g} s speech-like, then a {SWEEP_S:g} s "
         f"sweep, at {TEST_SIGNAL_DBFS:g} dBFS RMS: about as loud as answers ([audio] volume "
         "sets the chimes only)"),
        ("room noise", f"{r.noise_dbfs:.1f} dBFS before the sound"),
    ]  # fmt: skip
    if r.delay_ms is None:
        entries.append(("echo", f"none heard (the microphone: {r.echo_dbfs:.1f} dBFS)"))
    else:
        after = (
            f"{r.cleaned_dbfs:.1f} dBFS after it, reduced by {r.reduction_db:.1f} dB (over "
            f"the last {100 * CONVERGED_SHARE:.0f} % of the sound)"
            + (", down to the room's noise" if r.cleaned_dbfs <= r.noise_dbfs + 1.5 else "")
            if r.echo_cancellation
            else "no cancellation ([audio] echo_cancellation = false)"
        )
        adapting = (
            f" (and {r.false_starts_adapting} in the canceller's first {ADAPTING_S:g} s)"
            if r.echo_cancellation
            else ""
        )
        adapted = f" (past the canceller's first {ADAPTING_S:g} s)" if r.echo_cancellation else ""
        entries += [
            ("echo delay", f"{r.delay_ms:.0f} ms from speaker to microphone, as the echo "
             "canceller pairs them: the acoustic delay plus any error in the latencies the "
             f"devices report (output {1000 * run.output_latency_s:.0f} ms, input "
             f"{1000 * run.input_latency_s:.0f} ms)"),
            ("echo level", f"{r.echo_dbfs:.1f} dBFS before cancellation "
             f"({r.echo_relative_db:+.1f} dB against the {r.played_dbfs:.1f} dBFS played); "
             f"{after}"),
            ("voice", f"webrtcvad (aggressiveness {r.aggressiveness}) takes "
             f"{100 * r.vad_raw_share:.0f} % of the echo's 20 ms frames for speech before "
             f"cancellation, {100 * r.vad_cleaned_share:.0f} % after{adapted}"),
            ("daemon", f"decides speech (VAD + {ECHO_SPEECH_FLOOR_DBFS:g} dBFS floor) on "
             f"{100 * r.decision_share:.0f} % of them; turns it opened, each a false "
             f"barge-in: {r.false_starts}{adapting}; wake words: {r.false_wakes}"),
        ]  # fmt: skip
    entries += [("note", note) for note in r.notes]
    lines = [
        textwrap.fill(text, 100, initial_indent=f"{label:<13}", subsequent_indent=" " * 13)
        for label, text in entries
    ]
    return "\n".join([*lines, r.verdict_line])
