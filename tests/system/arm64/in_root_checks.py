"""Run by tests/system/arm64_test.sh inside the arm64 root, with the installed venv's Python:
that it is an aarch64 Python, that every compiled module talkbox uses loads, and that WebRTC's
echo canceller (which the echo run leaves off) really cancels an echo on this architecture.

Prints one "ok NAME" / "FAILED NAME" line per check.
"""

from __future__ import annotations

import importlib
import platform

# The extension modules (or packages built around one) in the daemon's dependencies.
COMPILED = (
    "numpy",
    "pyaudio",
    "pydantic_core",
    "pywebrtc_audio",
    "soxr",
    "systemd.daemon",
    "systemd.journal",
    "tflite_runtime.interpreter",
    "webrtcvad",
)


def report(ok: bool, name: str) -> None:
    print(f"{'ok' if ok else 'FAILED'} {name}", flush=True)


def main() -> None:
    machine = platform.machine()
    report(machine == "aarch64", f"the venv's Python runs as {machine} (aarch64 wanted)")
    for name in COMPILED:
        try:
            importlib.import_module(name)
        except Exception as error:  # any failure to load is the finding
            report(False, f"import {name}: {type(error).__name__}: {error}")
        else:
            report(True, f"import {name}")
    echo_cancelled()


def echo_cancelled() -> None:
    """AEC3 as talkbox sets it up, on a plain echo: noise played, heard 50 ms later at half
    the level. On x86_64 it takes out about 33 dB once it has converged."""
    import numpy as np
    import pywebrtc_audio

    aec = pywebrtc_audio.AudioProcessor(
        sample_rate=16000, echo_cancellation=True, noise_suppression=True, ns_level=1
    )
    rng = np.random.default_rng(1)
    played = (rng.standard_normal(16000 * 8) * 3000).astype(np.int16)
    heard = (np.concatenate([np.zeros(800), played[:-800]]) * 0.5).astype(np.int16)
    chunks = range(0, len(played), 640)  # 40 ms, as the daemon captures
    cleaned = np.concatenate([aec.process(heard[i : i + 640], played[i : i + 640]) for i in chunks])

    def last_2s_db(pcm: np.ndarray) -> float:  # type: ignore[type-arg]
        return float(10 * np.log10(np.mean(pcm[-32000:].astype(np.float64) ** 2) + 1e-9))

    reduction = last_2s_db(heard) - last_2s_db(cleaned)
    report(reduction >= 20, f"the echo canceller takes out {reduction:.1f} dB of an echo (>= 20)")


if __name__ == "__main__":
    main()
