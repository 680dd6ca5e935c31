"""Which transcripts are only "stop": both sides of the line, since a miss either way costs."""

from __future__ import annotations

import pytest

from talkbox.core.stop_phrases import STOP_PHRASES, is_stop_phrase, normalise


@pytest.mark.parametrize(
    "transcript",
    [
        "Stop.",
        "stop",
        "STOP!!!",
        "Stop it.",
        "Stop talking!",
        "Cancel.",
        "Never mind.",
        "Nevermind",
        "never-mind",
        "Be quiet.",
        "Quiet!",
        "Shush.",
        "Shut up.",
        "That's enough.",
        "That\u2019s enough.",  # a typographic apostrophe, as transcription models write it
        "Thats enough",
        "Enough!",
        "That's all.",
        "Nothing.",
        "Forget it.",
        # the wake phrase, as the transcription heard it
        "Hey Jarvis, stop.",
        "Hey, Jarvis. Stop!",
        "Jarvis, stop.",
        "Hey Jarvis, never mind.",
        "Hey Travis, stop.",
        "Hey, stop!",
        "Alexa, stop.",
        "Stop it, Jarvis.",
        # politeness at the ends, and a stop said twice
        "Stop, please.",
        "Please stop.",
        "Okay, stop.",
        "OK, that's enough, thanks.",
        "That's all, thank you.",
        "Alright, never mind.",
        "Stop, stop, stop!",
        "Stop, please stop.",
        "Hey Jarvis, okay, cancel that, thank you.",
    ],
)
def test_a_turn_that_only_says_stop_matches(transcript: str) -> None:
    assert is_stop_phrase(transcript)


@pytest.mark.parametrize(
    "transcript",
    [
        "How do I stop the washing machine?",
        "Stop the timer.",
        "Cancel my alarm.",
        "Cancel the meeting at three.",
        "Is that enough salt for the soup?",
        "Play something quiet.",
        "Nothing else matters by Metallica.",
        "Never mind the weather, what time is it?",
        "What does shush mean?",
        "Don't stop.",
        "Stop, what is the capital of France?",
        "Stop and tell me a joke.",
        "Thank you.",
        "Okay.",
        "Hey Jarvis.",
        "Hey.",
        "",
        "...",
        "   ",
        "stop " + "please " * 20,  # far longer than anyone says stop
    ],
)
def test_a_request_or_no_stop_phrase_does_not_match(transcript: str) -> None:
    assert not is_stop_phrase(transcript)


def test_every_listed_phrase_matches_alone_and_after_the_wake_phrase() -> None:
    for phrase in STOP_PHRASES:
        assert is_stop_phrase(phrase), phrase
        assert is_stop_phrase(f"Hey Jarvis, {phrase.capitalize()}!"), phrase


def test_normalise_keeps_only_lower_case_words() -> None:
    assert normalise("  Hey, JARVIS -- that\u2019s   enough!\n") == "hey jarvis thats enough"
    assert normalise("stop_it") == "stop it"
