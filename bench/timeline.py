"""Pure arithmetic of the benchmark: turning recorded bytes and timestamps into latencies.

This module owns every conversion the daemon benchmark makes, with no I/O and no clock:

- when a sample of the fed microphone script was "spoken" (from the feeder's write times,
  counting the capture period: a period's audio exists only once the whole period is written);
- when a byte of the drained speaker stream was "played" (from the drainer's read records);
- wall-clock log stamps (millisecond, truncated) onto the monotonic clock;
- where reply audio starts and stops in the speaker stream;
- how much of a spoken phrase never reached the server;
- medians and 95th percentiles.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]

SAMPLE_BYTES = 2
_LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")
# The log keeps whole milliseconds, cut off: the true moment is on average half a ms later.
_LOG_TRUNCATION_S = 0.0005


# --- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (0..1) by linear interpolation between order statistics."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """Median and 95th percentile of repeated measurements."""

    median: float
    p95: float
    n: int
    minimum: float
    maximum: float

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "p95": self.p95, "n": self.n,
                "min": self.minimum, "max": self.maximum}


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(math.nan, math.nan, 0, math.nan, math.nan)
    return Summary(statistics.median(values), percentile(values, 0.95), len(values),
                   min(values), max(values))


# --- clocks ----------------------------------------------------------------------------------


def log_stamps(log: str, text: str) -> list[float]:
    """Wall-clock times (seconds since the epoch) of the log lines containing `text`, in order."""
    stamps = []
    for line in log.splitlines():
        match = _LOG_STAMP.match(line)
        if match and text in line:
            wall = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            stamps.append(wall + _LOG_TRUNCATION_S)
    return stamps


def wall_to_monotonic(wall: float, wall_minus_monotonic: float) -> float:
    return wall - wall_minus_monotonic


def spoken_time(writes: Sequence[tuple[float, int]], boundary_sample: int, period_frames: int,
                rate: int) -> float:
    """Monotonic time at which the fed script reached sample boundary `boundary_sample`.

    `writes` are the feeder's (time after the write, bytes) of consecutive whole periods. A
    period written at time W holds the audio of the `period_frames / rate` seconds before W,
    as a microphone's buffer does when it is handed over: the boundary e inside period k was
    spoken at W_k - (end of period k - e) / rate. So the capture period is part of any latency
    measured from here, as it is on a device with that period.
    """
    if boundary_sample <= 0:
        raise ValueError("the boundary must lie after the first sample")
    period = (boundary_sample - 1) // period_frames
    if period >= len(writes):
        raise ValueError(f"sample {boundary_sample} was never fed ({len(writes)} periods)")
    written_at = writes[period][0]
    return written_at - ((period + 1) * period_frames - boundary_sample) / rate


# --- the speaker stream ----------------------------------------------------------------------


@dataclass(frozen=True)
class DrainedStream:
    """What the speaker FIFO's drainer read: the bytes, and when each read happened."""

    data: bytes
    read_ends: npt.NDArray[np.int64]  # cumulative byte offset at the end of each read
    read_times: npt.NDArray[np.float64]  # monotonic time of each read
    bytes_per_second: float

    @classmethod
    def of(cls, records: Sequence[tuple[float, bytes]], bytes_per_second: float
           ) -> DrainedStream:
        sizes = np.array([len(chunk) for _, chunk in records], dtype=np.int64)
        return cls(b"".join(chunk for _, chunk in records), np.cumsum(sizes),
                   np.array([at for at, _ in records], dtype=np.float64), bytes_per_second)

    def time_of(self, offset: int) -> float:
        """When byte `offset` was played: a read at time t of bytes up to E played byte b at
        t - (E - b) / rate, like a DAC that finished the read's bytes just then."""
        if not 0 <= offset < len(self.data):
            raise ValueError(f"byte {offset} was never drained ({len(self.data)} bytes)")
        index = int(np.searchsorted(self.read_ends, offset, side="right"))
        end = int(self.read_ends[index])
        return float(self.read_times[index]) - (end - offset) / self.bytes_per_second

    def offset_at(self, time: float) -> int:
        """The first byte drained in a read at or after monotonic `time`."""
        index = int(np.searchsorted(self.read_times, time, side="left"))
        if index == 0:
            return 0
        return int(self.read_ends[index - 1])

    def find(self, needle: bytes, start: int = 0) -> int | None:
        """The first sample-aligned offset >= `start` where `needle` lies, or None."""
        position = self.data.find(needle, start)
        while position >= 0 and position % SAMPLE_BYTES:
            position = self.data.find(needle, position + 1)
        return None if position < 0 else position


def common_prefix_bytes(heard: bytes, reply: bytes) -> int:
    """How many bytes of `reply` `heard` repeats from its start, in whole samples."""
    length = min(len(heard), len(reply)) // SAMPLE_BYTES
    a = np.frombuffer(heard[: length * SAMPLE_BYTES], dtype="<i2")
    b = np.frombuffer(reply[: length * SAMPLE_BYTES], dtype="<i2")
    differ = np.flatnonzero(a != b)
    samples = int(differ[0]) if len(differ) else length
    return samples * SAMPLE_BYTES


# --- speech that never reached the server ----------------------------------------------------


@dataclass(frozen=True)
class PhraseCoverage:
    """How much of one spoken phrase the server received."""

    voiced_ms: float
    lost_ms: float
    offset: int  # sample offset of the best alignment in the uploaded audio
    correlation: float


def _normalized_correlation(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    denominator = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b)) / denominator if denominator > 0 else 0.0


def phrase_coverage(uploaded: Pcm, phrase: Pcm, rate: int, aligned_offset: int,
                    correlation: float, *, block_ms: int = 10, voiced_peak: int = 300,
                    match: float = 0.8) -> PhraseCoverage:
    """Voiced 10 ms blocks of `phrase` (at `rate`) missing from `uploaded` at the alignment.

    A block counts as voiced when its peak exceeds `voiced_peak` (espeak speech has digital
    silence between words), and as received when the uploaded block at the same place
    correlates above `match` with it (the daemon resamples with a streaming filter, so the
    samples are close but not identical to an offline resampling).
    """
    block = rate * block_ms // 1000
    voiced = lost = 0
    for start in range(0, len(phrase) - block + 1, block):
        spoken = phrase[start : start + block].astype(np.float64)
        if np.max(np.abs(spoken)) <= voiced_peak:
            continue
        voiced += 1
        at = aligned_offset + start
        received = uploaded[at : at + block].astype(np.float64) if at >= 0 else spoken[:0]
        if len(received) < block or _normalized_correlation(spoken, received) < match:
            lost += 1
    return PhraseCoverage(voiced * block_ms, lost * block_ms, aligned_offset, correlation)
