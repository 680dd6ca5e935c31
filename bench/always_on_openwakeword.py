"""Always-on openWakeWord as its own process: the baseline `bench.process_idle` measures against.

`python -m bench.always_on_openwakeword --device NAME --rate HZ --period FRAMES MODEL MEL EMBEDDING`

The plainest wake-word listener, as openWakeWord's own microphone example is written: PyAudio
opens the input device (found by name as the daemon finds it) with the given period, the loop
reads 80 ms at a time (blocking) and runs `Model.predict` (tflite) on every chunk, with no
voice activity gate. It imports openwakeword as shipped. It prints "ready" once the stream is
open, then one line per chunk that scores at or above 0.5, and runs until it is killed.
"""

from __future__ import annotations

import argparse

import numpy as np
import openwakeword
import pyaudio

from talkbox.audio.devices import find_device

CHUNK_FRAMES = 1280  # openWakeWord's step: 80 ms at 16 kHz
DETECTION_THRESHOLD = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", required=True)
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--period", type=int, required=True, help="frames per buffer")
    parser.add_argument("model")
    parser.add_argument("melspectrogram_model")
    parser.add_argument("embedding_model")
    args = parser.parse_args()
    if args.rate != 16000:
        raise SystemExit("openWakeWord listens at 16000 Hz")

    model = openwakeword.Model(wakeword_models=[args.model], inference_framework="tflite",
                               melspec_model_path=args.melspectrogram_model,
                               embedding_model_path=args.embedding_model)
    pa = pyaudio.PyAudio()
    stream = pa.open(format=pyaudio.paInt16, channels=1, rate=args.rate, input=True,
                     input_device_index=find_device(pa, args.device, "input"),
                     frames_per_buffer=args.period)
    print("ready", flush=True)
    while True:
        chunk = np.frombuffer(stream.read(CHUNK_FRAMES, exception_on_overflow=False),
                              dtype=np.int16)
        for label, score in model.predict(chunk).items():
            if score >= DETECTION_THRESHOLD:
                print(f"detection {label} {score:.3f}", flush=True)


if __name__ == "__main__":
    main()
