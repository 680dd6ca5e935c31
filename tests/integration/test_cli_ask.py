"""`talkbox ask` as a real process against the fake Realtime service on loopback.

Every way in (Azure GA, Azure preview 2024-10-01-preview, OpenAI GA) must save exactly the
audio the service sent and speak the right dialect; TLS works with a CA the process trusts
and fails clearly with one it does not; and each way a session can fail (refused, 401, no
session.created, an error event, a drop without a close frame, session expiry, no answer in
time) ends in exit code 1, one line on stderr that names the failure and what to do, no
traceback, within a bound, and never the API key.
"""

from __future__ import annotations

import socket
import ssl
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from support.cli import CliRun, RunningTalkbox, environment
from support.event_schema import Dialect, check_client_event
from support.fake_realtime import InjectedError, ServerThread
from support.service import recorded, serving
from support.speech import speak

API_KEY = "sk-SENTINEL-ask-5b1e0c9d7a3f48e2"
WRONG_KEY = "sk-SENTINEL-wrong-90c4d2e8a1b7f365"
QUESTION = "What is the capital of France?"
REPLY_TEXT = "Paris is the capital of France."
REPLY_RATE = 24000
CONNECT_TIMEOUT_S = 2
ASK_TIMEOUT_S = 20
# Every failure must end well before --timeout: it is reported, not waited out. The bound is
# generous for a loaded 2-core machine (a run takes well under a second here).
FAILURE_BOUND_S = 10.0
# Variables of the test's own environment that would change where the key or trust comes from.
ENV_NOT_INHERITED = (
    "TALKBOX_API_KEY",
    "CREDENTIALS_DIRECTORY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NOTIFY_SOCKET",
)


# --- the three ways in --------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """One way into the service: its [realtime] table and what the service must see."""

    realtime_table: Callable[[str], str]  # url_base -> TOML lines
    path: str  # the request path the service must receive, query included
    auth_method: str  # as the fake records it
    dialect: Dialect
    foreign_headers: tuple[str, ...]  # headers this way in must not send


PROVIDERS = {
    "azure-ga": Provider(
        realtime_table=lambda url: (
            f'provider = "azure"\nendpoint = "{url}"\ndeployment = "gpt-realtime"\n'
            'api_version = ""\n'
        ),
        path="/openai/v1/realtime?model=gpt-realtime",
        auth_method="api-key",
        dialect="ga",
        foreign_headers=("authorization", "openai-beta"),
    ),
    "azure-preview": Provider(
        realtime_table=lambda url: (
            f'provider = "azure"\nendpoint = "{url}"\ndeployment = "gpt-4o-realtime-preview"\n'
            'api_version = "2024-10-01-preview"\n'
        ),
        path="/openai/realtime?api-version=2024-10-01-preview&deployment=gpt-4o-realtime-preview",
        auth_method="api-key",
        dialect="preview",
        foreign_headers=("authorization", "openai-beta"),
    ),
    "openai": Provider(
        realtime_table=lambda url: (
            f'provider = "openai"\nendpoint = "{url}/v1"\nmodel = "gpt-realtime"\n'
        ),
        path="/v1/realtime?model=gpt-realtime",
        auth_method="bearer",
        dialect="ga",
        # The beta header selects the retired beta shape; an api-key header is Azure's.
        foreign_headers=("api-key", "openai-beta"),
    ),
}
OTHER_DIALECT: dict[Dialect, Dialect] = {"ga": "preview", "preview": "ga"}


def write_config(directory: Path, provider: str, url_base: str) -> Path:
    config = directory / "talkbox.toml"
    config.write_text(
        "[realtime]\n"
        + PROVIDERS[provider].realtime_table(url_base)
        + f"connect_timeout_seconds = {CONNECT_TIMEOUT_S}\n"
    )
    return config


# --- running the command ------------------------------------------------------------------------


def start_ask(
    config: Path, out: Path, *, api_key: str = API_KEY, timeout_s: int = ASK_TIMEOUT_S, **env: str
) -> RunningTalkbox:
    return RunningTalkbox(
        "ask", QUESTION, "--config", str(config), "--out", str(out), "--timeout", str(timeout_s),
        env=environment(ENV_NOT_INHERITED, {"TALKBOX_API_KEY": api_key, **env}),
        # Whatever happened, neither the key given nor the service's real key is ever shown.
        secrets={api_key, API_KEY},
    )  # fmt: skip


