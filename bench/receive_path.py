"""The daemon's own share of first-sound latency: one reply delta from frame to speaker queue.

This module owns a profile of the code path a `response.output_audio.delta` takes inside
the daemon, with talkbox's real parts in this process: `ServerEventDecoder.decode` (JSON and
base64 of a 100 ms delta, as the fake service sends it), `ConversationMachine.step` (in a
conversation that is waiting for the answer), and `Playback.write` on the same kind of file
sound card the daemon uses. What it cannot include: the socket read (loopback, tens of
microseconds) and the wait for PortAudio's next callback (at most one period, 20 ms, on a
sound card and on the test speaker alike, see `speaker_calibration`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import time
from pathlib import Path

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from support.alsa import FifoDrainer, alsa_sandbox
from support.fake_realtime import synthetic_reply_pcm
from talkbox.audio.playback import Playback
from talkbox.core.conversation import ConversationMachine, MachineConfig
from talkbox.core.events import ResponseCreated
from talkbox.core.inputs import (
    MicSpeechAudio,
    MicSpeechEnded,
    MicSpeechStarted,
    PlayAudio,
    ServerEventReceived,
    SessionReady,
    State,
    WakeWord,
)
from talkbox.realtime.protocol import ServerEventDecoder

REPLY_RATE = 24000
DELTA_MS = 100
FLUSH_EVERY = 10  # keep the speaker queue short, as a barge-in or the end of a reply would


def _delta_frame(index: int, pcm: bytes) -> str:
    return json.dumps({
        "type": "response.output_audio.delta", "event_id": f"event_{index:021d}",
        "response_id": "resp_000000000000000000001", "item_id": "item_000000000000000000001",
        "output_index": 0, "content_index": 0, "delta": base64.b64encode(pcm).decode("ascii")})


def _machine_waiting_for_an_answer() -> ConversationMachine:
    machine = ConversationMachine(MachineConfig())
    turn = bytes(REPLY_RATE * 2)  # one second of the user's turn
    for event in (WakeWord("hey_jarvis"), SessionReady(1), MicSpeechStarted(turn[:9600]),
                  MicSpeechAudio(turn[9600:]), MicSpeechEnded(),
                  ServerEventReceived(1, ResponseCreated("resp_000000000000000000001"))):
        machine.step(event, time.monotonic())
    if machine.state is not State.RESPONDING:
        raise RuntimeError(f"the machine is {machine.state}, not waiting for an answer")
    return machine


async def _profile(directory: Path, deltas: int, output_rate: int) -> list[float]:
    with alsa_sandbox(directory, capture_fifo=True, playback_fifo=True) as sandbox:
        mic_fd = os.open(sandbox.capture_path, os.O_RDWR)  # see speaker_calibration
        drainer = FifoDrainer(sandbox.playback_path, rate=output_rate)
        drainer.start()
        playback = Playback("speaker", output_rate, REPLY_RATE)
        try:
            playback.start()
            decoder = ServerEventDecoder()
            machine = _machine_waiting_for_an_answer()
            pcm = synthetic_reply_pcm(DELTA_MS)
            frames = [_delta_frame(i, pcm) for i in range(deltas)]
            costs = []
            for index, frame in enumerate(frames):
                started = time.perf_counter()
                event = decoder.decode(frame)
                assert event is not None
                for action in machine.step(ServerEventReceived(1, event), time.monotonic()):
                    if isinstance(action, PlayAudio):
                        playback.write(action.pcm)
                costs.append((time.perf_counter() - started) * 1000)
                if index % FLUSH_EVERY == FLUSH_EVERY - 1:
                    playback.flush()
                await asyncio.sleep(0.002)  # let the callback thread run, as in the daemon
        finally:
            playback.close()
            drainer.stop()
            os.close(mic_fd)
    return costs


def profile_receive_path(deltas: int, output_rate: int = REPLY_RATE) -> list[float]:
    """Milliseconds from a received delta frame to its audio in the speaker queue, per delta."""
    with tempfile.TemporaryDirectory(prefix="talkbox-bench-receive-") as tmp:
        return asyncio.run(_profile(Path(tmp) / "alsa", deltas, output_rate))
