"""Soak: hundreds of whole conversations in one process, and nothing piles up.

The real `Daemon` on this test's event loop talks to the fake service on loopback through the
real session opener (a new WebSocket per conversation) and plays through a real `Playback` over
ALSA's file plugin, its FIFO drained far faster than real time. Time is made to pass fast, not
faked: the follow-up silence is 10 ms and the service answers at once with a short reply.

Each cycle is a whole conversation: wake -> session ready -> a spoken turn -> commit and
response -> the answer played and drained -> the follow-up silence runs out -> idle. After a
warm-up, the resident set may grow by less than 5 MB over the measured cycles (after a garbage
collection), and open file descriptors, threads and asyncio tasks must be back where they were.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from support.alsa import FifoDrainer, alsa_sandbox
from support.fake_realtime import FakeRealtimeServer
from support.inprocess import until
from talkbox.audio.playback import Playback
from talkbox.audio_format import REALTIME_RATE
from talkbox.config import AudioConfig, Config, ConversationConfig, RealtimeConfig
from talkbox.core.inputs import MicSpeechAudio, MicSpeechEnded, MicSpeechStarted, State
from talkbox.realtime.sessions import configured_sessions
from talkbox.secrets import ApiKey
from talkbox.shell.app import Daemon, build_front_end

pytestmark = [pytest.mark.slow, pytest.mark.audio]

API_KEY = "sk-soak-test-key-0123456789abcdef"
DEPLOYMENT = "gpt-realtime"
SPEAKER_RATE: Literal[24000] = 24000
DRAIN_SPEED = 40.0
WARM_UP_CYCLES = 100  # the allocator settles within ~200 cycles; growth after is tiny
MEASURED_CYCLES = 300
MAX_RSS_GROWTH_KB = 5 * 1024
CYCLE_TIMEOUT_S = 10.0
TURN_PCM = (
    (np.sin(np.arange(REALTIME_RATE * 3 // 10) * 2 * np.pi * 200 / REALTIME_RATE) * 8000)
    .astype("<i2")
    .tobytes()
)
EXPECTED_CYCLE = [
    (State.CONNECTING, "wake word"),
    (State.LISTENING, "session ready"),
    (State.RESPONDING, "end of turn"),
    (State.LISTENING, "answer played"),
    (State.IDLE, "no follow-up"),
]


def resident_kb() -> int:
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


class CountingHandler(logging.Handler):
    """Formats every record (the logging work stays in the loop) and keeps only counts, so the
    log does not grow the heap the way a capturing handler would."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.levels: Counter[str] = Counter()
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        self.levels[record.levelname] += 1
        if record.levelno >= logging.WARNING and len(self.problems) < 10:
            self.problems.append(text)


@contextmanager
def counted_logs() -> Iterator[CountingHandler]:
    logger = logging.getLogger("talkbox")
    handler = CountingHandler()
    saved = (logger.level, logger.propagate)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