def ask(
    config: Path, out: Path, *, api_key: str = API_KEY, timeout_s: int = ASK_TIMEOUT_S, **env: str
) -> CliRun:
    return start_ask(config, out, api_key=api_key, timeout_s=timeout_s, **env).finish()


def assert_clear_failure(run: CliRun, *key_words: str) -> str:
    """Exit 1, one `talkbox: ...` line on stderr holding `key_words`, in bounded time."""
    assert run.exit_code == 1, (run.exit_code, run.stderr)
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    line = lines[0]
    assert line.startswith("talkbox: "), line
    for word in key_words:
        assert word in line, f"{word!r} not in {line!r}"
    assert "answer:" not in run.stdout
    assert run.seconds < FAILURE_BOUND_S, f"took {run.seconds:.1f} s"
    return line


# --- the service --------------------------------------------------------------------------------


def inject(service: ServerThread, **faults: Any) -> None:
    def apply() -> None:
        for name, value in faults.items():
            setattr(service.server.faults, name, value)

    service.call(apply)


def wait_until_closed(service: ServerThread) -> None:
    server = service.server
    service.wait_for(lambda: bool(server.sessions) and all(s.closed for s in server.sessions))


@pytest.fixture(scope="module")
def reply_speech() -> bytes:
    """A spoken answer at 24 kHz, as the service would send it."""
    return speak(REPLY_TEXT, rate=REPLY_RATE, pad=(0.0, 0.0)).tobytes()


def read_wav(path: Path) -> tuple[tuple[int, int, int], bytes]:
    """((channels, sample width, rate), frames)."""
    with wave.open(str(path), "rb") as saved:
        shape = (saved.getnchannels(), saved.getsampwidth(), saved.getframerate())
        return shape, saved.readframes(saved.getnframes())


# --- every way in -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_ask_saves_exactly_the_audio_the_service_sent(
    provider: str, tmp_path: Path, reply_speech: bytes
) -> None:
    expected = PROVIDERS[provider]
    with serving(API_KEY, reply_pcm=reply_speech, reply_transcript=REPLY_TEXT) as service:
        out = tmp_path / "answer.wav"
        run = ask(write_config(tmp_path, provider, service.url_base), out)
        wait_until_closed(service)
        seen = recorded(service)

    assert run.exit_code == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert f"answer: {REPLY_TEXT}" in run.stdout.splitlines()
    seconds = len(reply_speech) / 2 / REPLY_RATE
    assert f"wrote {seconds:.1f} s of audio to {out}" in run.stdout.splitlines()
    shape, frames = read_wav(out)
    assert shape == (1, 2, REPLY_RATE)  # mono, 16-bit, 24 kHz
    [session] = seen.sessions
    assert frames == bytes(session.sent_audio)  # byte for byte, nothing lost or added
    assert frames == reply_speech  # and that is the whole reply

    # The right door, with the right credentials, and the key sent exactly one way.
    assert session.path == expected.path
    assert session.auth_method == expected.auth_method
    assert session.dialect == expected.dialect
    assert not set(expected.foreign_headers) & set(session.headers)

    # One session.update, valid in this dialect and only in this one.
    assert seen.violations == []
    [update] = session.client_events_of("session.update")
    assert check_client_event(expected.dialect, update) == []
    assert check_client_event(OTHER_DIALECT[expected.dialect], update) != []
    [question] = session.client_events_of("conversation.item.create")
    assert question["item"]["content"] == [{"type": "input_text", "text": QUESTION}]
    assert len(session.client_events_of("response.create")) == 1
    assert session.close_code == 1000  # talkbox closed the session itself, cleanly


# --- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalCa:
    server_context: ssl.SSLContext
    ca_file: Path


@pytest.fixture(scope="module")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCa:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return LocalCa(context, ca_file)


def test_ask_over_tls_with_a_trusted_ca(tmp_path: Path, local_ca: LocalCa) -> None:
    # The process trusts the CA through OpenSSL's SSL_CERT_FILE, which Python's default
    # context (the one talkbox uses, with full verification) reads: no switch in talkbox.
    with serving(API_KEY, ssl=local_ca.server_context) as service:
        assert service.url_base.startswith("https://")
        out = tmp_path / "answer.wav"
        config = write_config(tmp_path, "azure-ga", service.url_base)
        run = ask(config, out, SSL_CERT_FILE=str(local_ca.ca_file))
        wait_until_closed(service)
        seen = recorded(service)

    assert run.exit_code == 0, run.stderr
    [session] = seen.sessions
    _, frames = read_wav(out)
    assert frames == bytes(session.sent_audio) and frames


