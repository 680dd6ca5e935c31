"""CPU cost of the capture front end while idle, beside always-on openWakeWord.

Run from the repository root: `python -m bench.frontend_cpu [--repetitions N]`.

Measures CPU seconds (`time.process_time`) per second of audio for
- the whole front end (`FrontEnd`: 48 kHz capture resampled to 16 and 24 kHz, webrtcvad,
  the speech gate and the VAD-gated wake detector, and the echo canceller resting while the
  idle speaker hands over silence), as the daemon runs it while idle;
- the same front end without the echo canceller (idle, it must cost nothing);
- the same front end without the wake word (what resampling + VAD + gate alone cost);
- always-on openWakeWord as shipped (`openwakeword.Model.predict` on every 80 ms chunk of
  the same audio at 16 kHz): the baseline;
- always-on `WakeWordDetector` (ours, which trims a per-chunk copy inside openWakeWord);
on 60 s of a quiet room (low pink noise) and on 60 s of continuous speech with no wake word.
Capture itself is not measured: PyAudio hands over a buffer, one memcpy per period.

Prints a table and writes bench/results/frontend_cpu.json; `idle_cpu_quiet_ratio` and
`idle_cpu_speech_ratio` are front end / always-on openWakeWord (targets: <= 0.2, <= 1.1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import openwakeword
from tests.support.speech import ordinary_speech_stretch, pink_noise

from talkbox.audio.echo_cancel import EchoCanceller, SpeakerReference
from talkbox.audio.frontend import FrontEnd
from talkbox.audio.resample import Resampler
from talkbox.audio.vad import SpeechGate, VoiceActivity
from talkbox.audio.wake import (
    CHUNK_SAMPLES,
    GatedWakeDetector,
    WakeWordDetector,
    available_models,
    resolve_model,
)

INPUT_RATE = 48000
CAPTURE_PERIOD_FRAMES = 1024  # a typical PyAudio period at 48 kHz
SECONDS = 60.0
SPEAKER_RATE = 24000
SPEAKER_BLOCK_S = 0.02  # the idle speaker hands its reference a block of silence this often
MODELS = ["hey_jarvis"]
RESULTS = Path(__file__).resolve().parent / "results" / "frontend_cpu.json"

Pcm = npt.NDArray[np.int16]


def make_frontend(with_wake: bool, with_echo: bool) -> FrontEnd:
    gate = SpeechGate(frame_ms=20, start_frames=3, silence_ms=500, prefix_padding_ms=300,
                      max_turn_ms=30000)
    wake = GatedWakeDetector(WakeWordDetector(MODELS, 0.5, {}, 2.0)) if with_wake else None
    echo = EchoCanceller(SpeakerReference(), INPUT_RATE) if with_echo else None
    if echo is not None:
        echo.reference.rate = SPEAKER_RATE
    return FrontEnd(INPUT_RATE, VoiceActivity(2), gate, wake, echo=echo)


def cpu_of(run: Callable[[], object]) -> float:
    start = time.process_time()
    run()
    return time.process_time() - start


def frontend_cpu(capture: bytes, with_wake: bool, with_echo: bool = True) -> float:
    frontend = make_frontend(with_wake, with_echo)  # model loading is start-up, not idle cost
    period = CAPTURE_PERIOD_FRAMES * 2
    period_s = CAPTURE_PERIOD_FRAMES / INPUT_RATE
    silence = bytes(2 * round(SPEAKER_RATE * SPEAKER_BLOCK_S))

    def run() -> None:
        blocks = 0
        for index, start in enumerate(range(0, len(capture), period)):
            captured_at = index * period_s
            if frontend.echo is not None:
                while blocks * SPEAKER_BLOCK_S <= captured_at + period_s:
                    frontend.echo.reference.played(silence, blocks * SPEAKER_BLOCK_S, False)
                    blocks += 1
            frontend.process(capture[start : start + period], captured_at)
        frontend.flush()

    return cpu_of(run)


def always_on_cpu(audio16k: Pcm) -> float:
    detector = WakeWordDetector(MODELS, 0.5, {}, 2.0)

    def run() -> None:
        for start in range(0, len(audio16k) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
            detector.process(audio16k[start : start + CHUNK_SAMPLES])

    return cpu_of(run)


def stock_openwakeword_cpu(audio16k: Pcm) -> float:
    models_dir = available_models()[MODELS[0]].parent
    model = openwakeword.Model(
        wakeword_models=[str(resolve_model(name)) for name in MODELS],
        inference_framework="tflite",
        melspec_model_path=str(models_dir / "melspectrogram.tflite"),
        embedding_model_path=str(models_dir / "embedding_model.tflite"),
    )

    def run() -> None:
        for start in range(0, len(audio16k) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
            model.predict(audio16k[start : start + CHUNK_SAMPLES])

    return cpu_of(run)


def measure(name: str, audio48k: Pcm, repetitions: int) -> dict[str, object]:
    capture = audio48k.tobytes()
    to16k = Resampler(INPUT_RATE, 16000)
    audio16k = np.frombuffer(to16k.process(capture) + to16k.flush(), dtype=np.int16)
    runs: dict[str, list[float]] = {"always_on_openwakeword": [], "always_on_ours": [],
                                    "frontend": [], "frontend_without_wake": [],
                                    "frontend_without_echo_canceller": []}
    # Interleaved, so a slow moment of the machine hits every variant alike.
    for _ in range(repetitions):
        runs["always_on_openwakeword"].append(stock_openwakeword_cpu(audio16k))
        runs["always_on_ours"].append(always_on_cpu(audio16k))
        runs["frontend"].append(frontend_cpu(capture, with_wake=True))
        runs["frontend_without_wake"].append(frontend_cpu(capture, with_wake=False))
        runs["frontend_without_echo_canceller"].append(
            frontend_cpu(capture, with_wake=True, with_echo=False))
    seconds = len(audio48k) / INPUT_RATE
    medians = {key: statistics.median(values) for key, values in runs.items()}
    return {
        "audio": name,
        "audio_seconds": seconds,
        "cpu_seconds": runs,
        "median_cpu_seconds": medians,
        "cpu_per_audio_second": {key: value / seconds for key, value in medians.items()},
        "ratio_to_always_on": medians["frontend"] / medians["always_on_openwakeword"],
        "ratio_to_our_always_on": medians["frontend"] / medians["always_on_ours"],
        "ratio_without_echo_canceller": medians["frontend_without_echo_canceller"]
        / medians["always_on_openwakeword"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()

    quiet = pink_noise(SECONDS, INPUT_RATE, volume=0.01)
    speech = ordinary_speech_stretch(INPUT_RATE, SECONDS, pauses=(0.3, 0.5, 0.4))
    results = [measure("quiet room (pink noise, about -54 dBFS)", quiet, args.repetitions),
               measure("continuous speech, no wake word", speech, args.repetitions)]

    print(f"CPU seconds per audio second, median of {args.repetitions} "
          f"({INPUT_RATE} Hz capture, models {MODELS})")
    header = (f"{'audio':42} {'openWakeWord':>12} {'ours':>8} {'front end':>10} "
              f"{'no wake':>8} {'no AEC':>8} {'ratio':>6} {'vs ours':>7}")
    print(header)
    print("-" * len(header))
    for result in results:
        per_second = result["cpu_per_audio_second"]
        assert isinstance(per_second, dict)
        print(f"{result['audio']!s:42} {per_second['always_on_openwakeword']:12.4f} "
              f"{per_second['always_on_ours']:8.4f} {per_second['frontend']:10.4f} "
              f"{per_second['frontend_without_wake']:8.4f} "
              f"{per_second['frontend_without_echo_canceller']:8.4f} "
              f"{result['ratio_to_always_on']:6.3f} {result['ratio_to_our_always_on']:7.3f}")
    print("openWakeWord/ours: always-on wake word alone; front end: resample + VAD + gate + "
          "gated wake + resting echo canceller;\nno wake / no AEC: the front end without the "
          "wake word / the echo canceller; ratio: front end / always-on openWakeWord.\n"
          "Capture itself is one memcpy per period, not measured.")

    report = {
        "idle_cpu_quiet_ratio": results[0]["ratio_to_always_on"],
        "idle_cpu_speech_ratio": results[1]["ratio_to_always_on"],
        "idle_cpu_quiet_ratio_vs_our_always_on": results[0]["ratio_to_our_always_on"],
        "idle_cpu_speech_ratio_vs_our_always_on": results[1]["ratio_to_our_always_on"],
        "idle_cpu_quiet_ratio_without_echo_canceller": results[0]["ratio_without_echo_canceller"],
        "idle_cpu_speech_ratio_without_echo_canceller":
            results[1]["ratio_without_echo_canceller"],
        "targets": {"idle_cpu_quiet_ratio": 0.2, "idle_cpu_speech_ratio": 1.1},
        "input_rate": INPUT_RATE,
        "capture_period_frames": CAPTURE_PERIOD_FRAMES,
        "models": MODELS,
        "repetitions": args.repetitions,
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "capture itself (PyAudio read) is one memcpy per period and is not measured",
        "scenarios": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