async def test_hundreds_of_conversations_leave_no_trace(tmp_path: Path) -> None:
    async with FakeRealtimeServer(
        api_key=API_KEY, deployments={DEPLOYMENT}, pace_factor=float("inf"), reply_duration_ms=200
    ) as server:
        base = Config(
            realtime=RealtimeConfig(
                provider="azure",
                endpoint=server.url_base,
                deployment=DEPLOYMENT,
                api_version="",
                connect_timeout_seconds=5.0,
            ),
            audio=AudioConfig(
                input_device="mic", output_device="speaker", output_rate=SPEAKER_RATE
            ),
            conversation=ConversationConfig(follow_up_seconds=1.0),
        )
        # Below the file's 1 s minimum (model_copy skips validation): the silence after the
        # answer runs out at once, which is what makes hundreds of cycles fit in seconds.
        quick = base.conversation.model_copy(update={"follow_up_seconds": 0.01})
        cfg = base.model_copy(update={"conversation": quick})
        key = ApiKey(API_KEY, "test")
        transitions: list[tuple[State, str]] = []
        with (
            counted_logs() as logs,
            alsa_sandbox(tmp_path / "alsa", playback_fifo=True) as sandbox,
        ):
            # Keeps no audio: megabytes of it would count in the resident set being measured.
            drainer = FifoDrainer(
                sandbox.playback_path,
                rate=SPEAKER_RATE,
                speed=DRAIN_SPEED,
                tick_s=0.002,
                keep=False,
            )
            drainer.start()
            daemon_holder: list[Daemon] = []
            playback = Playback(
                "speaker",
                SPEAKER_RATE,
                REALTIME_RATE,
                on_drained=lambda: daemon_holder[0].on_playback_drained(),
            )
            try:
                playback.start()
                daemon = Daemon(
                    cfg,
                    open_session=lambda c: configured_sessions(c, key).open,
                    speaker=playback,
                    front_end=build_front_end(cfg),
                    on_state=lambda state, reason: transitions.append((state, reason)),
                )
                daemon_holder.append(daemon)

                async def one_conversation() -> None:
                    daemon.wake()
                    await until(
                        lambda: daemon.machine.state is State.LISTENING,
                        "listening",
                        CYCLE_TIMEOUT_S,
                        poll=0.001,
                    )
                    daemon.step(MicSpeechStarted(TURN_PCM[:4800]))
                    daemon.step(MicSpeechAudio(TURN_PCM[4800:]))
                    daemon.step(MicSpeechEnded())
                    await until(
                        lambda: len(transitions) >= len(EXPECTED_CYCLE),
                        "the cycle",
                        CYCLE_TIMEOUT_S,
                        poll=0.001,
                    )
                    assert transitions == EXPECTED_CYCLE, transitions
                    transitions.clear()
                    [session] = server.sessions
                    await until(
                        lambda: session.closed, "the session to close", CYCLE_TIMEOUT_S, poll=0.001
                    )
                    assert [r.status for r in session.responses] == ["completed"]
                    # The fake keeps everything it saw; only the daemon's memory is measured.
                    server.sessions.clear()

                async def quiet() -> tuple[int, list[str], int, int]:
                    # Let the last done chime play out and closed sockets be reaped.
                    await until(
                        lambda: not playback.is_playing,
                        "the speaker to go quiet",
                        CYCLE_TIMEOUT_S,
                        poll=0.001,
                    )
                    await asyncio.sleep(0.2)
                    return resident_kb(), open_fds(), thread_count(), len(asyncio.all_tasks())

                for _ in range(WARM_UP_CYCLES):
                    await one_conversation()
                rss_before, fds_before, threads_before, tasks_before = await quiet()
                started = time.monotonic()
                for _ in range(MEASURED_CYCLES):
                    await one_conversation()
                took = time.monotonic() - started
                rss_after, fds_after, threads_after, tasks_after = await quiet()
            finally:
                if daemon_holder:
                    await daemon_holder[0].shutdown()
                playback.close()
                drainer.stop()

    cycles = WARM_UP_CYCLES + MEASURED_CYCLES
    print(
        f"\nsoak: {MEASURED_CYCLES} conversations in {took:.1f} s "
        f"({took / MEASURED_CYCLES * 1000:.0f} ms each); RSS {rss_before} -> {rss_after} kB "
        f"({rss_after - rss_before:+d} kB); fds {len(fds_before)} -> {len(fds_after)}; "
        f"threads {threads_before} -> {threads_after}; tasks {tasks_before} -> {tasks_after}"
    )
    assert daemon.snapshot().conversations == cycles
    assert daemon.snapshot().last_error == ""
    assert server.protocol_violations == []
    assert logs.problems == [], logs.problems
    assert logs.levels["INFO"] >= cycles * len(EXPECTED_CYCLE)
    assert rss_after - rss_before < MAX_RSS_GROWTH_KB, (rss_before, rss_after)
    assert fds_after == fds_before
    assert threads_after == threads_before
    assert tasks_after == tasks_before
