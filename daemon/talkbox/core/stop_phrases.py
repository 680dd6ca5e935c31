"""Whether what the person said is only "stop": the words that end a conversation.

The service transcribes each turn when `[realtime] transcription_model` is set; the
conversation machine asks `is_stop_phrase` of the transcript of the person's latest turn. A
turn that is only a stop phrase ("Stop.", "Hey Jarvis, never mind.", "Okay, that's enough,
thanks") silences the answer and ends the conversation (see `ConversationMachine`); anything
else is a request and is answered as always, so the match is deliberately narrow: "how do I
stop the washing machine" and "cancel my alarm" are requests, not stop phrases.

Matching is on words after normalising: lower case, apostrophes dropped ("that's" ->
"thats"), every other character that is not a letter or a digit a space. Around one or more
stop phrases only these may stand: the wake phrase as the transcription heard it ("hey
jarvis", "jarvis", and before the stop phrase "hey" alone or with any one word, for "hey
travis"),
and "please", "okay"/"ok", "alright", "thanks"/"thank you".
"""

from __future__ import annotations

import re

# Said alone, each means "be quiet now". English only: the transcript is in the language the
# person spoke, and other languages' stop words are not listed yet.
STOP_PHRASES = (
    "stop",
    "stop it",
    "stop that",
    "stop talking",
    "stop now",
    "cancel",
    "cancel that",
    "never mind",
    "nevermind",
    "forget it",
    "forget about it",
    "be quiet",
    "quiet",
    "hush",
    "shush",
    "shut up",
    "silence",
    "that's enough",
    "enough",
    "that's all",
    "nothing",
)

# The bundled wake models' names (config: [wake] models); "hey" and a word is taken apart.
WAKE_NAMES = ("jarvis", "alexa", "mycroft", "rhasspy", "nabu")

# Politeness around the words that matter.
FILLERS = ("please", "okay", "ok", "thanks", "thank you", "alright", "all right")

# Longer than any stop phrase with its politeness: a request (and a bound on the matching).
MAX_WORDS = 12


def normalise(text: str) -> str:
    """Lower case words separated by single spaces: no punctuation, no apostrophes."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def _alternatives(phrases: tuple[str, ...]) -> str:
    return "|".join(re.escape(p) for p in sorted({normalise(p) for p in phrases}))


# Each unit is words and one space. No stop phrase or filler is made of other units, so a
# transcript can be read in few ways and the match is quick.
_STOP = rf"(?:{_alternatives(STOP_PHRASES)}) "
_FILLER = rf"(?:{_alternatives(FILLERS)}) "
_WAKE = rf"(?:{_alternatives(WAKE_NAMES)}) "
_PATTERN = re.compile(
    # Before: the wake phrase as heard ("hey jarvis", "jarvis", "hey travis"), a bare "hey",
    # politeness. ("Hey jarvis" reads two ways here: MAX_WORDS bounds the ways to try.)
    rf"(?:{_WAKE}|hey (?:\w+ )?|{_FILLER})*"
    # One stop phrase, or a few with politeness between them ("stop, please stop").
    rf"{_STOP}(?:(?:{_FILLER})*{_STOP})*"
    # After: politeness, a wake name ("stop it, jarvis").
    rf"(?:{_FILLER}|{_WAKE})*"
)


def is_stop_phrase(transcript: str) -> bool:
    """True when `transcript` says nothing but stop (with politeness and the wake phrase)."""
    words = normalise(transcript)
    if not words or words.count(" ") >= MAX_WORDS:
        return False
    return _PATTERN.fullmatch(words + " ") is not None