def test_ask_over_tls_rejects_a_certificate_from_an_unknown_ca(
    tmp_path: Path, local_ca: LocalCa
) -> None:
    with serving(API_KEY, ssl=local_ca.server_context) as service:
        out = tmp_path / "answer.wav"
        run = ask(write_config(tmp_path, "azure-ga", service.url_base), out)
        seen = recorded(service)

    assert_clear_failure(run, "TLS certificate", "could not be verified", "CA certificates")
    assert seen.sessions == []  # the handshake never got as far as the service
    assert not out.exists()


# --- failures -----------------------------------------------------------------------------------


def test_a_refused_connection(tmp_path: Path) -> None:
    # A port that is bound but not listening refuses; holding it keeps anyone else off it.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        url_base = f"http://127.0.0.1:{bound.getsockname()[1]}"
        out = tmp_path / "answer.wav"
        run = ask(write_config(tmp_path, "openai", url_base), out)

    assert_clear_failure(run, "refused the connection", "realtime.endpoint")
    assert not out.exists()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_wrong_key_is_rejected_at_the_handshake(provider: str, tmp_path: Path) -> None:
    with serving(API_KEY) as service:
        out = tmp_path / "answer.wav"
        run = ask(write_config(tmp_path, provider, service.url_base), out, api_key=WRONG_KEY)
        seen = recorded(service)

    assert_clear_failure(run, "rejected the connection", "HTTP 401", "check the key")
    assert [r.status for r in seen.rejected] == [401]
    assert seen.sessions == []
    assert not out.exists()


def test_no_session_created_within_the_connect_timeout(tmp_path: Path) -> None:
    with serving(API_KEY) as service:
        inject(service, skip_session_created=True)
        out = tmp_path / "answer.wav"
        run = ask(write_config(tmp_path, "azure-ga", service.url_base), out)

    assert_clear_failure(
        run, "sent no session.created", f"within {CONNECT_TIMEOUT_S} s", "try again"
    )
    assert run.seconds >= CONNECT_TIMEOUT_S  # it did wait as long as the config says
    assert not out.exists()


@pytest.mark.parametrize(
    ("code", "advice"),
    [("server_error", "try again"), ("invalid_value", "retrying will not help")],
)
def test_an_error_event_instead_of_the_answer(code: str, advice: str, tmp_path: Path) -> None:
    message = "The server had an error while processing your request."
    with serving(API_KEY) as service:
        inject(service, error_instead_of_response=InjectedError(code, message))
        out = tmp_path / "answer.wav"
        run = ask(write_config(tmp_path, "azure-preview", service.url_base), out)

    assert_clear_failure(run, code, message, advice)
    assert not out.exists()


def test_a_drop_without_a_close_frame_mid_answer(tmp_path: Path) -> None:
    with serving(API_KEY) as service:
        inject(service, drop_after_audio_deltas=3)
        out = tmp_path / "answer.wav"
        run = ask(write_config(tmp_path, "openai", service.url_base), out)
        seen = recorded(service)

    assert_clear_failure(run, "dropped without a close frame", "check the network")
    [session] = seen.sessions
    assert session.dropped and session.sent_audio  # it did stop mid-answer
    assert not out.exists()  # half an answer is not saved


def test_the_session_expires_mid_answer(tmp_path: Path) -> None:
    # A minute-long answer streamed in real time: it is surely still going when it expires.
    with serving(API_KEY, reply_duration_ms=60_000, pace_factor=1.0) as service:
        out = tmp_path / "answer.wav"
        config = write_config(tmp_path, "azure-ga", service.url_base)
        running = start_ask(config, out)
        server = service.server
        try:
            service.wait_for(
                lambda: any(r.audio_deltas >= 2 for s in server.sessions for r in s.responses),
                timeout=FAILURE_BOUND_S,
            )
            service.expire_sessions()
        except BaseException:
            running.kill()
            raise
        run = running.finish()

    assert_clear_failure(run, "ended the session at its maximum duration", "new session")
    assert not out.exists()


def test_no_complete_answer_within_the_timeout(tmp_path: Path) -> None:
    with serving(API_KEY, reply_duration_ms=60_000, pace_factor=1.0) as service:
        out = tmp_path / "answer.wav"
        config = write_config(tmp_path, "azure-ga", service.url_base)
        run = ask(config, out, timeout_s=1)

    assert_clear_failure(run, "no complete answer", "within 1 s", "--timeout")
    assert not out.exists()
