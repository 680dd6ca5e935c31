"""`talkbox ask`: one question as text, one spoken answer back. The first check a new owner runs.

It opens its session with the daemon's own opener (realtime/sessions.py: endpoint,
session.update, the protocol layer, the connection adapter), so a working `ask` means the
account, key, deployment and dialect are right before any microphone is involved.
"""

from __future__ import annotations

import asyncio
import ssl
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from talkbox.audio_format import REALTIME_RATE
from talkbox.config import Config
from talkbox.core.events import (
    AudioDelta,
    CreateResponse,
    CreateUserText,
    ResponseCreated,
    ResponseDone,
    ServerError,
    ServerEvent,
    TranscriptDelta,
    TranscriptDone,
    Usage,
)
from talkbox.core.failures import HARMLESS_SERVER_CODES, server_code_retryable
from talkbox.core.response import FollowedResponse
from talkbox.errors import RealtimeError, ServerErrorEvent, SessionSetupTimeout
from talkbox.realtime.sessions import service_sessions
from talkbox.safe_text import MAX_PROSE_CHARS, safe_line
from talkbox.secrets import ApiKey


@dataclass
class Answer:
    pcm: bytearray = field(default_factory=bytearray)
    transcript: str = ""
    usage: Usage | None = None
    session_id: str = ""


async def ask(
    cfg: Config,
    api_key: ApiKey,
    text: str,
    *,
    timeout: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Answer:
    """Ask `text`, return the spoken answer (24 kHz PCM16) and its transcript.

    Raises a `RealtimeError` that says what failed and what to do.
    """
    sessions = service_sessions(cfg, api_key, ssl_context=ssl_context)
    session = await sessions.open()
    answer = Answer(session_id=session.session_info.session_id)
    try:
        async with asyncio.timeout(timeout):
            await session.send(CreateUserText(text))
            await session.send(CreateResponse())
            await _collect(session.events(), answer)
    except TimeoutError:
        raise SessionSetupTimeout(
            f"no complete answer from {sessions.description} within {timeout:g} s; "
            "try again, or raise --timeout"
        ) from None
    finally:
        await session.close()
    return answer


async def _collect(events: AsyncIterator[ServerEvent], answer: Answer) -> None:
    response = FollowedResponse()  # which response is the answer, as the machine decides it
    transcript_parts: list[str] = []
    async for event in events:
        match event:
            case ResponseCreated():
                response.created(event)
            case AudioDelta() if response.is_followed(event.response_id):
                answer.pcm += event.pcm
            case TranscriptDelta() if response.is_followed(event.response_id):
                transcript_parts.append(event.delta)
            case TranscriptDone() if response.is_followed(event.response_id):
                answer.transcript = event.transcript
            case ServerError() if event.code not in HARMLESS_SERVER_CODES:
                raise _answer_error(event)
            case ResponseDone() if response.done(event):
                _finish(event, transcript_parts, answer)
                return
            case _:
                pass  # another response's events, or nothing an answer is made of
    raise RealtimeError("the session ended before the answer was complete")


def _finish(done: ResponseDone, transcript_parts: list[str], answer: Answer) -> None:
    answer.usage = done.usage
    if done.status != "completed":
        code = done.error_code or done.status
        detail = done.error_code or done.reason or done.status
        raise ServerErrorEvent(
            code,
            f"the response ended {done.status}: {detail}",
            retryable=server_code_retryable(code),
        )
    # Deltas are raw peer text (see protocol.py); cleaned once joined.
    answer.transcript = answer.transcript or safe_line("".join(transcript_parts), MAX_PROSE_CHARS)


def _answer_error(event: ServerError) -> ServerErrorEvent:
    """The error event that ended the answer, as one line that also says what to do."""
    retryable = server_code_retryable(event.code)
    if retryable:
        advice = "this is usually temporary: try again in a moment"
    else:
        advice = "retrying will not help: check the [realtime] settings and the API key"
    return ServerErrorEvent(
        event.code,
        f"the service answered with an error instead of a response: "
        f"{event.code or event.error_type}: {event.message}; {advice}",
        event.error_type,
        retryable=retryable,
    )


def write_wav(path: Path, pcm: bytes, rate: int = REALTIME_RATE) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
