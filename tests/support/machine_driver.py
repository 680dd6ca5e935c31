"""Driving the conversation machine in unit tests: a fake clock, timers kept by name, and
helpers that pick actions apart."""

from __future__ import annotations

from typing import Any

from talkbox.core.conversation import ConversationMachine, MachineConfig
from talkbox.core.events import AudioDelta, ResponseCreated, ServerEvent
from talkbox.core.inputs import (
    Action,
    CancelTimer,
    Input,
    MicSpeechAudio,
    MicSpeechEnded,
    MicSpeechStarted,
    Send,
    ServerEventReceived,
    SessionReady,
    StartTimer,
    State,
    TimerFired,
    WakeWord,
)

RATE = 24000
FRAME = bytes(960)  # 20 ms at 24 kHz


def ms(n: int) -> bytes:
    return bytes(n * RATE // 1000 * 2)


class Driver:
    """Feeds inputs with a fake clock and keeps every action for assertions."""

    def __init__(self, **config: Any) -> None:
        self.m = ConversationMachine(MachineConfig(**config))
        self.now = 100.0
        self.timers: dict[str, int] = {}

    def __call__(self, event: Input, advance: float = 0.0) -> list[Action]:
        self.now += advance
        actions = self.m.step(event, self.now)
        for a in actions:
            if isinstance(a, StartTimer):
                self.timers[a.name] = a.token
            elif isinstance(a, CancelTimer):
                self.timers.pop(a.name, None)
        return actions

    def server(self, event: ServerEvent) -> list[Action]:
        return self(ServerEventReceived(self.m.conversation, event))

    def fire(self, name: str) -> list[Action]:
        return self(TimerFired(name, self.timers.pop(name)))

    def ready(self) -> list[Action]:
        return self(SessionReady(self.m.conversation))

    def speak(self, audio_ms: int) -> list[Action]:
        """A whole user segment: start, audio in 20 ms frames, end."""
        out = self(MicSpeechStarted(preroll=FRAME))
        for _ in range(audio_ms // 20 - 1):
            out += self(MicSpeechAudio(FRAME))
        out += self(MicSpeechEnded(), advance=audio_ms / 1000)
        return out

    def start_listening(self) -> None:
        self(WakeWord("hey_jarvis"))
        self.ready()
        assert self.m.state is State.LISTENING

    def respond(
        self, response_id: str = "resp_1", item_id: str = "item_1", samples: int = 48000
    ) -> None:
        self.server(ResponseCreated(response_id))
        self.server(AudioDelta(response_id, item_id, 0, bytes(samples * 2)))


def sent(actions: list[Action]) -> list[Any]:
    return [a.event for a in actions if isinstance(a, Send)]


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


