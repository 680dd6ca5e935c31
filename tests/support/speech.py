"""Synthetic test audio: speech from espeak-ng, noise and silence from sox, and mixing.

Everything is mono int16 numpy arrays at a given rate. Generated audio is cached on disk,
keyed by every argument and the tool versions, so a test run pays for espeak and sox once;
the cache lives under $TALKBOX_TEST_CACHE or the system temp dir. sox runs with -R
(fixed random seed) and no dither, so the same arguments always give the same samples.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]

# Ordinary speech with no wake word in it (and nothing that sounds like "jarvis" or "alexa").
ORDINARY_SENTENCES: tuple[str, ...] = (
    "The weather today is cloudy with a chance of light rain in the afternoon.",
    "Please remember to buy milk, bread and a dozen eggs on the way home.",
    "The train to the city leaves at half past seven from platform four.",
    "I think the garden needs watering before the sun gets too strong.",
    "Our meeting has been moved to Thursday because the room was double booked.",
    "She read the whole book in one evening and then started it again.",
    "The kettle is on, so we can have a cup of tea in a few minutes.",
    "Turn left at the church and the bakery is on your right hand side.",
    "My brother plays the violin in a small orchestra near the river.",
    "We should paint the kitchen a lighter colour before the winter comes.",
    "The children built a sandcastle and the tide washed it away by noon.",
    "Dinner will be ready at six, and there is soup for anyone who is hungry.",
    "The library closes early on Sundays, so return the books on Saturday.",
    "A small dog barked at the postman every single morning last week.",
)


def cache_dir() -> Path:
    """Where generated audio is kept between test runs."""
    root = os.environ.get("TALKBOX_TEST_CACHE") or os.path.join(
        tempfile.gettempdir(), "talkbox-test-cache"
    )
    path = Path(root) / "audio"
    path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def _tool_versions() -> str:
    # A new espeak voice set or sox build may change the samples: part of the cache key.
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    sox = subprocess.run(["sox", "--version"], capture_output=True, text=True, check=True)
    return espeak.stdout.strip() + "|" + sox.stdout.strip()


def _cached(key_parts: tuple[object, ...], make: Callable[[], bytes]) -> Pcm:
    key = hashlib.sha256(repr((_tool_versions(), *key_parts)).encode()).hexdigest()[:24]
    path = cache_dir() / f"{key}.raw"
    if not path.exists():
        data = make()
        # Write then rename, so a concurrent or interrupted run never sees half a file.
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return np.frombuffer(path.read_bytes(), dtype=np.int16).copy()


def _pipeline(*commands: list[str], first_input: bytes = b"") -> Callable[[], bytes]:
    """A deferred subprocess pipeline; each command's stdout is the next one's stdin."""

    def run() -> bytes:
        data = first_input
        for command in commands:
            data = subprocess.run(command, input=data, capture_output=True, check=True).stdout
        return data

    return run


def _raw(rate: int) -> list[str]:
    """sox's description of headerless mono int16 on stdin/stdout."""
    return ["-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-r", str(rate), "-"]


def speak(
    text: str,
    voice: str = "en-us",
    speed: int = 160,
    rate: int = 16000,
    pad: tuple[float, float] = (1.0, 1.0),
) -> Pcm:
    """`text` spoken by espeak-ng, resampled to `rate`, with `pad` seconds of silence around it."""
    espeak = ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text]
    sox = ["sox", "-R", "-D", "-t", "wav", "-", *_raw(rate), "pad", str(pad[0]), str(pad[1])]
    return _cached(("speak", text, voice, speed, rate, pad), _pipeline(espeak, sox))


def pink_noise(seconds: float, rate: int = 16000, volume: float = 0.02) -> Pcm:
    """Pink noise from sox at `volume` (linear, 0.02 is about -40 dBFS RMS: a quiet room)."""
    sox = ["sox", "-R", "-D", "-n", *_raw(rate), "synth", str(seconds), "pinknoise",
           "vol", str(volume)]
    return _cached(("pinknoise", seconds, rate, volume), _pipeline(sox))


def sox_effects(pcm: Pcm, rate: int, *effects: str) -> Pcm:
    """`pcm` passed through sox effects, e.g. ("reverb", "50", "50", "80") or ("vol", "0.1")."""
    digest = hashlib.sha256(pcm.tobytes()).hexdigest()
    sox = ["sox", "-R", "-D", *_raw(rate), *_raw(rate), *effects]
    return _cached(("effects", digest, rate, effects), _pipeline(sox, first_input=pcm.tobytes()))


def silence(seconds: float, rate: int = 16000) -> Pcm:
    """Digital silence."""
    return np.zeros(round(seconds * rate), dtype=np.int16)


def concat(*parts: Pcm) -> Pcm:
    """The parts one after another."""
    return np.concatenate([np.asarray(p, dtype=np.int16) for p in parts])


def mix(*signals: Pcm) -> Pcm:
    """The signals summed sample by sample (shorter ones padded with silence), clipped to int16."""
    length = max(len(s) for s in signals)
    total = np.zeros(length, dtype=np.int32)
    for s in signals:
        total[: len(s)] += s
    return np.clip(total, -32768, 32767).astype(np.int16)


def speech_bounds(pcm: Pcm, rate: int, threshold_dbfs: float = -45.0,
                  window_ms: int = 10) -> tuple[float, float]:
    """(start, end) in seconds of the part of a clean clip louder than `threshold_dbfs`.

    Ground truth for where speech is in an espeak clip: espeak output has no background
    noise, so the first and last window above a quiet threshold bound the spoken part.
    """
    window = rate * window_ms // 1000
    usable = len(pcm) // window * window
    frames = pcm[:usable].astype(np.float64).reshape(-1, window)
    rms = np.sqrt((frames**2).mean(axis=1)) / 32768.0
    loud = np.flatnonzero(rms > 10 ** (threshold_dbfs / 20))
    if len(loud) == 0:
        raise ValueError("no speech in clip")
    return loud[0] * window / rate, (loud[-1] + 1) * window / rate


def ordinary_speech_stretch(rate: int = 16000, seconds: float = 60.0,
                            noise_volume: float = 0.01,
                            pauses: tuple[float, ...] = (0.3, 1.2, 3.0, 0.6, 2.2)) -> Pcm:
    """`seconds` of ordinary speech (several voices) with pauses, over quiet pink noise.

    Contains no wake word. The default pauses (0.3 s to 3 s) make a VAD-gated detector go
    quiet and wake up again several times; pass short ones for continuous talk.
    """
    voices = ("en-us", "en-gb", "en-us+f3", "en-gb-x-rp")
    parts: list[Pcm] = [silence(1.0, rate)]
    index = 0
    while sum(len(p) for p in parts) < seconds * rate:
        text = ORDINARY_SENTENCES[index % len(ORDINARY_SENTENCES)]
        voice = voices[index % len(voices)]
        parts.append(speak(text, voice=voice, speed=150 + 10 * (index % 3), rate=rate,
                           pad=(0.0, pauses[index % len(pauses)])))
        index += 1
    speech = concat(*parts)[: round(seconds * rate)]
    return mix(speech, pink_noise(seconds, rate, noise_volume))
