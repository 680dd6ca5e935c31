"""Streaming sample-rate conversion of 16-bit mono PCM.

This module owns `Resampler`, a thin stateful wrapper over `soxr.ResampleStream`: audio
arrives in chunks of any size (mic periods, network deltas) and the filter state carries
across chunk edges, so chunking never clicks. When the rates are equal it is an identity and
soxr is not involved at all.

soxr runs in float32 here and the rounding back to int16 is ours: soxr's own int16 output is
dithered, so the same audio came out differently (by up to 2 LSB) depending on how it was
chunked and on what came before. In float32 the output is the same for any chunking, which
keeps playback reproducible sample for sample.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import soxr

_SAMPLE = np.dtype("<i2")  # PCM16 little-endian, as ALSA and the Realtime API carry it
_FULL_SCALE = 32768.0
_NO_SAMPLES = np.zeros(0, dtype=np.float32)


def _require_rates(in_rate: int, out_rate: int) -> None:
    if in_rate <= 0 or out_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")


def _require_whole_samples(pcm: bytes) -> None:
    if len(pcm) % _SAMPLE.itemsize:
        raise ValueError(f"PCM16 chunk has an odd length ({len(pcm)} bytes)")


def _from_pcm16(pcm: bytes) -> npt.NDArray[np.float32]:
    samples: npt.NDArray[np.float32] = np.frombuffer(pcm, dtype=_SAMPLE).astype(np.float32)
    return samples / _FULL_SCALE


def _to_pcm16(samples: npt.NDArray[np.float32]) -> bytes:
    # Resampling can overshoot full scale slightly (filter ringing): clip, don't wrap.
    scaled = np.clip(np.rint(samples * _FULL_SCALE), -32768, 32767)
    pcm: bytes = scaled.astype(_SAMPLE).tobytes()
    return pcm


class Resampler:
    """Convert int16 mono PCM bytes from `in_rate` to `out_rate`, chunk by chunk.

    Not thread-safe: use one instance from one thread.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        _require_rates(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        )

    @property
    def is_identity(self) -> bool:
        return self._stream is None

    def process(self, pcm: bytes) -> bytes:
        """Resample one chunk; the output lags by the filter delay until `flush()`."""
        _require_whole_samples(pcm)
        if self._stream is None:
            return pcm
        samples = _from_pcm16(pcm)
        return _to_pcm16(self._stream.resample_chunk(samples))

    def flush(self) -> bytes:
        """Return the tail still held in the filter and start afresh for the next signal."""
        if self._stream is None:
            return b""
        tail = _to_pcm16(self._stream.resample_chunk(_NO_SAMPLES, last=True))
        self._stream.clear()
        return tail

    def reset(self) -> None:
        """Discard everything held in the filter (e.g. when playback is flushed)."""
        if self._stream is not None:
            self._stream.clear()


# The prompt resampler's kernel: zero crossings of its low-pass on each side (its length in
# input samples grows with the downsampling ratio), the Kaiser window's beta, and the cut-off
# as a share of the lower Nyquist frequency.
_PROMPT_ZERO_CROSSINGS = 16
_PROMPT_KAISER_BETA = 8.0
_PROMPT_CUTOFF = 0.9


class PromptResampler:
    """Convert int16 mono PCM from `in_rate` to `out_rate` with under a millisecond held back.

    For the echo canceller's reference, which must be there by the time its echo is captured:
    soxr (`Resampler`) works in blocks and held back up to 37 ms of 24 kHz -> 16 kHz output
    (41 ms from 44.1 kHz, at any quality with a low-pass), and each chunk's reference then
    ended in zeros. This is a windowed-sinc interpolator whose only hold-back is half its
    kernel (1.1 ms): output sample k is the input at time k / out_rate, from the first input
    sample on, as soxr's is. Against soxr's best, 24 or 48 kHz -> 16 kHz: the same to 80 dB
    up to 6 kHz, 31 dB at 7 kHz (a gentler low-pass: plenty for a reference). It costs more
    than soxr (3.5 against 0.85 ms per second of 24 kHz audio here), only while AEC3 runs.

    Not thread-safe: use one instance from one thread.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        _require_rates(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        cutoff = _PROMPT_CUTOFF * min(1.0, out_rate / in_rate)  # of the input's Nyquist
        self._half = math.ceil(_PROMPT_ZERO_CROSSINGS / cutoff)  # kernel taps on each side
        # Output k sits at input position k * in_rate / out_rate: its whole part picks the
        # taps, its fraction (one of out_rate / gcd phases) the weights, computed once.
        step = math.gcd(in_rate, out_rate)
        self._phase_unit = step
        fractions = np.arange(out_rate // step) * step / out_rate
        offsets = np.arange(-self._half + 1, self._half + 1) - fractions[:, None]
        window = np.i0(
            _PROMPT_KAISER_BETA * np.sqrt(np.clip(1 - (offsets / self._half) ** 2, 0, None))
        ) / np.i0(_PROMPT_KAISER_BETA)
        weights = np.sinc(cutoff * offsets) * window
        self._weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
        self._taps = np.arange(-self._half + 1, self._half + 1)
        self.reset()

    def reset(self) -> None:
        """Start a new signal: its first sample is the next input's."""
        # Silence before the first sample, so output 0 can be centred on it.
        self._held = np.zeros(self._half, dtype=np.float32)
        self._held_start = -self._half  # input index of _held[0]
        self._next_out = 0  # index of the next output sample

    def process(self, pcm: bytes) -> bytes:
        """Resample one chunk: every output sample whose kernel the input now covers."""
        _require_whole_samples(pcm)
        samples = _from_pcm16(pcm)
        self._held = np.concatenate((self._held, samples))
        held_end = self._held_start + len(self._held)  # one past the last input index
        # Output k needs inputs up to floor(k * in / out) + half, so the last k whose inputs
        # exist has k * in < (held_end - half) * out.
        last = ((held_end - self._half) * self.out_rate - 1) // self.in_rate
        ks = np.arange(self._next_out, last + 1, dtype=np.int64)
        if len(ks) == 0:
            return b""
        positions = ks * self.in_rate
        whole = positions // self.out_rate
        phases = (positions % self.out_rate) // self._phase_unit
        inputs = self._held[whole[:, None] + self._taps - self._held_start]
        out = np.einsum("ij,ij->i", inputs, self._weights[phases])
        self._next_out = last + 1
        # Keep what the next output's kernel reaches back to.
        keep_from = self._next_out * self.in_rate // self.out_rate - self._half + 1
        self._held = self._held[keep_from - self._held_start :]
        self._held_start = keep_from
        return _to_pcm16(out)
