"""Find one recording inside another: normalised cross-correlation, for end-to-end checks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

Pcm = npt.NDArray[np.int16]


def as_pcm(data: bytes | Pcm) -> Pcm:
    if isinstance(data, bytes):
        return np.frombuffer(data[: len(data) & ~1], dtype=np.int16)
    return data


def resample(pcm: Pcm, in_rate: int, out_rate: int) -> Pcm:
    out: Pcm = soxr.resample(pcm, in_rate, out_rate).astype(np.int16)
    return out


def locate(haystack: bytes | Pcm, needle: bytes | Pcm) -> tuple[int, float]:
    """(sample offset, correlation coefficient 0..1) where `needle` best matches `haystack`."""
    hay = as_pcm(haystack).astype(np.float64)
    ndl = as_pcm(needle).astype(np.float64)
    if len(ndl) == 0 or len(hay) < len(ndl):
        return 0, 0.0
    size = 1 << int(np.ceil(np.log2(len(hay) + len(ndl))))
    corr = np.fft.irfft(np.fft.rfft(hay, size) * np.conj(np.fft.rfft(ndl, size)), size)
    corr = corr[: len(hay) - len(ndl) + 1]
    # Energy of each haystack window, for normalising.
    cumulative = np.concatenate([[0.0], np.cumsum(hay * hay)])
    window_energy = cumulative[len(ndl) :] - cumulative[: len(hay) - len(ndl) + 1]
    denominator = np.sqrt(np.maximum(window_energy, 1e-9) * float(np.dot(ndl, ndl)))
    score = corr / denominator
    offset = int(np.argmax(score))
    return offset, float(score[offset])


def voiced_seconds(pcm: bytes | Pcm, rate: int, threshold: int = 300) -> float:
    """Seconds of 10 ms blocks whose peak exceeds `threshold` (not silence)."""
    samples = as_pcm(pcm)
    block = rate // 100
    usable = len(samples) // block * block
    peaks = np.abs(samples[:usable].reshape(-1, block).astype(np.int32)).max(axis=1)
    return float(np.count_nonzero(peaks > threshold)) / 100.0


def uploaded_share(request: Pcm, uploads: list[bytes], request_rate: int = 16000,
                   upload_rate: int = 24000) -> float:
    """The share of `request`'s voiced samples that one of `uploads` holds (0 if none holds
    it). Its second half is found in the upload; where the whole request would begin there
    then says whether its first syllables were uploaded too."""
    at_upload_rate = resample(request, request_rate, upload_rate)
    half = len(at_upload_rate) // 2
    found = [locate(upload, at_upload_rate[half:]) for upload in uploads]
    if not found:
        return 0.0
    offset, match = max(found, key=lambda item: item[1])
    if match < 0.5:
        return 0.0
    voiced = np.abs(at_upload_rate.astype(np.int32)) > 300
    missing = voiced[: max(0, half - offset)].sum()
    return float(1.0 - missing / max(1, voiced.sum()))
