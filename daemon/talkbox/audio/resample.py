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

import numpy as np
import numpy.typing as npt
import soxr

_SAMPLE = np.dtype("<i2")  # PCM16 little-endian, as ALSA and the Realtime API carry it
_FULL_SCALE = 32768.0
_NO_SAMPLES = np.zeros(0, dtype=np.float32)


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
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
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
        if len(pcm) % _SAMPLE.itemsize:
            raise ValueError(f"PCM16 chunk has an odd length ({len(pcm)} bytes)")
        if self._stream is None:
            return pcm
        samples = np.frombuffer(pcm, dtype=_SAMPLE).astype(np.float32) / _FULL_SCALE
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
