"""Hostile input for the decoder and the conversation machine together.

Hypothesis builds long runs of inputs: microphone events, wake words, timers (current and
stale), playback reports, and server frames made of real event shapes with ids drawn from a
small pool, mutated fields and plain garbage, all decoded by the real `ServerEventDecoder`.
About 12,000 inputs per run. Nothing may raise, and the machine's promises must hold after
every step:

- at most one response is ever in progress: response.create is never sent while one is;
- conversation.item.truncate never claims more audio than was received for that item;
- nothing is sent while idle or muted, and nothing before the session is ready;
- every action belongs to the current conversation.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from talkbox.core.alarms import Alarm
from talkbox.core.conversation import (
    TIMER_ALARM_REPEAT,
    TIMER_ALARM_RING,
    TIMER_FOLLOW_UP,
    TIMER_HOLD,
    TIMER_MAX_CONVERSATION,
    TIMER_RESPONSE,
    ConversationMachine,
    MachineConfig,
)
from talkbox.core.events import AppendAudio, AudioDelta, CreateResponse, TruncateItem
from talkbox.core.failures import Failure
from talkbox.core.inputs import (
    AlarmClockTick,
    AlarmsChanged,
    ConfigChanged,
    ConnectionFailed,
    Input,
    MicSpeechAudio,
    MicSpeechEnded,
    MicSpeechLikely,
    MicSpeechStarted,
    MuteChanged,
    OpenConnection,
    PlayAudio,
    PlaybackDrained,
    Send,
    ServerEventReceived,
    SessionReady,
    State,
    StopRequested,
    TimerFired,
    WakeWord,
)
from talkbox.realtime.protocol import Dialect, ServerEventDecoder

RESPONSE_IDS = ["resp_a", "resp_b", "resp_c"]
ALARMS = [Alarm(str(n), "timer", f"t{n}", 1000.0 * n, "2026-01-01T00:00:00+00:00", 60.0)
          for n in (1, 2, 3)]
WALL_TIMES = [0.0, 1500.0, 2500.0, 3500.0, 60_000.0]
ITEM_IDS = ["item_a", "item_b", "item_c"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def server_frame(draw: st.DrawFn, dialect: Dialect) -> str | bytes:
    ga = dialect is Dialect.GA
    response_id = draw(st.sampled_from(RESPONSE_IDS))
    item_id = draw(st.sampled_from(ITEM_IDS))
    audio = base64.b64encode(bytes(draw(st.integers(0, 4800)) * 2)).decode()
    shapes: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}},
        {
            "type": "response.output_audio.delta" if ga else "response.audio.delta",
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": draw(st.integers(0, 1)),
            "delta": audio,
        },
        {
            "type": "response.done",
            "response": {
                "id": response_id,
                "status": draw(st.sampled_from(["completed", "cancelled", "incomplete", "failed"])),
                "status_details": None,
                "output": [],
                "usage": {"total_tokens": 3, "input_tokens": 1, "output_tokens": 2},
            },
        },
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": draw(
                    st.sampled_from(
                        [
                            "response_cancel_not_active",
                            "conversation_already_has_active_response",
                            "input_audio_buffer_commit_empty",
                            "server_error",
                            "session_expired",
                            None,
                        ]
                    )
                ),
                "message": "x",
                "param": None,
                "event_id": None,
            },
        },
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": item_id},
        {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 10, "item_id": item_id},
        {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": None},
        {
            "type": "response.output_audio_transcript.done"
            if ga
            else "response.audio_transcript.done",
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "transcript": draw(st.text(max_size=10)),
        },
    ]
    frame = dict(draw(st.sampled_from(shapes)))
    mutation = draw(st.integers(0, 9))
    if mutation == 0:  # a field replaced by anything
        key = draw(st.sampled_from(sorted(frame)))
        frame[key] = draw(JSON_VALUES)
    elif mutation == 1:  # a field missing
        del frame[draw(st.sampled_from(sorted(frame)))]
    elif mutation == 2:  # not even JSON
        return draw(st.one_of(st.text(max_size=30), st.binary(max_size=30)))
    return json.dumps(frame)


@st.composite
def inputs(draw: st.DrawFn, machine: ConversationMachine, dialect: Dialect) -> Input | str | bytes:
    """An input for the machine, or a raw server frame (decoded by the caller)."""
    current = machine.conversation
    conversation = draw(st.sampled_from([current, current, current, max(current - 1, 0)]))
    choice = draw(st.integers(0, 13))
    if choice <= 3:
        return draw(server_frame(dialect))
    pcm = bytes(draw(st.sampled_from([0, 960, 9600])))
    played = draw(st.integers(0, 200_000))
    options: list[Input] = [
        WakeWord("hey_jarvis", recent_audio=pcm, played_samples=played),
        MicSpeechStarted(pcm, played),
        MicSpeechLikely(),
        MicSpeechAudio(pcm),
        MicSpeechEnded(),
        SessionReady(conversation),
        PlaybackDrained(played),
        TimerFired(
            draw(st.sampled_from([TIMER_FOLLOW_UP, TIMER_MAX_CONVERSATION, TIMER_RESPONSE,
                                  TIMER_ALARM_REPEAT, TIMER_ALARM_RING, TIMER_HOLD])),
            draw(st.integers(0, 40)),
        ),
        StopRequested(),
        MuteChanged(draw(st.booleans())),
        ConnectionFailed(
            conversation,
            draw(
                st.sampled_from(
                    [
                        Failure("dropped", "x"),
                        Failure("session_expired", "y"),
                        Failure("rejected", "z", retryable=False),
                    ]
                )
            ),
        ),
        ConfigChanged(
            MachineConfig(
                detection=draw(st.sampled_from(["local", "server_vad", "semantic_vad"])),
                barge_in=draw(st.sampled_from(["wake", "speech", "off"])),
            )
        ),
        # Timers and alarms coming due at any moment of a conversation, stale lists too.
        AlarmsChanged(tuple(draw(st.lists(st.sampled_from(ALARMS), max_size=3, unique=True))),
                      draw(st.sampled_from(WALL_TIMES)), at_start=draw(st.booleans())),
        AlarmClockTick(draw(st.sampled_from(WALL_TIMES))),
    ]
    return draw(st.sampled_from(options))


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.data(),
    dialect=st.sampled_from(list(Dialect)),
    detection=st.sampled_from(["local", "server_vad", "semantic_vad"]),
    barge_in=st.sampled_from(["wake", "speech", "off"]),
)
def test_no_input_sequence_breaks_the_machine(
    data: st.DataObject, dialect: Dialect, detection: str, barge_in: str
) -> None:
    machine = ConversationMachine(
        MachineConfig(detection=detection, barge_in=barge_in)  # type: ignore[arg-type]
    )
    decoder = ServerEventDecoder()
    received_samples: dict[tuple[str, int], int] = defaultdict(int)
    session_ready: set[int] = set()
    now = 0.0
    for _ in range(60):
        drawn = data.draw(inputs(machine, dialect))
        if isinstance(drawn, (str, bytes)):
            event = decoder.decode(drawn)
            if event is None:
                continue
            drawn = ServerEventReceived(
                machine.conversation, event, data.draw(st.integers(0, 10**6))
            )
        now += 0.05
        state_before = machine.state
        muted_before = machine.muted
        active_before = machine.active_response_id
        awaiting_before = machine.awaiting_response
        backoff_before = machine.backoff.remaining(now)
        actions = machine.step(drawn, now)
        if any(isinstance(action, OpenConnection) for action in actions):
            assert backoff_before == 0.0, "a wake word connected during the backoff"

        if isinstance(drawn, SessionReady) and machine.session_ready:
            session_ready.add(machine.conversation)
        for action in actions:
            if isinstance(action, PlayAudio) and isinstance(drawn, ServerEventReceived):
                delta = drawn.event
                assert isinstance(delta, AudioDelta)
                received_samples[(delta.item_id, delta.content_index)] += len(delta.pcm) // 2
            if not isinstance(action, Send):
                continue
            assert action.conversation == machine.conversation or state_before is not State.IDLE
            assert state_before is not State.IDLE or isinstance(drawn, SessionReady)
            assert action.conversation in session_ready, "nothing is sent before session ready"
            if isinstance(action.event, AppendAudio):
                assert not muted_before, "nothing is uploaded while muted"
            if isinstance(action.event, CreateResponse):
                assert active_before is None and not awaiting_before, "a second response"
            if isinstance(action.event, TruncateItem):
                key = (action.event.item_id, action.event.content_index)
                received_ms = received_samples[key] * 1000 // 24000
                assert 0 <= action.event.audio_end_ms <= received_ms
        if machine.state is State.IDLE:
            assert machine.pending_upload == [] and machine.active_response_id is None
            assert not machine.held, "an answer left paused after its conversation"
