"""The `echo` provider: a local stand-in for the Realtime service that plays each turn back.

It has the same surface as `connection.RealtimeSession` (send, events, close, abort), so the
daemon runs its whole conversation loop (wake, upload gating, turn end, playback, follow-up,
barge-in) with no key and no network. What the speaker then plays is exactly the speech
segment that would have been uploaded: a sound check for microphone level, VAD end points
and the speaker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from itertools import count
from typing import assert_never

from talkbox.audio_format import BYTES_PER_SAMPLE, REALTIME_RATE
from talkbox.core.events import (
    AppendAudio,
    AudioCleared,
    AudioCommitted,
    AudioDelta,
    AudioDone,
    CancelResponse,
    ClearAudio,
    ClientEvent,
    CommitAudio,
    CreateResponse,
    CreateUserText,
    ItemTruncated,
    ResponseCreated,
    ResponseDone,
    SendFunctionOutput,
    ServerError,
    ServerEvent,
    SessionUpdate,
    TranscriptDone,
    TruncateItem,
)

# 100 ms per delta, like the real service's pacing unit
DELTA_BYTES = REALTIME_RATE // 10 * BYTES_PER_SAMPLE


class EchoSession:
    """A session whose "assistant" repeats the last committed user audio."""

    description = "the local echo provider (no service; plays each turn back)"

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[ServerEvent | None] = asyncio.Queue()  # None: closed
        self._buffer = bytearray()
        self._committed = b""
        self._ids = count(1)
        self._responding: asyncio.Task[None] | None = None
        self._closed = False

    async def send(self, event: ClientEvent) -> None:
        if self._closed:
            return
        match event:
            case AppendAudio():
                self._buffer += event.pcm
            case CommitAudio():
                if len(self._buffer) < DELTA_BYTES:
                    self._post(ServerError("input_audio_buffer_commit_empty", "less than 100 ms"))
                    return
                self._committed = bytes(self._buffer)
                self._buffer.clear()
                self._post(AudioCommitted(f"echo_user_{next(self._ids)}"))
            case ClearAudio():
                self._buffer.clear()
                self._post(AudioCleared())
            case CreateResponse():
                if self._responding is not None and not self._responding.done():
                    self._post(ServerError("conversation_already_has_active_response", "busy"))
                    return
                self._responding = asyncio.create_task(self._respond(self._committed))
            case CancelResponse():
                if self._responding is not None and not self._responding.done():
                    self._responding.cancel()
                else:
                    self._post(ServerError("response_cancel_not_active", "no active response"))
            case TruncateItem():
                self._post(ItemTruncated(event.item_id, event.audio_end_ms))
            case SessionUpdate() | CreateUserText() | SendFunctionOutput():
                pass  # nothing to configure; text has no voice to echo; it calls no tools
            case _:
                assert_never(event)

    async def _respond(self, pcm: bytes) -> None:
        response_id = f"echo_resp_{next(self._ids)}"
        item_id = f"echo_item_{next(self._ids)}"
        self._post(ResponseCreated(response_id))
        try:
            for start in range(0, len(pcm), DELTA_BYTES):
                self._post(AudioDelta(response_id, item_id, 0, pcm[start : start + DELTA_BYTES]))
                await asyncio.sleep(0)  # let a cancel in between, as a real stream would
        except asyncio.CancelledError:
            self._post(ResponseDone(response_id, "cancelled", reason="client_cancelled"))
            raise
        self._post(AudioDone(response_id, item_id, 0))
        self._post(TranscriptDone(response_id, item_id, ""))
        self._post(ResponseDone(response_id, "completed"))

    def _post(self, event: ServerEvent) -> None:
        self._inbox.put_nowait(event)

    async def events(self) -> AsyncIterator[ServerEvent]:
        while True:
            item = await self._inbox.get()
            if item is None:
                return
            yield item

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._responding is not None:
            self._responding.cancel()
        self._inbox.put_nowait(None)


async def open_echo_session() -> EchoSession:
    return EchoSession()
