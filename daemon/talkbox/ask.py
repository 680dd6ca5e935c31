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

from talkbox.config import Config
from talkbox.core.conversation import HARMLESS_ERROR_CODES
from talkbox.errors import (
    NON_RETRYABLE_SERVER_CODES,
    RealtimeError,
    ServerErrorEvent,
    SessionSetupTimeout,
)
from talkbox.realtime.events import (
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
from talkbox.realtime.sessions import service_sessions
from talkbox.safe_text import MAX_PROSE_CHARS, safe_line
from talkbox.secrets import ApiKey

REPLY_RATE = 24000


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
    response_id: str | None = None
    transcript_parts: list[str] = []
    async for event in events:
        if isinstance(event, ResponseCreated) and response_id is None:
            response_id = event.response_id
        elif isinstance(event, AudioDelta) and event.response_id == response_id:
            answer.pcm += event.pcm
        elif isinstance(event, TranscriptDelta) and event.response_id == response_id:
            transcript_parts.append(event.delta)
        elif isinstance(event, TranscriptDone) and event.response_id == response_id:
            answer.transcript = event.transcript
        elif isinstance(event, ServerError) and event.code not in HARMLESS_ERROR_CODES:
            raise _answer_error(event)
        elif isinstance(event, ResponseDone) and event.response_id == response_id:
            answer.usage = event.usage
            if event.status != "completed":
                detail = event.error_code or event.reason or event.status
                raise ServerErrorEvent(
                    event.error_code or event.status, f"the response ended {event.status}: {detail}"
                )
            # Deltas are raw peer text (see protocol.py); cleaned once joined.
            answer.transcript = answer.transcript or safe_line(
                "".join(transcript_parts), MAX_PROSE_CHARS
            )
            return
    raise RealtimeError("the session ended before the answer was complete")


def _answer_error(event: ServerError) -> ServerErrorEvent:
    """The error event that ended the answer, as one line that also says what to do."""
    if event.code in NON_RETRYABLE_SERVER_CODES:
        advice = "retrying will not help: check the [realtime] settings and the API key"
    else:
        advice = "this is usually temporary: try again in a moment"
    return ServerErrorEvent(
        event.code,
        f"the service answered with an error instead of a response: "
        f"{event.code or event.error_type}: {event.message}; {advice}",
        event.error_type,
    )


def write_wav(path: Path, pcm: bytes, rate: int = REPLY_RATE) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
