"""The front end's own thread: chunks processed in order off the loop, events handed to the
loop, the oldest audio dropped when it falls behind, and a failure kept, not swallowed."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from support.inprocess import until
from talkbox.audio.capture import Captured
from talkbox.audio.front_end_thread import FrontEndThread


def chunk(number: int) -> Captured:
    return Captured(number.to_bytes(2, "little"), float(number))


class Recorder:
    """A front end that names each chunk it saw as an event; `hold` blocks it until set."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.hold.set()
        self.busy = threading.Event()
        self.threads: set[int] = set()
        self.os_names: set[str] = set()

    def process(self, pcm: bytes, capture_time: float | None) -> list[Any]:
        self.threads.add(threading.get_ident())
        comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm")
        self.os_names.add(comm.read_text().strip())
        self.busy.set()
        self.hold.wait(10)
        return [int.from_bytes(pcm, "little")] if capture_time is not None else []


async def held_in_chunk_0(max_queued: int = 50) -> tuple[Recorder, list[Any], FrontEndThread]:
    """A started thread, stuck in chunk 0 until `recorder.hold` is set; what it delivers."""
    recorder, delivered = Recorder(), []
    recorder.hold.clear()
    thread = FrontEndThread(recorder.process, delivered.extend, asyncio.get_running_loop(),
                            max_queued=max_queued)
    thread.start()
    thread.submit(chunk(0))
    await until(recorder.busy.is_set, "the front end busy with chunk 0")
    return recorder, delivered, thread


async def test_chunks_are_processed_in_order_off_the_loop_and_events_come_back_on_it() -> None:
    recorder, delivered, delivered_on = Recorder(), [], set()

    def deliver(events: list[Any]) -> None:
        delivered.extend(events)
        delivered_on.add(threading.get_ident())

    thread = FrontEndThread(recorder.process, deliver, asyncio.get_running_loop())
    thread.start()
    for number in range(20):
        thread.submit(chunk(number))
    await until(lambda: len(delivered) == 20, "all events")
    thread.stop()

    assert delivered == list(range(20))
    assert delivered_on == {threading.get_ident()}, "events reach the machine on the loop"
    assert threading.get_ident() not in recorder.threads, "the front end ran off the loop"
    assert recorder.os_names == {"front-end"}, "top -H and ps -L show which thread it is"
    assert not thread.alive and thread.failure is None


async def test_the_loop_runs_while_the_front_end_is_busy() -> None:
    recorder, _, thread = await held_in_chunk_0()
    # While it is stuck in a chunk, the loop's own work goes on (a sleep, a timer).
    started = time.monotonic()
    await asyncio.sleep(0.05)
    waited = time.monotonic() - started
    recorder.hold.set()
    thread.stop()
    assert waited < 1.0


async def test_behind_it_drops_the_oldest_chunks_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder, delivered, thread = await held_in_chunk_0(max_queued=5)
    for number in range(1, 9):
        thread.submit(chunk(number))
    recorder.hold.set()
    await until(lambda: len(delivered) == 6, "the chunks kept")
    thread.stop()

    assert delivered == [0, 4, 5, 6, 7, 8], "the newest audio is kept"
    assert thread.dropped == 3
    assert "fell behind; dropped the oldest audio (total 3" in caplog.text


async def test_a_failing_front_end_ends_the_thread_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(pcm: bytes, capture_time: float | None) -> list[Any]:
        raise ValueError("a bug in the front end")

    thread = FrontEndThread(broken, lambda events: None, asyncio.get_running_loop())
    thread.start()
    thread.submit(chunk(1))
    await until(lambda: not thread.alive, "the thread ended")

    assert isinstance(thread.failure, ValueError)
    assert "the capture front end failed" in caplog.text
    assert "a bug in the front end" in caplog.text


async def test_chunks_after_stop_are_not_taken_and_cannot_push_out_the_end() -> None:
    recorder, delivered, thread = await held_in_chunk_0(max_queued=2)
    thread.submit(chunk(1))
    thread.stop(timeout=0)  # asked to stop while busy: chunk 1, then the end
    for number in range(2, 10):  # the microphone still delivers until it is closed
        thread.submit(chunk(number))
    recorder.hold.set()
    await until(lambda: not thread.alive, "the thread ended")

    assert delivered == [0, 1]


async def test_idle_it_hands_chunks_over_in_pairs_and_none_is_lost_when_that_ends() -> None:
    seen: list[tuple[bytes, float | None]] = []

    def process(pcm: bytes, capture_time: float | None) -> list[Any]:
        seen.append((pcm, capture_time))
        return []

    thread = FrontEndThread(process, lambda events: None, asyncio.get_running_loop())
    thread.start()
    thread.submit(chunk(1))  # not idle: on its own
    thread.in_pairs = True
    thread.submit(chunk(2))  # the second of a pair by count: not held, so pairs stay aligned
    for number in (3, 4, 5):
        thread.submit(chunk(number))
    thread.in_pairs = False  # chunk 5 is held: it goes with the next one
    thread.submit(chunk(6))
    thread.submit(chunk(7))
    await until(lambda: len(seen) == 5, "five hand-overs")
    thread.stop()

    def pcm(*numbers: int) -> bytes:
        return b"".join(chunk(number).pcm for number in numbers)

    # A pair keeps the first chunk's capture time: its audio's start.
    assert seen == [(pcm(1), 1.0), (pcm(2), 2.0), (pcm(3, 4), 3.0), (pcm(5, 6), 5.0),
                    (pcm(7), 7.0)]
