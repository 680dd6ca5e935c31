"""Voice activity: the webrtcvad adapter and the pure speech gate (endpointer).

`VoiceActivity` answers "is this 10/20/30 ms frame speech?" with webrtcvad.

`SpeechGate` turns a stream of (frame, is_speech) pairs into speech segments: it decides when
a turn starts (a short run of voiced frames, so a click does not open it), hands out the
audio of the turn with `prefix_padding_ms` of pre-roll, and ends the turn after `silence_ms`
of non-speech or at `max_turn_ms`. It is pure: no clock, no I/O; time is counted in frames,
so the same input always gives the same events (in the manner of Home Assistant's
VoiceCommandSegmenter and pipecat's VAD analyzer).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from typing import Literal

import webrtcvad

from talkbox.audio_format import LISTEN_RATE

SUPPORTED_VAD_RATES = (8000, 16000, 32000, 48000)
SUPPORTED_VAD_FRAME_MS = (10, 20, 30)


# How long webrtcvad goes on calling frames speech after a voice stops, by aggressiveness
# (median over espeak-ng phrases in two voices over quiet noise: 0-1 144 ms, 2-3 104 ms).
# The speech gate subtracts it, so that `silence_duration_ms` means silence the user left,
# not silence plus the detector's own lag.
WEBRTCVAD_HANGOVER_MS = {0: 140, 1: 140, 2: 100, 3: 100}


class VoiceActivity:
    """webrtcvad over fixed-size PCM16 mono frames."""

    def __init__(
        self, aggressiveness: int, sample_rate: int = LISTEN_RATE, frame_ms: int = 20
    ) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness must be 0..3, got {aggressiveness}")
        if sample_rate not in SUPPORTED_VAD_RATES:
            raise ValueError(f"webrtcvad supports rates {SUPPORTED_VAD_RATES}, got {sample_rate}")
        if frame_ms not in SUPPORTED_VAD_FRAME_MS:
            raise ValueError(f"webrtcvad supports frames of {SUPPORTED_VAD_FRAME_MS} ms")
        self.aggressiveness = aggressiveness
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_bytes = sample_rate * frame_ms // 1000 * 2
        self._vad = webrtcvad.Vad(aggressiveness)
        self.hangover_ms = WEBRTCVAD_HANGOVER_MS[aggressiveness]

    def is_speech(self, frame: bytes) -> bool:
        """Whether one frame of exactly `frame_bytes` bytes is speech."""
        if len(frame) != self.frame_bytes:
            raise ValueError(f"VAD frame must be {self.frame_bytes} bytes, got {len(frame)}")
        return bool(self._vad.is_speech(frame, self.sample_rate))


@dataclass(frozen=True, slots=True)
class GateSpeechStarted:
    """A turn began. `preroll` is the audio from `prefix_padding_ms` before the first voiced
    frame of the opening run up to and including the frame that opened the gate (never audio
    already sent in the previous turn)."""

    preroll: bytes


@dataclass(frozen=True, slots=True)
class GateSpeechLikely:
    """Over echo, a run of voice that would open a turn without echo (`start_frames` of
    `start_window_frames`, counting `maybe_speech`, all but one voiced by `is_speech` too), or
    a voice the caller heard otherwise (`voice_heard`); the stricter `over_echo_start` has
    not opened a turn yet. Said once per such run: the answer can pause while the gate
    makes sure."""


@dataclass(frozen=True, slots=True)
class GateSpeechAudio:
    """One frame of audio inside a turn (speech, or silence still within the hangover)."""

    pcm: bytes


EndReason = Literal["silence", "max_length"]


@dataclass(frozen=True, slots=True)
class GateSpeechEnded:
    """The turn ended: after `silence_ms` of non-speech, or because it reached `max_turn_ms`."""

    reason: EndReason


GateEvent = GateSpeechStarted | GateSpeechLikely | GateSpeechAudio | GateSpeechEnded


class _GateState(Enum):
    QUIET = "quiet"
    SPEAKING = "speaking"


class SpeechGate:
    """Pure endpointer: frames with VAD decisions in, turn events out.

    Calling contract: `feed()` takes consecutive frames of `frame_ms` each (the upload
    audio, e.g. 24 kHz PCM16, 960 bytes per 20 ms) together with the VAD decision for the
    same stretch of time, and returns the events that frame caused, in order. Across one
    turn, the preroll plus every `GateSpeechAudio` is a contiguous, gap-free slice of the fed
    audio; no frame is in two turns.

    A turn opens on a voiced frame when at least `start_frames` of the last
    `start_window_frames` frames were voiced (so a turn cut at max length reopens at once
    if the talk goes on). It ends once `silence_ms` of consecutive non-speech has been fed
    (those frames are still handed out as `GateSpeechAudio` first), or when the turn's audio,
    preroll included, reaches `max_turn_ms`.
    """

    def __init__(
        self,
        frame_ms: int,
        start_frames: int,
        silence_ms: int,
        prefix_padding_ms: int,
        max_turn_ms: int,
        start_window_frames: int | None = None,
        *,
        over_echo_start: tuple[int, int] | None = None,
        over_echo_padding_ms: int | None = None,
    ) -> None:
        window = start_frames + 2 if start_window_frames is None else start_window_frames
        if frame_ms <= 0:
            raise ValueError("frame_ms must be positive")
        if not 1 <= start_frames <= window:
            raise ValueError("need 1 <= start_frames <= start_window_frames")
        if silence_ms <= 0 or prefix_padding_ms < 0:
            raise ValueError("silence_ms must be positive and prefix_padding_ms not negative")
        self.frame_ms = frame_ms
        self.start_frames = start_frames
        self.start_window_frames = window
        # While the speaker plays, a turn needs a longer run of voice (frames, out of a
        # window): residual echo comes in short voiced bursts, a person talks on.
        self.over_echo_start = over_echo_start or (start_frames, window)
        echo_frames, echo_window = self.over_echo_start
        if not 1 <= echo_frames <= echo_window:
            raise ValueError("need 1 <= frames <= window in over_echo_start")
        self.silence_frames = math.ceil(silence_ms / frame_ms)
        self.prefix_padding_frames = math.ceil(prefix_padding_ms / frame_ms)
        self.max_turn_frames = max_turn_ms // frame_ms
        # While the speaker plays, the canceller dulls the first syllables of a person talking
        # over it (double talk), so the first frames called voiced can come hundreds of ms
        # after they began: the pre-roll reaches further back.
        over_echo_padding = math.ceil((over_echo_padding_ms or 0) / frame_ms)
        self.over_echo_padding_frames = max(
            self.prefix_padding_frames, min(over_echo_padding, self.max_turn_frames - echo_window)
        )
        if self.max_turn_frames < window + self.prefix_padding_frames:
            raise ValueError("max_turn_ms must exceed the pre-roll (padding + start window)")

        self._state = _GateState.QUIET
        # Decisions of the last `window` frames, in either state: a turn cut at max length
        # reopens on the next voiced frame instead of waiting for a fresh run.
        longest = max(window, echo_window)
        self._recent_voiced: deque[bool] = deque(maxlen=longest)
        # The looser decisions (`maybe_speech`) of the last `window` frames, for the likely rule.
        self._recent_maybe: deque[bool] = deque(maxlen=window)
        # While quiet: the frames not yet sent, enough for the padding plus the window.
        self._unsent: deque[tuple[bytes, bool]] = deque(
            maxlen=self.over_echo_padding_frames + longest
        )
        self._turn_frames = 0
        self._silent_run = 0
        self._likely = False  # over echo, the plain start rule holds (GateSpeechLikely said)

    @property
    def in_speech(self) -> bool:
        """Whether a turn is open."""
        return self._state is _GateState.SPEAKING

    def reset(self) -> None:
        """Forget everything: close any open turn silently and drop the pre-roll."""
        self._state = _GateState.QUIET
        self._recent_voiced.clear()
        self._recent_maybe.clear()
        self._unsent.clear()
        self._turn_frames = 0
        self._silent_run = 0
        self._likely = False

    def feed(
        self, frame: bytes, is_speech: bool, *, over_echo: bool = False,
        maybe_speech: bool | None = None, start_over_echo: tuple[int, int] | None = None,
        voice_heard: bool = False,
    ) -> list[GateEvent]:
        """Take one frame and its VAD decision; return the events it causes.

        `over_echo`: the speaker is playing, so a turn needs `over_echo_start` to open, or
        `start_over_echo` (frames, window; the window no longer) for this frame instead.
        `maybe_speech`: a looser decision for the same frame (over echo: the VAD's, before the
        echo's floor; default `is_speech`), which only the likely rule uses. `voice_heard`: over
        echo, the caller heard a voice in this frame by other means (the front end: a word's
        run of voiced frames, or the double-talk detector): likely too, never a turn."""
        start_rule = start_over_echo or self.over_echo_start
        if start_rule[1] > self.over_echo_start[1]:
            raise ValueError("start_over_echo's window is longer than over_echo_start's")
        maybe = is_speech if maybe_speech is None else maybe_speech or is_speech
        self._recent_voiced.append(is_speech)
        self._recent_maybe.append(maybe)
        if self._state is _GateState.QUIET:
            if over_echo:
                likely = self._likely_over_echo(maybe, voice_heard)
                events = self._feed_quiet(
                    frame, is_speech, *start_rule, self.over_echo_padding_frames
                )
                return [GateSpeechLikely()] if likely and not events else events
            self._likely = False
            return self._feed_quiet(
                frame, is_speech, self.start_frames, self.start_window_frames,
                self.prefix_padding_frames,
            )
        return self._feed_speaking(frame, is_speech)

    def _likely_over_echo(self, maybe_speech: bool, voice_heard: bool) -> bool:
        """Whether this frame starts a run that the plain start rule would take for a turn,
        counting the looser decisions, all but one of them voiced by the stricter one, or a
        voice the caller heard. (Over echo a short first word, "how", "what", often has just
        two frames loud enough for the stricter decision before AEC3 mutes the rest of it,
        or one, or none.)"""
        voiced = sum(islice(reversed(self._recent_voiced), self.start_window_frames))
        plain = sum(self._recent_maybe) >= self.start_frames and voiced >= self.start_frames - 1
        if not (plain or voice_heard):
            self._likely = False
            return False
        heard = maybe_speech or voice_heard
        starts = heard and not self._likely
        if heard:
            self._likely = True
        return starts

    def _feed_quiet(
        self, frame: bytes, is_speech: bool, start_frames: int, window: int, padding: int
    ) -> list[GateEvent]:
        self._unsent.append((frame, is_speech))
        # Only open on a voiced frame: the turn should start as speech is heard, not after.
        if not is_speech or sum(islice(reversed(self._recent_voiced), window)) < start_frames:
            return []
        unsent = list(self._unsent)
        window_start = max(0, len(unsent) - window)
        first_voiced = next(i for i in range(window_start, len(unsent)) if unsent[i][1])
        preroll = unsent[max(0, first_voiced - padding) :]
        self._unsent.clear()
        self._state = _GateState.SPEAKING
        self._turn_frames = len(preroll)
        self._silent_run = 0
        events: list[GateEvent] = [GateSpeechStarted(b"".join(audio for audio, _ in preroll))]
        if self._turn_frames >= self.max_turn_frames:
            events.append(self._end("max_length"))
        return events

    def _feed_speaking(self, frame: bytes, is_speech: bool) -> list[GateEvent]:
        self._turn_frames += 1
        self._silent_run = 0 if is_speech else self._silent_run + 1
        events: list[GateEvent] = [GateSpeechAudio(frame)]
        if self._silent_run >= self.silence_frames:
            events.append(self._end("silence"))
        elif self._turn_frames >= self.max_turn_frames:
            events.append(self._end("max_length"))
        return events

    def _end(self, reason: EndReason) -> GateSpeechEnded:
        self._state = _GateState.QUIET
        self._likely = False
        self._turn_frames = 0
        self._silent_run = 0
        return GateSpeechEnded(reason)
