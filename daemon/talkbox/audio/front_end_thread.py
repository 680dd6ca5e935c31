"""The capture front end on a thread of its own, so the event loop never waits on it.

When voice follows silence, the gated wake word catches up on up to 2 s of audio at once
(about 25 tflite inferences); with the echo canceller and the VAD that is tens of
milliseconds on x86 and several times that on a Pi's core. On the event loop it delayed the
WebSocket, the speaker's refills, the control socket and the watchdog. Here the capture
callback hands each chunk to `submit()` (it never blocks), one thread runs the front end on
it, and only a chunk that completed events wakes the loop, with those events.

tflite releases the GIL while it infers, so the loop runs meanwhile; the Python parts of the
front end share the GIL with it in the interpreter's 5 ms slices.

While the daemon is idle (`in_pairs`), chunks are handed over two at a time. What the thread
costs idle is almost all in waking up, not in the audio: the same front end took 0.8 ms of CPU
per second of audio in a tight loop and 6.7 ms a second on this thread, 25 wake-ups a second
(python -m bench.process_idle); in pairs it took 3.3-3.7 ms. The wake word scores 80 ms at a
time, two 40 ms capture periods, so a pair that ends where its chunk ends costs the wake word
nothing; the VAD's decisions, which nobody waits for while idle, come up to 40 ms later.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable

from talkbox.audio.capture import Captured
from talkbox.audio.frontend import FrontEndEvent
from talkbox.audio.pa import ThrottledWarning

log = logging.getLogger(__name__)

# Chunks waiting for the front end before the oldest is dropped: 2 s of 40 ms chunks, more
# than a catch-up on a slow core takes; fresh audio matters more than old (as in capture).
MAX_QUEUED_CHUNKS = 50
# The thread's name, in Python and as `top -H`, `ps -L` and /proc show it (Python 3.11 gives
# no OS thread a name of its own).
THREAD_NAME = "front-end"
_PR_SET_NAME = 15


class FrontEndThread:
    """Runs `process(pcm, capture_time)` on each submitted chunk, in order, on one thread,
    and hands the events of each chunk (if any) to `deliver` on `loop`.

    `submit()` may be called from any thread (PortAudio's callback); `start()` and `stop()`
    from the loop. `last_done_at` is when a chunk was last processed (for the watchdog: a
    front end that hangs or died stops the pings); `failure` is what killed the thread.
    """

    def __init__(
        self,
        process: Callable[[bytes, float | None], list[FrontEndEvent]],
        deliver: Callable[[list[FrontEndEvent]], None],
        loop: asyncio.AbstractEventLoop,
        *,
        max_queued: int = MAX_QUEUED_CHUNKS,
    ) -> None:
        self._process = process
        self._deliver = deliver
        self._loop = loop
        self._max_queued = max_queued
        # None asks the thread to end.
        self._chunks: queue.SimpleQueue[Captured | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._stopping = False
        self.dropped = 0
        self.in_pairs = False
        """Hand chunks over two at a time (set from the loop while the daemon is idle)."""
        self._held: Captured | None = None  # the first chunk of a pair (PortAudio's thread)
        self._submitted = 0
        self.last_done_at = time.monotonic()
        self.failure: BaseException | None = None
        self._dropped_warning = ThrottledWarning(
            log, "the capture front end fell behind; dropped the oldest audio"
        )

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self.last_done_at = time.monotonic()
        self._thread.start()

    def submit(self, chunk: Captured) -> None:
        """Queue one captured chunk (never blocks; drops the oldest when too far behind)."""
        if self._stopping:  # capture may still deliver; and the end mark must not be dropped
            return
        self._submitted += 1
        if self._held is not None:
            chunk = Captured(self._held.pcm + chunk.pcm, self._held.time)
            self._held = None
        elif self.in_pairs and self._submitted % 2:
            # Pairs start on odd chunks: counted from the first, as the front end counts its
            # audio, an even chunk ends an 80 ms wake-word chunk. (After a dropped chunk or
            # a reload, the wake word may wait the 40 ms.)
            self._held = chunk
            return
        if self._chunks.qsize() >= self._max_queued:
            try:
                self._chunks.get_nowait()
            except queue.Empty:  # the thread took it meanwhile
                pass
            else:
                self.dropped += 1
        self._chunks.put(chunk)

    def stop(self, timeout: float = 2.0) -> None:
        """End the thread once the chunks queued so far are processed (idempotent)."""
        self._stopping = True
        self._chunks.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        _name_this_thread(THREAD_NAME)
        dropped_reported = 0
        while (chunk := self._chunks.get()) is not None:
            try:
                events = self._process(chunk.pcm, chunk.time)
            except Exception as exc:
                self.failure = exc
                log.exception("the capture front end failed; talkbox no longer hears anything")
                return
            self.last_done_at = time.monotonic()
            if self.dropped != dropped_reported:
                dropped_reported = self.dropped
                self._dropped_warning.note(self.dropped)
            if events:
                try:
                    self._loop.call_soon_threadsafe(self._deliver, events)
                except RuntimeError:  # the loop is closed: nobody will take them
                    return


def _name_this_thread(name: str) -> None:
    # Not on Linux, there is no prctl: the name is only for people looking.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode())
