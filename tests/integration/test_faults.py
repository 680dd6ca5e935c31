"""Fault injection: the daemon against a failing service, and a microphone that dies mid-run.

Network faults run the real `Daemon` on this test's event loop with the real session opener
(`realtime.sessions.configured_sessions`: endpoint rules, `open_session`, real websockets)
against the fake service on loopback, and a real `Playback` over ALSA's file plugin whose FIFO
is drained at
`DRAIN_SPEED` times real time, so the chimes are really played and heard byte for byte. The
turn is driven through `Daemon.wake()` and the front end's events (`Daemon.step(MicSpeech...)`).

For every fault the test asserts: the daemon is back in IDLE within a stated bound, the error
chime was played, exactly one log line at WARNING or above says what happened and what to do,
re-wakes right after the failure do not hammer the service (backoff answers them with the error
chime; a failure that cannot fix itself is tried once per wake, never automatically), and once
the fault is gone the next wake holds a whole conversation. The jitter of the daemon's backoff is
pinned at its maximum so the retry times are known (`Backoff(rand=...)`, an input by design).

The audio fault runs the real `Service` in-process on a capture device that dies a few periods
after each start, like a loose USB plug, and checks backoff, the withheld watchdog (on a real
notify socket) and recovery once the ALSA config points the device name at a working one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import trustme

from support.alsa import (
    FifoDrainer,
    FifoFeeder,
    alsa_sandbox,
    capture_pcm,
    failing_capture_pcm,
)
from support.daemon import NotifyListener
from support.fake_realtime import FakeRealtimeServer, InjectedError
from support.inprocess import DEPLOYMENT, quick_daemon_config, until
from talkbox.audio.chimes import chime
from talkbox.audio.frontend import FrontEnd
from talkbox.audio.playback import Playback
from talkbox.audio_format import REALTIME_RATE
from talkbox.config import (
    Config,
    parse_config,
)
from talkbox.core.inputs import MicSpeechAudio, MicSpeechEnded, MicSpeechStarted, State
from talkbox.core.retry import Backoff
from talkbox.realtime.connection import MAX_FRAME_BYTES
from talkbox.realtime.sessions import configured_sessions
from talkbox.secrets import ApiKey
from talkbox.shell.app import Daemon, Session, SessionOpener, build_front_end
from talkbox.shell.service import CAPTURE_PROVEN_SECONDS, Service, real_parts

pytestmark = pytest.mark.audio

API_KEY = "sk-fault-injection-key-0123456789"
SPEAKER_RATE: Literal[24000] = 24000
DRAIN_SPEED = 8.0  # the speaker's FIFO is drained this many times faster than real time
CONNECT_TIMEOUT_S = 1.0  # the config's minimum: bounds TCP+TLS+upgrade, and then set-up
# Bound for faults noticed at once (refused, DNS, TLS, HTTP status, error event, drop): no
# timer involved, so this is generous for a loaded 2-core machine.
PROMPT_IDLE_S = 2.0
# Past a timeout, the daemon must be idle within this; a polite close of a silent peer (2 s)
# would not fit.
TIMEOUT_SLACK_S = 1.0
ERROR_CHIME = chime("error", SPEAKER_RATE, 0.6)
# The user's turn: 400 ms of a voiced-like tone at the upload rate, 300 ms of it as pre-roll.
TURN_PCM = (
    (np.sin(np.arange(REALTIME_RATE * 4 // 10) * 2 * np.pi * 180 / REALTIME_RATE) * 8000)
    .astype("<i2")
    .tobytes()
)
PREROLL_BYTES = REALTIME_RATE * 3 // 10 * 2
WAIT_S = 10.0  # how long any single expected thing may take before the test gives up


@pytest.fixture(scope="module")
def front_end() -> FrontEnd:
    """The real front end with the real wake model; it is never fed audio here, so one serves
    every test (loading the model takes about a second)."""
    return build_front_end(quick_daemon_config("http://127.0.0.1:9"))


@dataclass
class Transition:
    at: float
    state: State
    reason: str


@dataclass
class Rig:
    """The daemon under test and what can be observed of it from outside."""

    drainer: FifoDrainer
    attempts: list[float] = field(default_factory=list)  # when a session was asked for
    transitions: list[Transition] = field(default_factory=list)
    key: list[ApiKey] = field(default_factory=list)  # what the opener uses; [0] can be fixed
    _daemon: Daemon | None = None

    @property
    def daemon(self) -> Daemon:
        assert self._daemon is not None
        return self._daemon

    def on_state(self, state: State, reason: str) -> None:
        self.transitions.append(Transition(time.monotonic(), state, reason))

    def on_drained(self) -> None:
        self.daemon.on_playback_drained()

    def make_opener(self, cfg: Config) -> SessionOpener:
        real = configured_sessions(cfg, self.key[0]).open

        async def open_counted() -> Session:
            self.attempts.append(time.monotonic())
            session: Session = await real()
            return session

        return open_counted

    def error_chimes_heard(self) -> int:
        return self.drainer.data().count(ERROR_CHIME)

    async def until_idle(self, after: int, timeout: float = WAIT_S) -> Transition:
        """The first IDLE transition at index >= `after`."""
        await until(
            lambda: any(t.state is State.IDLE for t in self.transitions[after:]),
            "IDLE",
            timeout,
        )
        return next(t for t in self.transitions[after:] if t.state is State.IDLE)

    async def until_state(self, state: State, timeout: float = WAIT_S) -> None:
        await until(lambda: self.daemon.machine.state is state, state.value, timeout)

    async def until_error_chimes(self, count: int) -> None:
        await until(lambda: self.error_chimes_heard() >= count, f"{count} error chime(s)")


@asynccontextmanager
async def running_daemon(
    tmp_path: Path, cfg: Config, front_end: FrontEnd, key: str = API_KEY
) -> AsyncIterator[Rig]:
    with alsa_sandbox(tmp_path / "alsa", playback_fifo=True) as sandbox:
        drainer = FifoDrainer(sandbox.playback_path, rate=SPEAKER_RATE, speed=DRAIN_SPEED)
        drainer.start()
        rig = Rig(drainer, key=[ApiKey(key, "test")])
        playback = Playback("speaker", SPEAKER_RATE, REALTIME_RATE, on_drained=rig.on_drained)
        try:
            playback.start()
            daemon = Daemon(
                cfg,
                open_session=rig.make_opener,
                speaker=playback,
                front_end=front_end,
                on_state=rig.on_state,
            )
            # Maximum jitter: retry delays are exactly 1, 2, 4 ... s, so timings are known.
            daemon.machine.backoff = Backoff(rand=lambda: 1.0)
            rig._daemon = daemon
            try:
                yield rig
            finally:
                await daemon.shutdown()
        finally:
            playback.close()
            drainer.stop()


def speak_turn(daemon: Daemon) -> None:
    """What the front end reports for one spoken turn: speech starts, goes on, ends."""
    daemon.step(MicSpeechStarted(TURN_PCM[:PREROLL_BYTES]))
    daemon.step(MicSpeechAudio(TURN_PCM[PREROLL_BYTES:]))
    daemon.step(MicSpeechEnded())


def problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The daemon's records at WARNING or above.

    Left out: the fake service's own records, and the speaker's underrun warning. The FIFO is
    drained DRAIN_SPEED times faster than real time, so an answer streamed at the fake's pace
    can run dry between two deltas; that says how fast the test plays, not what failed.
    """
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.name.startswith("talkbox")
        and not r.name.startswith("talkbox.tests")
        and not (r.name == "talkbox.audio.playback" and "output ran dry" in r.getMessage())
    ]


