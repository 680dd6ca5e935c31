"""Resident memory of openWakeWord on its own: the floor any wake-word daemon pays.

This module owns the baseline for `rss_mb`: a fresh Python process that imports
openwakeword and loads the same model the daemon uses (hey_jarvis, tflite, with the shipped
melspectrogram and embedding models), runs it over one context's worth of silence as the
daemon does at start, says so, and idles; its VmRSS is read from /proc then.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.daemon_bench import read_rss_mb
from talkbox.audio.wake import WakeWordDetector, available_models

MODEL = "hey_jarvis"
_IDLE_SECONDS_BEFORE_READING = 1.0

_LOAD_AND_IDLE = """
import sys
import numpy as np
import openwakeword
model = openwakeword.Model(wakeword_models=[sys.argv[1]], inference_framework="tflite",
                           melspec_model_path=sys.argv[2], embedding_model_path=sys.argv[3])
silence = np.zeros(1280, dtype=np.int16)
for _ in range(int(sys.argv[4])):
    model.predict(silence)
print("loaded", flush=True)
sys.stdin.read()
"""


def _context_chunks() -> int:
    # The daemon's detector primes exactly one score context of silence; the baseline too.
    return WakeWordDetector([MODEL]).context_chunks


def openwakeword_alone_rss_mb(repetitions: int) -> list[float]:
    model_path = available_models()[MODEL]
    models_dir = model_path.parent
    args = [sys.executable, "-c", _LOAD_AND_IDLE, str(model_path),
            str(models_dir / "melspectrogram.tflite"), str(models_dir / "embedding_model.tflite"),
            str(_context_chunks())]
    samples = []
    for _ in range(repetitions):
        with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) as process:
            assert process.stdin is not None and process.stdout is not None
            if process.stdout.readline().strip() != "loaded":
                raise RuntimeError("the openWakeWord baseline process failed to load the model")
            time.sleep(_IDLE_SECONDS_BEFORE_READING)
            samples.append(read_rss_mb(process.pid))
            process.stdin.close()
            process.wait(timeout=10)
    return samples
