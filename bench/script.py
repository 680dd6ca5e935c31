"""The microphone script of a benchmark run: audio laid end to end, with named marks.

This module owns the bookkeeping of what is said when: `ScriptBuilder` appends silence and
phrases (16 kHz PCM16) and remembers, for every phrase, where it lies and where its speech
begins and ends. Phrases are cut to their voiced part, so the script's pauses are exactly
the silences it adds. Pure: no audio is generated here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from bench.timeline import Pcm
from support.speech import speech_bounds

MIC_RATE = 16000


@dataclass(frozen=True)
class Mark:
    """One phrase in the script, in samples from the script's start."""

    label: str
    start: int
    end: int  # one past the last sample: the end of the speech
    pcm: Pcm


@dataclass
class ScriptBuilder:
    rate: int = MIC_RATE
    _parts: list[Pcm] = field(default_factory=list)
    _length: int = 0
    marks: list[Mark] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self._length / self.rate

    def silence(self, seconds: float) -> None:
        self._append(np.zeros(round(seconds * self.rate), dtype=np.int16))

    def phrase(self, label: str, pcm: Pcm) -> Mark:
        """Append the voiced part of `pcm`: espeak pads a clip with up to a few hundred ms of
        silence, which would silently lengthen every pause the script means to make."""
        begin_s, end_s = speech_bounds(pcm, self.rate)
        voiced = pcm[round(begin_s * self.rate) : round(end_s * self.rate)]
        mark = Mark(label, self._length, self._length + len(voiced), voiced)
        self.marks.append(mark)
        self._append(voiced)
        return mark

    def until(self, seconds: float) -> None:
        """Silence up to `seconds` from the start (nothing if already past it)."""
        missing = round(seconds * self.rate) - self._length
        if missing > 0:
            self._append(np.zeros(missing, dtype=np.int16))

    def labelled(self, label: str) -> list[Mark]:
        return [m for m in self.marks if m.label == label]

    def build(self) -> Pcm:
        return np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=np.int16)

    def _append(self, pcm: Pcm) -> None:
        self._parts.append(np.asarray(pcm, dtype=np.int16))
        self._length += len(pcm)
