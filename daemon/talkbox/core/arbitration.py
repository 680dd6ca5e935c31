"""Which talkbox of a house answers: pure, synchronous, clock-free.

Every talkbox that hears the wake word (or is asked to wake, or gets a house-wide
announcement) publishes a `Claim` on the broker and waits a short window; at its end the
best claim of that round answers and the others go back to idle without a chime. Every
speaker ranks the same claims the same way (`rank`), so all of them agree on the one winner
without talking again.

Clocks of different devices are not synchronized, so no claim carries a time: a round is the
claims that *arrive* within `window_seconds` of the first one this speaker saw (its own or a
peer's), measured on this speaker's monotonic clock, which comes in as `now`. With no broker
the speaker answers at once, alone: arbitration never costs more than the window.

Speakers do not detect one phrase at the same moment: in simulated rooms (bench
house_arbitration) their detections lay up to 412 ms apart (median 101 ms), the nearest
one's often the later; and a claim can reach a speaker late (a busy network or device).
Claims of one phrase are therefore those within `SAME_PHRASE_SECONDS`, of which a round is
only the part that decides at once. The best claim of the phrase that was published always
answers: nothing outranks it, whatever arrived when. Every other speaker must not:

- a wake of ours when a peer's claim of the phrase came before our round began is the
  phrase heard late (or the same request made of several speakers, as `talkbox ctl wake`
  run on each): a speaker already answers, so this one stands down without a claim;
- at the end of our window, a better claim of the phrase that came before our round counts
  as one in it;
- a speaker that answered and then receives a claim of the phrase that outranks its own
  knows that one answers too, and yields: it stops its conversation without a chime.

Whatever the delays within `SAME_PHRASE_SECONDS`, one speaker goes on answering
(tests/unit/test_arbitration.py drives that with random delays); the price is that the
nearest speaker sometimes loses to an earlier, farther one. Announcements are not held back
by earlier claims: the broker hands them to every speaker at once, and two of them a moment
apart are two texts to say.

A wake word heard while this speaker is already in a conversation (a barge-in, a follow-up)
is never held up; it is announced as an "engaged" claim, which outranks every fresh one, so
the speaker in the next room does not start a second conversation.

While a wake waits, the microphone's speech inputs after it are held here, and handed on
after it (the command said in one breath is not lost) or without it (the machine still sees
where the speech segment ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, assert_never

from talkbox.core.inputs import (
    Input,
    MicSpeechAudio,
    MicSpeechEnded,
    MicSpeechStarted,
    MuteChanged,
    StopRequested,
)

# Who outranks whom: a speaker already in a conversation, then one asked by name (`talkbox ctl
# wake`, Home Assistant's button), then one that heard it (those by level, then score).
ClaimKind = Literal["engaged", "asked", "heard"]
KIND_ORDER: dict[ClaimKind, int] = {"engaged": 2, "asked": 1, "heard": 0}

Subject = Literal["wake", "announce"]
WAKE: Subject = "wake"
ANNOUNCE: Subject = "announce"

# The quietest level a claim may state (dBFS); silence measures as this.
FLOOR_DB = -120.0
# Claims this close after the start of a closed round are the same phrase heard late (over
# twice the widest spread measured between the speakers' detections, 412 ms); a wake
# word said again after this is a new wake.
SAME_PHRASE_SECONDS = 1.0


@dataclass(frozen=True)
class Claim:
    """One speaker's bid to answer: who, for what, and how well it heard.

    level_db: the wake phrase's speech level at this speaker's microphone (dBFS; the nearest
    speaker hears it loudest). score: the wake model's score (0..1), the tie-break after it.
    Level first, as measured in simulated rooms (bench/house_arbitration.py,
    docs/benchmarks.md): the highest level was the nearest speaker's more often than the
    highest score was.
    """

    speaker: str
    subject: Subject = WAKE
    kind: ClaimKind = "heard"
    level_db: float = FLOOR_DB
    score: float = 0.0


def rank(claim: Claim) -> tuple[int, float, float, str]:
    """The order every speaker applies: the greatest wins. Levels are compared to 0.1 dB so
    that the same measurement rounded differently on the wire cannot split a decision; the
    name breaks what is left (the alphabetically first wins), so there is always one."""
    inverted_name = "".join(chr(0x10FFFF - ord(c)) for c in claim.speaker)
    return (KIND_ORDER[claim.kind], round(claim.level_db, 1), round(claim.score, 3), inverted_name)


def best(claims: list[Claim]) -> Claim:
    return max(claims, key=rank)


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnClaim:
    """This speaker wants to answer: `answer` is the input that starts it (a `WakeWord`, or
    whatever the shell gives the machine for an announcement). `idle`: the conversation
    machine is idle (else the wake is a barge-in or a follow-up, handed on at once)."""

    claim: Claim
    answer: Input
    idle: bool = True


@dataclass(frozen=True)
class PeerClaimed:
    claim: Claim


@dataclass(frozen=True)
class WindowEnded:
    subject: Subject
    token: int


@dataclass(frozen=True)
class BrokerChanged:
    connected: bool


@dataclass(frozen=True)
class Passing:
    """Any other input for the conversation machine: handed on, or held while a wake waits."""

    input: Input


ArbiterInput = OwnClaim | PeerClaimed | WindowEnded | BrokerChanged | Passing


# --- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishClaim:
    claim: Claim


@dataclass(frozen=True)
class StartWindow:
    subject: Subject
    seconds: float
    token: int


@dataclass(frozen=True)
class Deliver:
    """Give this input to the conversation machine now."""

    input: Input


@dataclass(frozen=True)
class Answered:
    """This speaker won its round (or answered alone): for the log."""

    mine: Claim
    rivals: tuple[Claim, ...]
    alone: bool


@dataclass(frozen=True)
class StoodDown:
    """Another speaker answers this round: go on idling, no chime."""

    mine: Claim
    winner: Claim


@dataclass(frozen=True)
class Yielded:
    """This speaker answered, then a better claim of the same round arrived late: that
    speaker answers too (the best claim always does), so this one stops, quietly."""

    mine: Claim
    winner: Claim


ArbiterAction = PublishClaim | StartWindow | Deliver | Answered | StoodDown | Yielded


@dataclass
class _Round:
    started: float
    claims: list[Claim] = field(default_factory=list)
    mine: OwnClaim | None = None
    held: list[Input] = field(default_factory=list)
    token: int = 0


class WakeArbiter:
    """Decides, for this speaker (`me`), whether it answers: see the module docstring."""

    def __init__(self, me: str, window_seconds: float) -> None:
        self.me = me
        self.window_seconds = window_seconds
        self.connected = False
        self._rounds: dict[Subject, _Round] = {}
        # Peers' wake claims of the last SAME_PHRASE_SECONDS, with when they arrived.
        self._recent_wakes: list[tuple[float, Claim]] = []
        # The last round we won, per subject: (its start, our claim), for a late better claim.
        self._answered: dict[Subject, tuple[float, Claim]] = {}
        self._next_token = 0

    @property
    def waiting(self) -> bool:
        """A claim of ours waits for its window to end."""
        return any(r.mine is not None for r in self._rounds.values())

    def step(self, event: ArbiterInput, now: float) -> list[ArbiterAction]:
        out: list[ArbiterAction] = []
        match event:
            case OwnClaim():
                self._own(event, now, out)
            case PeerClaimed():
                self._peer(event.claim, now, out)
            case WindowEnded():
                current = self._rounds.get(event.subject)
                if current is not None and current.token == event.token:
                    self._decide(event.subject, out, now)
            case BrokerChanged():
                self.connected = event.connected
                if not event.connected:
                    # Nobody can be asked any more: whoever waits answers now, alone.
                    for subject in list(self._rounds):
                        self._decide(subject, out, now, alone=True)
            case Passing():
                self._passing(event.input, out)
            case _:
                assert_never(event)
        return out

    def _round(self, subject: Subject, now: float) -> _Round:
        """The round `now` belongs to: the open one, or a new one if it is over."""
        current = self._rounds.get(subject)
        if current is not None and current.mine is not None:
            return current  # ours waits for its WindowEnded, which decides it
        if current is None or now - current.started > self.window_seconds:
            current = _Round(started=now)
            self._rounds[subject] = current
        return current

    def _recent(self, subject: Subject, now: float) -> list[Claim]:
        """Peers' claims for the same phrase that came before this round (wakes only: two
        announcements a moment apart are two texts)."""
        if subject != WAKE:
            return []
        return [c for at, c in self._recent_wakes if now - at <= SAME_PHRASE_SECONDS]

    def _own(self, event: OwnClaim, now: float, out: list[ArbiterAction]) -> None:
        claim = event.claim
        if not event.idle:
            claim = Claim(claim.speaker, claim.subject, "engaged", claim.level_db, claim.score)
        current = self._round(claim.subject, now) if self.connected and event.idle else None
        if current is not None and current.mine is not None:
            return  # the same phrase detected twice in one round: the first claim stands
        if current is not None and not current.claims:
            recent = self._recent(claim.subject, now)
            if recent:
                # Heard late: that round's winner answers. No claim: a speaker later still
                # must find no open round to join, only the closed one.
                del self._rounds[claim.subject]
                out.append(StoodDown(claim, best(recent)))
                return
        if self.connected:
            out.append(PublishClaim(claim))
        if current is None:
            out.append(Answered(claim, (), alone=not self.connected))
            out.append(Deliver(event.answer))
            return
        current.mine = OwnClaim(claim, event.answer)
        current.claims.append(claim)
        self._next_token += 1
        current.token = self._next_token
        remaining = max(0.0, current.started + self.window_seconds - now)
        out.append(StartWindow(claim.subject, remaining, current.token))

    def _peer(self, claim: Claim, now: float, out: list[ArbiterAction]) -> None:
        if claim.speaker == self.me:
            return  # our own claim, back from the broker
        answered = self._answered.get(claim.subject)
        if (
            answered is not None
            and now - answered[0] <= SAME_PHRASE_SECONDS
            and rank(claim) > rank(answered[1])
        ):
            del self._answered[claim.subject]
            out.append(Yielded(answered[1], claim))
            return
        if claim.subject == WAKE:
            self._recent_wakes = [
                (at, c) for at, c in self._recent_wakes if now - at <= SAME_PHRASE_SECONDS
            ]
            self._recent_wakes.append((now, claim))
        current = self._round(claim.subject, now)
        if now - current.started <= self.window_seconds:
            current.claims.append(claim)  # (a later one is too late for a round we decide)

    def _decide(
        self, subject: Subject, out: list[ArbiterAction], now: float, *, alone: bool = False
    ) -> None:
        """The round's best claim answers; a better one of the same phrase that came before
        the round (a round of peers that ended while ours began) counts too: its speaker,
        or one better still, answers."""
        current = self._rounds.pop(subject)
        mine = current.mine
        if mine is None:
            return
        earlier = [c for c in self._recent(subject, now) if c not in current.claims]
        winner = mine.claim if alone else best(current.claims + earlier)
        if winner == mine.claim:
            if not alone:  # (alone: nobody else could hear of it)
                self._answered[subject] = (current.started, mine.claim)
            rivals = tuple(c for c in current.claims if c is not mine.claim)
            out.append(Answered(mine.claim, rivals, alone))
            out.append(Deliver(mine.answer))
        else:
            out.append(StoodDown(mine.claim, winner))
        out.extend(Deliver(held) for held in current.held)

    def _passing(self, event: Input, out: list[ArbiterAction]) -> None:
        if isinstance(event, StopRequested) or (isinstance(event, MuteChanged) and event.muted):
            # Asked to stop (or muted) while waiting: the wake is dropped, not answered later.
            for subject, dropped in list(self._rounds.items()):
                if dropped.mine is not None:
                    del self._rounds[subject]
                    out.extend(Deliver(held) for held in dropped.held)
        current = self._rounds.get(WAKE)
        if current is not None and current.mine is not None and isinstance(
            event, MicSpeechStarted | MicSpeechAudio | MicSpeechEnded
        ):
            current.held.append(event)
            return
        out.append(Deliver(event))
