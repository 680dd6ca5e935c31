"""The chimes the speaker uses to talk without words, generated with numpy.

This module owns their sound: `wake` (rising two-tone: "I'm listening"), `done` (the same
two tones falling: "going back to sleep"), `error` (a low double buzz: "that failed"),
`working` (two soft ticks: a tool takes a while) and `alarm` (four bright beeps: a timer or
alarm is due).
Each note is shaped by a raised-cosine attack and release so no chime starts, ends or joins
with a click, and the whole chime is scaled so its peak is `volume` of full scale.
Pure: same arguments, same bytes; nothing is read from disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from talkbox.core.inputs import ChimeKind

_ATTACK_S = 0.010
_RELEASE_S = 0.040
_FULL_SCALE = 32767


@dataclass(frozen=True)
class Note:
    """A tone: `harmonics` are (multiple of `frequency`, relative amplitude) pairs."""

    frequency: float
    duration_s: float
    gap_after_s: float = 0.0
    harmonics: tuple[tuple[int, float], ...] = ((1, 1.0), (2, 0.15))


# A bright, soft timbre for the friendly chimes; odd harmonics make the error note buzz.
_BUZZ = ((1, 1.0), (3, 0.35), (5, 0.15))
_BEEP = ((1, 1.0), (3, 0.2))
CHIME_NOTES: dict[ChimeKind, tuple[Note, ...]] = {
    "wake": (Note(659.25, 0.09, 0.01), Note(987.77, 0.14)),  # E5 then B5
    "done": (Note(987.77, 0.09, 0.01), Note(659.25, 0.14)),  # B5 then E5
    "error": (Note(220.0, 0.12, 0.06, _BUZZ), Note(220.0, 0.12, 0.0, _BUZZ)),  # A3, twice
    # A tool is taking a while: two soft, low ticks, unlike the wake and done chimes.
    "working": (Note(523.25, 0.05, 0.12), Note(523.25, 0.05)),  # C5, twice
    # A timer or alarm is due: four quick, bright beeps, as an alarm clock; the machine
    # repeats it until the ring is stopped. Higher than every other chime, and with odd
    # harmonics it cuts through a room.
    "alarm": (Note(1046.5, 0.1, 0.06, _BEEP),) * 3 + (Note(1046.5, 0.1, 0.0, _BEEP),),  # C6
}


def _envelope(length: int, rate: int) -> npt.NDArray[np.float64]:
    """Raised-cosine attack and release: the note starts and ends at zero, with zero slope."""
    attack = min(round(_ATTACK_S * rate), length // 2)
    release = min(round(_RELEASE_S * rate), length - attack)
    envelope = np.ones(length)
    envelope[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    envelope[length - release :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 1) / release)
    return envelope


def _render(note: Note, rate: int) -> npt.NDArray[np.float64]:
    length = round(note.duration_s * rate)
    t = np.arange(length) / rate
    tone = np.zeros(length)
    for multiple, amplitude in note.harmonics:
        if note.frequency * multiple < rate / 2:  # never alias at low device rates
            tone += amplitude * np.sin(2 * np.pi * note.frequency * multiple * t)
    gap = np.zeros(round(note.gap_after_s * rate))
    return np.concatenate([tone * _envelope(length, rate), gap])


def chime(kind: ChimeKind, rate: int, volume: float) -> bytes:
    """The chime `kind` as PCM16 mono at `rate`, its peak at `volume` (0..1) of full scale."""
    if kind not in CHIME_NOTES:
        raise ValueError(f"unknown chime {kind!r}; expected one of {sorted(CHIME_NOTES)}")
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    if not 0.0 <= volume <= 1.0:
        raise ValueError(f"chime volume must be within 0..1, got {volume}")
    signal = np.concatenate([_render(note, rate) for note in CHIME_NOTES[kind]])
    peak = float(np.max(np.abs(signal)))
    scaled = signal * (volume * _FULL_SCALE / peak) if peak > 0 else signal
    pcm: bytes = np.rint(scaled).astype("<i2").tobytes()
    return pcm
