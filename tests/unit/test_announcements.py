"""Announcements (Home Assistant's notify entity, the house's announce topic) in the
conversation machine: spoken through the service when there is one, then idle again."""

from __future__ import annotations

from support.machine_driver import Driver, of, sent
from talkbox.core.conversation import ANNOUNCE_INSTRUCTIONS
from talkbox.core.events import CreateResponse, ResponseDone
from talkbox.core.inputs import (
    Announce,
    MicSpeechStarted,
    MuteChanged,
    Notice,
    OpenConnection,
    PlaybackDrained,
    PlayChime,
    State,
    WakeWord,
)

TEXT = "Dinner is ready."


def announced(d: Driver) -> None:
    opened = d(Announce(TEXT))
    assert of(OpenConnection, opened) and d.m.state is State.CONNECTING
    assert not of(PlayChime, opened)  # the voice itself is the signal
    started = d.ready()
    assert sent(started) == [CreateResponse(ANNOUNCE_INSTRUCTIONS.format(text=TEXT))]
    assert d.m.state is State.RESPONDING


def test_an_announcement_is_one_response_and_then_idle_without_listening() -> None:
    d = Driver(speak_announcements=True)
    announced(d)
    d.respond("r1", "i1", samples=24000)
    d.server(ResponseDone("r1", "completed"))
    assert d.m.state is State.RESPONDING  # still playing
    ended = d(PlaybackDrained(played_samples=d.m.enqueued_samples))
    assert d.m.state is State.IDLE
    assert "follow_up" not in d.timers
    assert [c.kind for c in of(PlayChime, ended)] == ["done"]


def test_the_room_talking_while_it_connects_is_not_a_turn() -> None:
    d = Driver(speak_announcements=True)
    d(Announce(TEXT))
    d(MicSpeechStarted(preroll=bytes(960)))
    assert d.m.pending_upload == [] and not d.m.turn_open
    assert sent(d.ready()) == [CreateResponse(ANNOUNCE_INSTRUCTIONS.format(text=TEXT))]


def test_the_wake_word_during_an_announcement_starts_a_conversation() -> None:
    d = Driver(speak_announcements=True)
    announced(d)
    d.respond("r1", "i1", samples=48000)
    d(WakeWord("hey_jarvis"))
    assert d.m.state is State.LISTENING
    d.speak(800)
    d.respond("r2", "i2", samples=2400)
    d.server(ResponseDone("r2", "completed"))
    d(PlaybackDrained(played_samples=d.m.enqueued_samples))
    assert d.m.state is State.LISTENING  # answered, listening for a follow-up as always
    assert "follow_up" in d.timers


def test_without_a_service_muted_or_busy_it_is_a_chime_or_a_log_line() -> None:
    echo = Driver(speak_announcements=False)
    out = echo(Announce(TEXT))
    assert [c.kind for c in of(PlayChime, out)] == ["wake"] and not of(OpenConnection, out)
    assert echo.m.state is State.IDLE
    muted = Driver(speak_announcements=True)
    muted(MuteChanged(True))
    assert not of(OpenConnection, muted(Announce(TEXT)))
    busy = Driver(speak_announcements=True)
    busy.start_listening()
    out = busy(Announce(TEXT))
    assert not of(OpenConnection, out) and busy.m.state is State.LISTENING
    assert "not spoken" in of(Notice, out)[0].text