async def converse(rig: Rig, server: FakeRealtimeServer) -> None:
    """A whole conversation: wake, a turn, the answer played to the end, idle after silence."""
    first = len(rig.transitions)
    sessions_before = len(server.sessions)
    rig.daemon.wake()
    await rig.until_state(State.LISTENING)
    speak_turn(rig.daemon)
    idle = await rig.until_idle(first)
    reasons = [(t.state, t.reason) for t in rig.transitions[first:]]
    assert reasons == [
        (State.CONNECTING, "wake word"),
        (State.LISTENING, "session ready"),
        (State.RESPONDING, "end of turn"),
        (State.LISTENING, "answer played"),
        (State.IDLE, "no follow-up"),
    ], reasons
    assert idle.reason == "no follow-up"
    session = server.sessions[sessions_before]
    [response] = session.responses
    assert response.status == "completed"
    chunk = server.chunk_ms * REALTIME_RATE // 1000 * 2
    pieces = [bytes(response.audio[i : i + chunk]) for i in range(0, len(response.audio), chunk)]
    await until(lambda: heard_in_order(pieces, rig.drainer.data()), "the answer to be heard")
    assert rig.daemon.machine.backoff.consecutive_failures == 0
    assert server.protocol_violations == []


def heard_in_order(pieces: list[bytes], heard: bytes) -> bool:
    """Whether every piece was played, whole and in order (an underrun may put silence between
    the service's audio deltas, never inside one)."""
    position = 0
    for piece in pieces:
        found = heard.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


