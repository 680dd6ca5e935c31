"""A stop phrase through the daemon's shell: the real `Daemon`, the real session opener and
websockets, the fake service on loopback transcribing the turn as "Stop." a little late.

What only the shell can get wrong: the machine sends response.cancel and the truncate and
closes the conversation in one step, and those events must reach the service before the
socket closes, even when the sender is still busy with an earlier event (each send here
takes 50 ms, as on a slow uplink). The speaker is a recorder (no sound card) and the front
end is left out: the turn is driven with the front end's events, as `test_faults.py` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest

from support.fake_parts import FakeSpeaker
from support.fake_realtime import FakeRealtimeServer
from support.inprocess import DEPLOYMENT, quick_daemon_config, until
from talkbox.audio_format import REALTIME_RATE
from talkbox.config import Config
from talkbox.core.events import ClientEvent, ServerEvent
from talkbox.core.inputs import MicSpeechAudio, MicSpeechEnded, MicSpeechStarted, State
from talkbox.realtime.sessions import configured_sessions
from talkbox.secrets import ApiKey
from talkbox.shell.app import Daemon, Session, SessionOpener

API_KEY = "sk-stop-phrase-key-0123456789"
# 600 ms of a voiced-like tone at the upload rate: loud enough for the fake's server VAD.
TURN_PCM = (
    (np.sin(np.arange(REALTIME_RATE * 6 // 10) * 2 * np.pi * 180 / REALTIME_RATE) * 8000)
    .astype("<i2")
    .tobytes()
)
PREROLL_BYTES = REALTIME_RATE * 3 // 10 * 2


class NoFrontEnd:
    """The daemon only sets `wake_enabled` on it here: no audio is captured."""

    wake_enabled = False

    def process(self, captured: bytes) -> list[object]:
        return []


class SlowSends:
    """A session whose every send takes SEND_SECONDS before it goes out."""

    SEND_SECONDS = 0.05

    def __init__(self, session: Session) -> None:
        self._session = session

    async def send(self, event: ClientEvent) -> None:
        await asyncio.sleep(self.SEND_SECONDS)
        await self._session.send(event)

    def events(self) -> AsyncIterator[ServerEvent]:
        return self._session.events()

    async def close(self) -> None:
        await self._session.close()

    def abort(self) -> None:
        self._session.abort()


def slow_opener(cfg: Config, key: ApiKey) -> SessionOpener:
    open_real = configured_sessions(cfg, key).open

    async def open_slow() -> Session:
        return SlowSends(await open_real())

    return open_slow


def config(endpoint: str, detection: str) -> Config:
    cfg = quick_daemon_config(endpoint)
    realtime = cfg.realtime.model_copy(update={"transcription_model": "gpt-4o-mini-transcribe"})
    turn = cfg.turn.model_copy(update={"detection": detection})
    return cfg.model_copy(update={"realtime": realtime, "turn": turn})


@asynccontextmanager
async def daemon_and_service(detection: str) -> AsyncIterator[tuple[Daemon, FakeRealtimeServer,
                                                                    FakeSpeaker]]:
    # A 5 s answer streamed at real time: still going when the transcript comes 300 ms late.
    async with FakeRealtimeServer(
        api_key=API_KEY,
        deployments={DEPLOYMENT},
        pace_factor=1.0,
        reply_duration_ms=5000,
        input_transcript=lambda turn: "Stop.",
        input_transcript_delay_ms=300,
    ) as server:
        speaker = FakeSpeaker(lambda: None)
        key = ApiKey(API_KEY, "test")
        daemon = Daemon(
            config(server.url_base, detection),
            open_session=lambda cfg: slow_opener(cfg, key),
            speaker=speaker,
            front_end=NoFrontEnd(),  # type: ignore[arg-type]
        )
        try:
            yield daemon, server, speaker
        finally:
            await daemon.shutdown()


@pytest.mark.parametrize("detection", ["local", "server_vad"])
async def test_stop_heard_late_cancels_and_truncates_before_the_session_closes(
    detection: str,
) -> None:
    async with daemon_and_service(detection) as (daemon, server, speaker):
        daemon.wake()
        await until(lambda: daemon.machine.state is State.LISTENING, "listening")
        daemon.step(MicSpeechStarted(TURN_PCM[:PREROLL_BYTES]))
        daemon.step(MicSpeechAudio(TURN_PCM[PREROLL_BYTES:]))
        daemon.step(MicSpeechEnded())
        await until(lambda: bool(server.sessions) and server.sessions[0].closed, "the close")
        assert daemon.machine.state is State.IDLE
        session = server.sessions[0]
        kinds = [e.get("type") for e in session.client_events if isinstance(e, dict)]
        [response] = session.responses
        # Both arrived and were acted on; the close right behind them may leave the service
        # no time to say response.done ("interrupted"), as a real close would.
        assert kinds[-2:] == ["response.cancel", "conversation.item.truncate"], kinds
        assert response.status in ("cancelled", "interrupted")
        [truncate] = session.truncates
        assert truncate.item_id == response.item_id and truncate.applied_ms == 0
        assert session.client_events_of("response.cancel")[0]["response_id"] == (
            response.response_id
        )
        assert len(session.client_events_of("response.create")) == (detection == "local")
        assert session.close_code == 1000
        assert [t.transcript for t in session.input_transcripts] == ["Stop."]
        # Of the 5 s answer, the speaker was given what came before the transcript.
        assert 0 < len(speaker.written) < 2 * REALTIME_RATE * 2
        assert server.protocol_violations == []
