"""`talkbox listen`: live wake-word scores and voice activity, for tuning a real room.

It runs the daemon's own front end on the configured microphone, with the wake word always
enabled (scored, as in the daemon, wherever the VAD hears voice), and prints one line per
second (the loudest score per wake word and how much of that second the VAD called speech)
plus a line for each detection and each speech segment. Read it while talking from where
people will stand, then set [wake] threshold and [turn] vad_aggressiveness.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from talkbox.audio.capture import Capture
from talkbox.audio.frontend import VadFrame, WakeDetected, WakeScores
from talkbox.audio.vad import GateSpeechEnded, GateSpeechStarted
from talkbox.audio_format import CAPTURE_PERIOD_MS
from talkbox.config import Config
from talkbox.shell.app import build_front_end

REPORT_EVERY_SECONDS = 1.0


async def _listen(cfg: Config, seconds: float) -> None:
    front_end = build_front_end(cfg)
    front_end.monitor = True
    front_end.wake_enabled = True
    frames = cfg.audio.input_rate * CAPTURE_PERIOD_MS // 1000
    capture = Capture(
        cfg.audio.input_device, cfg.audio.input_rate, frames, asyncio.get_running_loop()
    )
    capture.start()
    print(f"listening on {cfg.audio.input_device!r} at {cfg.audio.input_rate} Hz; Ctrl-C ends")
    started = time.monotonic()
    best: dict[str, float] = {}
    speech_frames = frames_seen = 0
    next_report = REPORT_EVERY_SECONDS
    try:
        while seconds <= 0 or time.monotonic() - started < seconds:
            for event in front_end.process((await capture.read()).pcm):
                if isinstance(event, VadFrame):
                    frames_seen += 1
                    speech_frames += event.is_speech
                elif isinstance(event, WakeScores):
                    for model, score in event.scores.items():
                        best[model] = max(best.get(model, 0.0), score)
                elif isinstance(event, WakeDetected):
                    print(
                        f"{front_end.audio_time:8.2f}s  WAKE {event.model} score {event.score:.2f}"
                    )
                elif isinstance(event, GateSpeechStarted):
                    print(f"{front_end.audio_time:8.2f}s  speech started")
                elif isinstance(event, GateSpeechEnded):
                    print(f"{front_end.audio_time:8.2f}s  speech ended ({event.reason})")
            if front_end.audio_time >= next_report:
                scores = "  ".join(f"{m} {s:.2f}" for m, s in sorted(best.items())) or "-"
                share = 100 * speech_frames / max(frames_seen, 1)
                print(f"{front_end.audio_time:8.2f}s  speech {share:3.0f}%  wake {scores}")
                best.clear()
                speech_frames = frames_seen = 0
                next_report += REPORT_EVERY_SECONDS
    finally:
        capture.stop()


def listen(cfg: Config, seconds: float = 0.0) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_listen(cfg, seconds))
    return 0
