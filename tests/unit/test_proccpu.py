"""support.proccpu: reading /proc stat and status text, and per-thread usage between readings."""

from __future__ import annotations

import os

import pytest

from support.proccpu import (
    CLOCK_TICKS_PER_SECOND,
    ProcessReading,
    ThreadReading,
    parse_stat,
    parse_switches,
    read_process,
    thread_usage,
)

TICK = 1 / CLOCK_TICKS_PER_SECOND


def stat_line(name: str, utime: int, stime: int, starttime: int) -> str:
    fields = ["S", *["0"] * 10, str(utime), str(stime), *["0"] * 6, str(starttime), "0"]
    return f"4242 ({name}) " + " ".join(fields)


def test_stat_times_are_counted_from_the_last_parenthesis() -> None:
    # A thread may name itself anything, spaces and ") " included.
    times = parse_stat(stat_line("odd) name (x", utime=150, stime=25, starttime=900))
    assert times.user == pytest.approx(150 * TICK)
    assert times.system == pytest.approx(25 * TICK)
    assert times.started == pytest.approx(900 * TICK)


def test_switches_come_from_their_two_lines() -> None:
    status = "Name:\ttalkbox\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n"
    assert parse_switches(status) == (120, 7)


def thread(tid: int, user: float, started: float = 1.0, voluntary: int = 0) -> ThreadReading:
    return ThreadReading(tid, "talkbox", user, 0.0, started, voluntary, 0)


def reading(cpu: float, *threads: ThreadReading) -> ProcessReading:
    return ProcessReading(100, cpu, 1.0, {t.tid: t for t in threads})


def test_usage_is_what_each_thread_did_in_between() -> None:
    before = reading(1.0, thread(100, 0.6, voluntary=10), thread(101, 0.4, voluntary=5))
    after = reading(1.5, thread(100, 0.9, voluntary=60), thread(101, 0.6, voluntary=30))
    usage = {u.tid: u for u in thread_usage(before, after)}
    assert usage[100].cpu_seconds == pytest.approx(0.3)
    assert usage[100].voluntary_switches == 50
    assert usage[101].cpu_seconds == pytest.approx(0.2)


def test_a_thread_started_in_between_counts_from_zero_and_a_reused_id_too() -> None:
    before = reading(1.0, thread(100, 0.6), thread(101, 0.4, started=1.2))
    after = reading(1.5, thread(100, 0.7), thread(101, 0.1, started=5.0), thread(102, 0.2,
                                                                               started=6.0))
    usage = {u.tid: u for u in thread_usage(before, after)}
    assert usage[101].cpu_seconds == pytest.approx(0.1)  # a new thread with an old one's id
    assert usage[102].cpu_seconds == pytest.approx(0.2)
    assert usage[102].started_after_process_seconds == pytest.approx(5.0)


def test_a_thread_that_ended_is_left_out() -> None:
    before = reading(1.0, thread(100, 0.6), thread(101, 0.4))
    after = reading(1.5, thread(100, 0.7))
    assert [u.tid for u in thread_usage(before, after)] == [100]


def test_reads_this_process_and_its_main_thread() -> None:
    this = read_process(os.getpid())
    assert os.getpid() in this.threads
    assert this.cpu_seconds >= this.threads[os.getpid()].user_seconds
