"""Announcements (Home Assistant's notify entity, the house's announce topic) in the
conversation machine: spoken through the service when there is one, then idle again."""

from __future__ import annotations

from support.machine_driver import Driver, of, sent
from talkbox.core.conversation import (
    ANNOUNCE_INSTRUCTIONS,
    ANNOUNCEMENT_WAIT_SECONDS,
    MAX_WAITING_ANNOUNCEMENTS,
)
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
    StopRequested,
    TimerFired,
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
    echo_busy = Driver(speak_announcements=False)
    echo_busy.start_listening()
    out = echo_busy(Announce(TEXT))
    assert not of(OpenConnection, out) and not of(PlayChime, out)
    assert echo_busy.m.state is State.LISTENING and of(Notice, out)


def test_an_announcement_during_a_conversation_is_made_once_it_has_ended() -> None:
    d = Driver(speak_announcements=True)
    d.start_listening()
    out = d(Announce(TEXT))
    assert not of(OpenConnection, out) and d.m.state is State.LISTENING
    assert "after this conversation" in of(Notice, out)[0].text
    ended = d.fire("follow_up")  # nobody said anything more
    assert [c.kind for c in of(PlayChime, ended)] == ["done"]
    assert of(OpenConnection, ended) and d.m.state is State.CONNECTING
    assert sent(d.ready()) == [CreateResponse(ANNOUNCE_INSTRUCTIONS.format(text=TEXT))]


def test_one_waiting_is_not_made_after_the_conversation_was_stopped() -> None:
    d = Driver(speak_announcements=True)
    d.start_listening()
    d(Announce(TEXT))
    stopped = d(StopRequested("talkbox ctl stop"))
    assert d.m.state is State.IDLE and not of(OpenConnection, stopped)
    assert any("not made (talkbox ctl stop)" in n.text for n in of(Notice, stopped))
    assert d.m.waiting_announcements == []


def test_announcements_that_waited_too_long_or_too_many_are_not_made() -> None:
    d = Driver(speak_announcements=True)
    d.start_listening()
    for n in range(MAX_WAITING_ANNOUNCEMENTS + 1):
        d(Announce(f"{TEXT} {n}"))
    d(Announce("The washing is done."), advance=ANNOUNCEMENT_WAIT_SECONDS - 10)
    ended = d(TimerFired("follow_up", d.timers.pop("follow_up")), advance=20)
    notices = [n.text for n in of(Notice, ended)]
    # The oldest gave way to newer ones; those from 130 s ago are news no more.
    assert not any(f"{TEXT} 0" in text for text in notices)
    assert sum("not made (it came 130 s ago" in text for text in notices) == 2
    assert sent(d.ready()) == [
        CreateResponse(ANNOUNCE_INSTRUCTIONS.format(text="The washing is done."))]