async def wake_and_fail(rig: Rig) -> float:
    """Wake the daemon (the fault hits while connecting); return when the wake happened."""
    started = time.monotonic()
    rig.daemon.wake()
    return started


async def answer_then_fail(rig: Rig, fault: Callable[[], Awaitable[None]] | None = None) -> float:
    """Wake and speak a turn; `fault` runs once the answer streams. Returns when the fault began
    (the end of the turn when the fault was armed in advance)."""
    rig.daemon.wake()
    await rig.until_state(State.LISTENING)
    speak_turn(rig.daemon)
    started = time.monotonic()
    if fault is not None:
        await until(lambda: rig.daemon.machine.playing, "the answer to start")
        started = time.monotonic()
        await fault()
    return started


async def assert_fails_once(
    rig: Rig,
    caplog: pytest.LogCaptureFixture,
    provoke: Callable[[], Awaitable[float]],
    *,
    idle_within: float,
    log_says: tuple[str, ...],
) -> None:
    """Provoke the fault: IDLE in time, the error chime, one log line saying what and what to do."""
    first = len(rig.transitions)
    chimes = rig.error_chimes_heard()
    caplog.clear()
    started = await provoke()
    idle = await rig.until_idle(first, timeout=idle_within + WAIT_S)
    assert idle.at - started <= idle_within, f"IDLE after {idle.at - started:.2f} s"
    await rig.until_error_chimes(chimes + 1)
    lines = problems(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    for words in log_says:
        assert words in message, message
    assert lines[0].exc_info is None, "a fault is a sentence, not a traceback"


async def assert_rewakes_are_refused(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Within the backoff, wakes are answered by the error chime and no connection attempt."""
    attempts = len(rig.attempts)
    for n in range(3):
        assert rig.daemon.machine.backoff.remaining(time.monotonic()) > 0.1
        chimes = rig.error_chimes_heard()
        caplog.clear()
        rig.daemon.wake()
        assert rig.daemon.machine.state is State.IDLE
        await rig.until_error_chimes(chimes + 1)
        [line] = problems(caplog)
        assert "not connecting for another" in line.getMessage()
        assert "after 1 failed attempt:" in line.getMessage(), (n, line.getMessage())
    assert len(rig.attempts) == attempts, "a wake during backoff must not connect"


async def assert_each_rewake_tries_once(rig: Rig) -> None:
    """A failure that cannot fix itself: no automatic retry, one attempt per wake, each chimed."""
    assert rig.daemon.machine.backoff.remaining(time.monotonic()) == 0.0
    for _ in range(3):
        attempts, first = len(rig.attempts), len(rig.transitions)
        chimes = rig.error_chimes_heard()
        rig.daemon.wake()
        await rig.until_idle(first)
        await rig.until_error_chimes(chimes + 1)
        assert len(rig.attempts) == attempts + 1
    await asyncio.sleep(0.5)
    assert rig.daemon.machine.state is State.IDLE, "nothing retries on its own"


async def wait_out_backoff(rig: Rig) -> None:
    await asyncio.sleep(rig.daemon.machine.backoff.remaining(time.monotonic()) + 0.05)


# --- a front for the fake service that refuses, relays or trickles ------------------------------


TRICKLE_INTERVAL_S = 1.0


class SlowFront:
    """A raw TCP front for the fake service, on a port bound from the start.

    Until `listen()`, connections to `port` are refused (bound, not listening). Then each new
    connection is relayed to the fake according to `mode` at the time it arrives: "relay"
    passes bytes both ways at once; "trickle" passes the service's bytes on one a second;
    "trickle_after_handshake" passes the HTTP upgrade answer at once and then trickles.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.mode: Literal["relay", "trickle", "trickle_after_handshake"] = "relay"
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self._socket)

    async def close(self) -> None:
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        else:
            self._socket.close()

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self.connections += 1
        mode = self.mode
        try:
            service_in, service_out = await asyncio.open_connection(
                "127.0.0.1", self._upstream_port
            )
            pumps = [
                asyncio.ensure_future(self._pass(client_in, service_out, "relay")),
                asyncio.ensure_future(self._pass(service_in, client_out, mode)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                service_out.close()
        except (OSError, asyncio.CancelledError):
            pass  # the client left, or close() ended the relay: this connection is done
        finally:
            client_out.close()
            self._handlers.discard(handler)

    @staticmethod
    async def _pass(
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        mode: Literal["relay", "trickle", "trickle_after_handshake"],
    ) -> None:
        head = b""
        in_head = mode == "trickle_after_handshake"
        while data := await source.read(65536):
            if in_head:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                sink.write(head[: end + 4])
                await sink.drain()
                data, in_head = head[end + 4 :], False
            if mode == "relay":
                sink.write(data)
                await sink.drain()
                continue
            for index in range(len(data)):
                sink.write(data[index : index + 1])
                await sink.drain()
                await asyncio.sleep(TRICKLE_INTERVAL_S)


@pytest.fixture
async def server() -> AsyncIterator[FakeRealtimeServer]:
    async with FakeRealtimeServer(api_key=API_KEY, deployments={DEPLOYMENT}) as fake:
        yield fake


@pytest.fixture
async def front(server: FakeRealtimeServer) -> AsyncIterator[SlowFront]:
    slow_front = SlowFront(server.port)
    try:
        yield slow_front
    finally:
        await slow_front.close()


# --- faults while connecting ------------------------------------------------------------------


async def test_refused_connection(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    front: SlowFront,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = quick_daemon_config(f"http://127.0.0.1:{front.port}")  # nothing listens there yet
    async with running_daemon(tmp_path, cfg, front_end) as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: wake_and_fail(rig),
            idle_within=PROMPT_IDLE_S,
            log_says=("refused the connection", "check realtime.endpoint"),
        )
        await assert_rewakes_are_refused(rig, caplog)
        await front.listen()  # the service is back on that port
        await wait_out_backoff(rig)
        await converse(rig, server)
        assert len(rig.attempts) == 2 and front.connections == 1


async def test_dns_failure_then_the_endpoint_is_corrected(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # .invalid never resolves (RFC 6761); https, because plain http is only for loopback.
    cfg = quick_daemon_config("https://talkbox-fault.invalid")
    async with running_daemon(tmp_path, cfg, front_end) as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: wake_and_fail(rig),
            idle_within=PROMPT_IDLE_S,
            log_says=("could not resolve the host name", "spelling of realtime.endpoint"),
        )
        await assert_rewakes_are_refused(rig, caplog)
        # The user fixes the endpoint and reloads: the next wake tries at once, backoff or not.
        rig.daemon.reload(quick_daemon_config(server.url_base))
        assert rig.daemon.machine.backoff.remaining(time.monotonic()) == 0.0
        await converse(rig, server)
        assert len(rig.attempts) == 2


async def test_tls_certificate_that_cannot_be_verified(
    tmp_path: Path,
    front_end: FrontEnd,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    async with FakeRealtimeServer(
        api_key=API_KEY, deployments={DEPLOYMENT}, ssl=server_context
    ) as tls_server:
        cfg = quick_daemon_config(tls_server.url_base)  # https://127.0.0.1:PORT
        async with running_daemon(tmp_path, cfg, front_end) as rig:
            await assert_fails_once(
                rig,
                caplog,
                lambda: wake_and_fail(rig),
                idle_within=PROMPT_IDLE_S,
                log_says=("TLS certificate", "could not be verified", "CA certificates"),
            )
            await assert_rewakes_are_refused(rig, caplog)
            assert tls_server.sessions == []
            # The CA certificates are fixed (OpenSSL reads SSL_CERT_FILE at each new context).
            ca_file = tmp_path / "ca.pem"
            authority.cert_pem.write_to_path(str(ca_file))
            monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
            await wait_out_backoff(rig)
            await converse(rig, tls_server)
            assert len(rig.attempts) == 2


async def test_http_401_wrong_key_is_not_retried_until_the_key_is_fixed(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = quick_daemon_config(server.url_base)
    async with running_daemon(tmp_path, cfg, front_end, key="sk-a-wrong-key-0000000000") as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: wake_and_fail(rig),
            idle_within=PROMPT_IDLE_S,
            log_says=("HTTP 401", "check the key from test"),
        )
        assert "next attempt" not in problems(caplog)[0].getMessage()
        await assert_each_rewake_tries_once(rig)
        assert [r.status for r in server.rejected_handshakes] == [401] * 4
        # The right key is installed and the daemon reloaded (what Service.reload does).
        rig.key[0] = ApiKey(API_KEY, "test")
        rig.daemon.reload(cfg)
        await converse(rig, server)
        assert len(rig.attempts) == 5


async def test_http_404_wrong_deployment(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.deployments = {"someone-elses-deployment"}
    async with running_daemon(tmp_path, quick_daemon_config(server.url_base), front_end) as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: wake_and_fail(rig),
            idle_within=PROMPT_IDLE_S,
            log_says=("HTTP 404", "does not exist", "check realtime.deployment"),
        )
        await assert_each_rewake_tries_once(rig)
        server.deployments.add(DEPLOYMENT)  # the deployment is created
        await converse(rig, server)
        assert [r.status for r in server.rejected_handshakes] == [404] * 4


async def test_http_429_at_the_handshake(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.faults.reject_handshake_status = 429
    async with running_daemon(tmp_path, quick_daemon_config(server.url_base), front_end) as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: wake_and_fail(rig),
            idle_within=PROMPT_IDLE_S,
            log_says=("HTTP 429", "rate-limiting", "next attempt allowed in 1.0 s"),
        )
        await assert_rewakes_are_refused(rig, caplog)
        assert len(server.rejected_handshakes) == 1
        server.faults.reject_handshake_status = None
        await wait_out_backoff(rig)
        await converse(rig, server)


async def test_no_session_created_times_out(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.faults.skip_session_created = True
    async with running_daemon(tmp_path, quick_daemon_config(server.url_base), front_end) as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: wake_and_fail(rig),
            # The set-up timeout; the connection is dropped at once, not closed politely.
            idle_within=CONNECT_TIMEOUT_S + TIMEOUT_SLACK_S,
            log_says=("sent no session.created within 1 s", "try again later"),
        )
        await assert_rewakes_are_refused(rig, caplog)
        assert len(server.sessions) == 1
        await until(lambda: server.sessions[0].closed, "the abandoned socket to be closed")
        server.faults.skip_session_created = False
        await wait_out_backoff(rig)
        await converse(rig, server)


@pytest.mark.parametrize(
    ("mode", "log_says"),
    [
        ("trickle", ("could not reach", "within 1 s")),
        ("trickle_after_handshake", ("sent no session.created within 1 s",)),
    ],
)
async def test_a_service_that_trickles_one_byte_a_second(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    front: SlowFront,
    caplog: pytest.LogCaptureFixture,
    mode: Literal["trickle", "trickle_after_handshake"],
    log_says: tuple[str, ...],
) -> None:
    await front.listen()
    front.mode = mode
    cfg = quick_daemon_config(f"http://127.0.0.1:{front.port}")
    async with running_daemon(tmp_path, cfg, front_end) as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: wake_and_fail(rig),
            # The connect or the set-up timeout; the silent peer is dropped, not waited on.
            idle_within=CONNECT_TIMEOUT_S + TIMEOUT_SLACK_S,
            log_says=log_says,
        )
        await assert_rewakes_are_refused(rig, caplog)
        assert front.connections == 1
        front.mode = "relay"  # the path to the service is healthy again
        await wait_out_backoff(rig)
        await converse(rig, server)
        assert front.connections == 2


# --- faults in the middle of an answer --------------------------------------------------------


async def test_server_error_instead_of_an_answer(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.faults.error_instead_of_response = InjectedError(
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
    )
    async with running_daemon(tmp_path, quick_daemon_config(server.url_base), front_end) as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: answer_then_fail(rig),
            idle_within=PROMPT_IDLE_S,
            log_says=("service error server_error", "next attempt allowed in 1.0 s"),
        )
        await assert_rewakes_are_refused(rig, caplog)
        await wait_out_backoff(rig)
        await converse(rig, server)  # the injected error was one-shot: the fault is gone
        assert len(rig.attempts) == 2


async def test_rate_limit_error_event(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.faults.error_instead_of_response = InjectedError(
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
        type="rate_limit_error",
    )
    async with running_daemon(tmp_path, quick_daemon_config(server.url_base), front_end) as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: answer_then_fail(rig),
            idle_within=PROMPT_IDLE_S,
            log_says=("rate_limit_exceeded", "next attempt allowed in 1.0 s"),
        )
        await assert_rewakes_are_refused(rig, caplog)
        await wait_out_backoff(rig)
        await converse(rig, server)


async def test_connection_dropped_without_a_close_frame_mid_answer(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.faults.drop_after_audio_deltas = 2
    async with running_daemon(tmp_path, quick_daemon_config(server.url_base), front_end) as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: answer_then_fail(rig),
            idle_within=PROMPT_IDLE_S,
            log_says=("dropped without a close frame", "check the network"),
        )
        assert server.sessions[0].dropped
        await assert_rewakes_are_refused(rig, caplog)
        await wait_out_backoff(rig)
        await converse(rig, server)


async def test_a_frame_larger_than_the_client_accepts(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.pace_factor = 2.0  # the answer is still streaming when the huge frame comes
    oversized = '{"type": "rate_limits.updated", "rate_limits": [], "x": "'
    oversized += "A" * (MAX_FRAME_BYTES + 1024) + '"}'

    async def send_oversized() -> None:
        await server.send_raw(oversized)

    async with running_daemon(tmp_path, quick_daemon_config(server.url_base), front_end) as rig:
        await assert_fails_once(
            rig,
            caplog,
            lambda: answer_then_fail(rig, send_oversized),
            idle_within=PROMPT_IDLE_S,
            log_says=(
                f"sent a message larger than talkbox accepts ({MAX_FRAME_BYTES // 2**20} MiB)",
                "reconnect",
            ),
        )
        await until(lambda: server.sessions[0].closed, "the session to be closed")
        assert server.sessions[0].close_code == 1009  # talkbox said why: message too big
        await assert_rewakes_are_refused(rig, caplog)
        server.pace_factor = 10.0
        await wait_out_backoff(rig)
        await converse(rig, server)


# --- faults that are not failures of the conversation ---------------------------------------------


async def test_session_expired_mid_answer_ends_the_conversation_without_an_error(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The service's maximum session length (error session_expired, then close 1001) is a
    # normal end: done chime, no backoff, and the next wake simply opens a new session.
    server.pace_factor = 2.0

    async def expire() -> None:
        await server.expire_sessions()

    async with running_daemon(tmp_path, quick_daemon_config(server.url_base), front_end) as rig:
        caplog.set_level(logging.INFO, logger="talkbox")
        caplog.clear()
        started = await answer_then_fail(rig, expire)
        idle = await rig.until_idle(0)
        assert idle.at - started <= PROMPT_IDLE_S
        assert idle.reason == "the service's session time limit was reached"
        assert problems(caplog) == []
        said = [r for r in caplog.records if "session time limit" in r.getMessage()]
        assert len(said) == 1
        assert server.sessions[0].close_code == 1001
        done_chime = chime("done", SPEAKER_RATE, 0.6)
        await until(lambda: done_chime in rig.drainer.data(), "the done chime")
        assert rig.error_chimes_heard() == 0
        assert rig.daemon.machine.backoff.remaining(time.monotonic()) == 0.0
        server.pace_factor = 10.0
        await converse(rig, server)


async def test_a_malformed_frame_is_skipped_and_the_answer_still_plays(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The decoder's contract: one frame that is not JSON never ends a conversation. It is
    # counted and logged once, without its payload, and the answer around it plays.
    server.faults.malformed_json_before_response = True
    async with running_daemon(tmp_path, quick_daemon_config(server.url_base), front_end) as rig:
        caplog.clear()
        await converse(rig, server)
        [line] = problems(caplog)
        assert line.getMessage().startswith("ignored malformed server frame: not valid JSON")
        assert rig.error_chimes_heard() == 0
        await converse(rig, server)
        assert len(problems(caplog)) == 1


# --- no hot loop over a few seconds of wakes ----------------------------------------------------


@pytest.mark.slow
async def test_wakes_for_seconds_against_a_dead_service_make_few_attempts(
    tmp_path: Path,
    front_end: FrontEnd,
    server: FakeRealtimeServer,
    front: SlowFront,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A wake every 0.2 s for 4.5 s against a refused port: backoff (1, 2, 4 s) lets through
    # the first wake, one at 1 s and one at 3 s; every other wake is answered by a chime.
    cfg = quick_daemon_config(f"http://127.0.0.1:{front.port}")
    async with running_daemon(tmp_path, cfg, front_end) as rig:
        started = time.monotonic()
        wakes = 0
        while time.monotonic() - started < 4.5:
            chimes = rig.error_chimes_heard()
            rig.daemon.wake()
            wakes += 1
            await rig.until_error_chimes(chimes + 1)
            await asyncio.sleep(max(0.0, started + wakes * 0.2 - time.monotonic()))
        offsets = [round(at - started, 1) for at in rig.attempts]
        assert len(rig.attempts) == 3, offsets
        assert offsets[1] >= 1.0 and offsets[2] >= offsets[1] + 2.0, offsets
        assert rig.error_chimes_heard() == wakes >= 20
        refused = [r for r in problems(caplog) if "not connecting for another" in r.getMessage()]
        assert len(refused) == wakes - 3
        assert rig.daemon.machine.backoff.consecutive_failures == 3
        await front.listen()
        await wait_out_backoff(rig)
        await converse(rig, server)


# --- the microphone dies mid-run ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_capture_device_that_keeps_dying_is_retried_with_backoff_and_recovers(
    tmp_path: Path,
    notify_listener: NotifyListener,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="talkbox")
    fifo = tmp_path / "usb_mic.fifo"
    os.mkfifo(fifo)
    pcms = {"usb_mic": failing_capture_pcm(fifo)}
    with alsa_sandbox(tmp_path / "alsa", playback_fifo=True, extra_pcms=pcms) as sandbox:
        speaker = FifoDrainer(sandbox.playback_path, rate=SPEAKER_RATE)
        speaker.start()
        # The mic is fed in real time; each time it is opened it delivers a few periods, then
        # its stream dies, like a USB plug that keeps losing contact.
        microphone = FifoFeeder(fifo, b"", rate=16000, period_frames=1280)
        microphone.start()
        config_text = (
            '[audio]\ninput_device = "usb_mic"\noutput_device = "speaker"\n'
            f'[control]\nsocket = "{tmp_path}/ctl.sock"\n'
        )
        config_path = tmp_path / "talkbox.toml"
        config_path.write_text(config_text)
        cfg = parse_config(config_text, str(config_path))
        service = Service(config_path, cfg, None, real_parts())
        running = asyncio.create_task(service.run())
        try:
            await until(lambda: "READY=1" in notify_listener.lines(), "READY=1", timeout=20)
            ready_at = time.monotonic()
            # Failures 1, 2, 3 come after growing delays; the watchdog is withheld once no
            # healthy audio came for the gate's 5 s.
            await until(lambda: service.device_backoff.consecutive_failures >= 3, "3 failures", 15)
            await until(
                lambda: not service.watchdog_gate.should_ping(time.monotonic()),
                "the watchdog gate to close",
                10,
            )
            withheld_at = time.monotonic()
            await asyncio.sleep(1.0)
            pings = notify_listener.ping_times()
            assert pings and max(pings) < withheld_at, "no WATCHDOG=1 while the mic is failing"
            retries = [
                float(m.group(1))
                for r in caplog.records
                if (
                    m := re.search(
                        r"usb_mic' stopped delivering audio .*trying again in (\d+) s",
                        r.getMessage(),
                    )
                )
            ]
            assert len(retries) >= 3 and retries == sorted(retries) and retries[-1] >= 2, retries
            assert "is back" not in caplog.text, "a mic that dies at once is not back"
            failures = service.device_backoff.consecutive_failures
            assert failures <= 5, "no hot loop: a few attempts in these seconds"
            assert time.monotonic() - ready_at < 15

            # The plug is fixed: the same device name now leads to a working capture.
            asound = sandbox.config_path.read_text()
            sandbox.config_path.write_text(
                asound.replace(failing_capture_pcm(fifo), capture_pcm(fifo))
            )
            fixed_at = time.monotonic()
            await until(lambda: "microphone 'usb_mic' is back" in caplog.text, "recovery", 20)
            back = next(r for r in caplog.records if "is back" in r.getMessage())
            await until(
                lambda: any(at > fixed_at for at in notify_listener.ping_times()),
                "watchdog pings again",
            )
            first_ping = min(at for at in notify_listener.ping_times() if at > fixed_at)
            # It had to keep delivering for a while before it counted as back and was pinged for.
            assert first_ping >= fixed_at + CAPTURE_PROVEN_SECONDS - 0.1
            assert back.levelno == logging.INFO
            assert service.device_backoff.consecutive_failures == 0
            assert service.watchdog_gate.should_ping(time.monotonic())
            assert service.capture is not None and running.done() is False
        finally:
            service.stopping.set()
            await asyncio.wait_for(running, 10)
            microphone.stop()
            speaker.stop()
