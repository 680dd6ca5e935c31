"""The benchmark's verdict: targets, the one printed table, and the results document.

This module owns how figures are judged and presented. It is pure: `Figure`s in, text and a
JSON-ready dict out. A figure measured many times is judged on its median, except where the
target names another statistic (barge-in is judged on its 95th percentile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bench.timeline import Summary, summarize

Statistic = Literal["median", "p95", "value"]


@dataclass(frozen=True)
class Target:
    limit: float
    statistic: Statistic
    equal: bool = False  # the figure must equal `limit` (speech lost: exactly 0)

    def describe(self) -> str:
        what = "" if self.statistic in ("median", "value") else f"{self.statistic} "
        return f"{what}{'=' if self.equal else '<='} {self.limit:g}"

    def met_by(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value == self.limit if self.equal else value <= self.limit


TARGETS: dict[str, Target] = {
    "idle_cpu_quiet_ratio": Target(0.2, "value"),
    "idle_cpu_speech_ratio": Target(1.1, "value"),
    # Issue 14: the whole `talkbox run` process beside an always-on openWakeWord process.
    "process_idle_quiet_ratio": Target(0.15, "value"),
    "process_idle_speech_ratio": Target(1.0, "value"),
    # Issue 15: idle unchanged with a timer pending (its own cost: raw process_idle_alarm_vs_quiet).
    "process_idle_alarm_ratio": Target(0.15, "value"),
    "first_audio_ms": Target(150, "median"),
    "commit_latency_ms": Target(40, "median"),
    "first_sound_ms": Target(30, "median"),
    "barge_in_ms": Target(150, "p95"),
    "upload_ratio": Target(0.5, "value"),
    "speech_lost_ms": Target(0, "value", equal=True),
    # Issue 13: speech barge-in through the whole process (bench.barge_in_live).
    "self_interruptions": Target(0, "value", equal=True),
    "speech_barge_in_ms": Target(300, "p95"),
    "speech_barge_in_missed": Target(0.05, "value"),
    "speech_request_clipped": Target(0.05, "value"),
    # Issue 14: the whole process lean, and no stalls on its event loop.
    "rss_mb": Target(100, "median"),
    "loop_lag_idle_ms": Target(10, "value"),
    "loop_lag_conversation_ms": Target(10, "value"),
    # Issue 15: a local tool's call answered.
    "tool_call_ms": Target(5, "median"),
}

# The keys of results.json, in order; "machine" and "raw" come after them.
FIGURE_KEYS: tuple[str, ...] = (
    "idle_cpu_quiet_ratio", "idle_cpu_speech_ratio", "process_idle_quiet_ratio",
    "process_idle_speech_ratio", "process_idle_alarm_ratio", "rss_mb", "rss_mb_openwakeword_alone",
    "ready_seconds", "wake_latency_ms", "first_audio_ms", "commit_latency_ms", "first_sound_ms",
    "barge_in_ms", "upload_ratio", "speech_lost_ms", "echo_reduction_db",
    "echo_false_barge_ins_per_hour", "echo_detect_ms", "echo_silent_ms",
    "echo_false_pauses_per_hour", "reply_cpu_with_aec",
    "reply_cpu_without_aec", "self_interruptions", "answer_pauses_per_minute",
    "speech_barge_in_ms",
    "speech_barge_in_warm_up_ms", "speech_barge_in_missed", "speech_request_clipped",
    "loop_lag_idle_ms", "loop_lag_conversation_ms", "tool_call_ms",
)
# Figures reported as {median, p95, n, min, max}; the others are single numbers.
DISTRIBUTIONS = frozenset({"tool_call_ms", "ready_seconds", "wake_latency_ms", "first_audio_ms",
                           "commit_latency_ms", "first_sound_ms", "barge_in_ms",
                           "echo_detect_ms", "echo_silent_ms", "speech_barge_in_ms",
                           "speech_barge_in_warm_up_ms"})


@dataclass(frozen=True)
class Figure:
    key: str
    summary: Summary  # a single value is a summary of one sample
    unit: str
    note: str = ""

    @property
    def judged_value(self) -> float:
        target = TARGETS.get(self.key)
        if target is not None and target.statistic == "p95":
            return self.summary.p95
        return self.summary.median

    def verdict(self) -> str:
        target = TARGETS.get(self.key)
        if target is None:
            return ""
        return "PASS" if target.met_by(self.judged_value) else "MISS"

    def result(self) -> float | int | dict[str, float | int | None] | None:
        if self.key in DISTRIBUTIONS:
            return {k: _rounded(v) for k, v in self.summary.as_dict().items()}
        return _rounded(self.summary.median)


def single(key: str, value: float, unit: str, note: str = "", n: int = 1) -> Figure:
    return Figure(key, Summary(value, value, n, value, value), unit, note)


def repeated(key: str, values: Sequence[float], unit: str, note: str = "") -> Figure:
    return Figure(key, summarize(values), unit, note)


def _rounded(value: float | int) -> float | int | None:
    """JSON-friendly: 4 decimals, and null for a figure that could not be measured."""
    if isinstance(value, int):
        return value
    return None if math.isnan(value) else round(value, 4)


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit in ("ms", "%"):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    if unit == "MiB":
        return f"{value:.1f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def table(figures: Sequence[Figure]) -> str:
    """The one table: figure, median, p95, samples, target, PASS/MISS, and a note."""
    header = (f"{'figure':27} {'median':>8} {'p95':>8} {'unit':>5} {'n':>4}  "
              f"{'target':14} {'result':6}  note")
    lines = [header, "-" * len(header)]
    for figure in figures:
        target = TARGETS.get(figure.key)
        many = figure.key in DISTRIBUTIONS
        p95 = _number(figure.summary.p95, figure.unit) if many else ""
        lines.append(
            f"{figure.key:27} {_number(figure.summary.median, figure.unit):>8} {p95:>8} "
            f"{figure.unit:>5} {figure.summary.n:>4}  "
            f"{target.describe() if target else '':14} {figure.verdict():6}  {figure.note}")
    return "\n".join(lines)


def results_document(figures: Sequence[Figure], machine: dict[str, Any],
                     raw: dict[str, Any]) -> dict[str, Any]:
    by_key = {f.key: f for f in figures}
    missing = [k for k in FIGURE_KEYS if k not in by_key]
    if missing:
        raise ValueError(f"figures missing from the results: {missing}")
    document: dict[str, Any] = {key: by_key[key].result() for key in FIGURE_KEYS}
    document["machine"] = machine
    raw = dict(raw)
    raw["targets"] = {key: {"limit": t.limit, "statistic": t.statistic, "equal": t.equal}
                      for key, t in TARGETS.items()}
    raw["verdicts"] = {f.key: f.verdict() for f in figures if f.verdict()}
    document["raw"] = raw
    return document
