"""The house's arbitration rule (core/arbitration.py), driven with a fake clock."""

from __future__ import annotations

import itertools
import random

from talkbox.core.arbitration import (
    ANNOUNCE,
    SAME_PHRASE_SECONDS,
    WAKE,
    Answered,
    ArbiterAction,
    BrokerChanged,
    Claim,
    Deliver,
    OwnClaim,
    Passing,
    PeerClaimed,
    PublishClaim,
    StartWindow,
    StoodDown,
    WakeArbiter,
    WindowEnded,
    Yielded,
    best,
)
from talkbox.core.inputs import (
    Input,
    MicSpeechAudio,
    MicSpeechEnded,
    StopRequested,
    WakeWord,
)

WINDOW = 0.15


def connected(me: str) -> WakeArbiter:
    arbiter = WakeArbiter(me, WINDOW)
    assert arbiter.step(BrokerChanged(True), 0.0) == []
    return arbiter


def delivered(actions: list[ArbiterAction]) -> list[Input]:
    return [a.input for a in actions if isinstance(a, Deliver)]


def window_of(actions: list[ArbiterAction]) -> StartWindow:
    (window,) = [a for a in actions if isinstance(a, StartWindow)]
    return window


def test_without_a_broker_the_wake_is_answered_at_once_and_nothing_is_published() -> None:
    arbiter = WakeArbiter("kitchen", WINDOW)
    wake = WakeWord("hey_jarvis")
    actions = arbiter.step(OwnClaim(Claim("kitchen", level_db=-30, score=0.9), wake), 5.0)
    assert delivered(actions) == [wake]
    assert not any(isinstance(a, PublishClaim | StartWindow) for a in actions)
    assert Answered(Claim("kitchen", level_db=-30, score=0.9), (), alone=True) in actions


def test_the_loudest_claim_answers_and_the_others_stand_down() -> None:
    claims = {
        "kitchen": Claim("kitchen", level_db=-20.0, score=0.91),
        "hall": Claim("hall", level_db=-31.0, score=0.99),
        "study": Claim("study", level_db=-38.0, score=0.95),
    }
    arbiters = {name: connected(name) for name in claims}
    wakes = {name: WakeWord("hey_jarvis", name.encode()) for name in claims}
    # Each hears the phrase at a different moment and gets the others' claims as they arrive.
    detected = {"hall": 10.0, "kitchen": 10.04, "study": 10.09}
    answers: dict[str, list[Input]] = {}
    for name, arbiter in arbiters.items():
        events = [(detected[name], OwnClaim(claims[name], wakes[name]))]
        events += [(detected[p] + 0.002, PeerClaimed(claims[p])) for p in claims if p != name]
        window: StartWindow | None = None
        for at, event in sorted(events, key=lambda e: e[0]):
            actions = arbiter.step(event, at)
            if isinstance(event, OwnClaim):
                assert PublishClaim(claims[name]) in actions
                assert delivered(actions) == []
                window = window_of(actions)
        assert window is not None
        # The window is counted from the first claim this speaker saw, never its own time.
        first_seen = min(detected[name], *(detected[p] + 0.002 for p in claims if p != name))
        assert abs(detected[name] + window.seconds - (first_seen + WINDOW)) < 1e-9
        answers[name] = delivered(arbiter.step(WindowEnded(WAKE, window.token), 99.0))
    assert answers == {"kitchen": [wakes["kitchen"]], "hall": [], "study": []}


def test_the_same_phrase_heard_after_the_window_stands_down_without_a_claim() -> None:
    # The hall's round closed without us; the hall answers it. Hearing the phrase late, even
    # louder, must not make a second speaker answer.
    arbiter = connected("kitchen")
    arbiter.step(PeerClaimed(Claim("hall", level_db=-40.0)), 1.0)
    mine = OwnClaim(Claim("kitchen", level_db=0.0), WakeWord())
    actions = arbiter.step(mine, 1.0 + WINDOW + 0.2)
    assert actions == [StoodDown(mine.claim, Claim("hall", level_db=-40.0))]
    # A third speaker, later still, finds no claim of ours to join: it stands down as well.
    third = connected("attic")
    third.step(PeerClaimed(Claim("hall", level_db=-40.0)), 1.0)
    late = OwnClaim(Claim("attic", level_db=-10.0), WakeWord())
    assert isinstance(third.step(late, 1.0 + WINDOW + 0.4)[0], StoodDown)


def test_a_wake_after_the_same_phrase_time_starts_a_new_round() -> None:
    arbiter = connected("kitchen")
    arbiter.step(PeerClaimed(Claim("hall", level_db=0.0)), 1.0)
    mine = OwnClaim(Claim("kitchen", level_db=-40.0), WakeWord())
    window = window_of(arbiter.step(mine, 1.0 + SAME_PHRASE_SECONDS + 0.01))
    assert abs(window.seconds - WINDOW) < 1e-9
    assert len(delivered(arbiter.step(WindowEnded(WAKE, window.token), 3.0))) == 1


def test_asked_just_after_a_round_stands_down_but_an_announcement_does_not() -> None:
    # `talkbox ctl wake` run on every speaker: one answers. Two announcements: both said.
    arbiter = connected("kitchen")
    arbiter.step(PeerClaimed(Claim("hall", kind="asked")), 1.0)
    asked = OwnClaim(Claim("kitchen", kind="asked"), WakeWord())
    assert isinstance(arbiter.step(asked, 1.0 + WINDOW + 0.1)[0], StoodDown)
    arbiter.step(PeerClaimed(Claim("hall", ANNOUNCE, "asked")), 2.0)
    second = OwnClaim(Claim("kitchen", ANNOUNCE, "asked"), WakeWord())
    window = window_of(arbiter.step(second, 2.0 + WINDOW + 0.1))
    assert len(delivered(arbiter.step(WindowEnded(ANNOUNCE, window.token), 3.0))) == 1


def test_a_better_claim_before_the_decision_counts_even_if_past_the_window() -> None:
    # Too late for our round, but its speaker answers (the best claim always does).
    arbiter = connected("kitchen")
    mine = OwnClaim(Claim("kitchen", level_db=-40.0), WakeWord())
    window = window_of(arbiter.step(mine, 1.0))
    arbiter.step(PeerClaimed(Claim("hall", level_db=0.0)), 1.0 + WINDOW + 0.05)
    decided = arbiter.step(WindowEnded(WAKE, window.token), 1.3)
    assert decided == [StoodDown(mine.claim, Claim("hall", level_db=0.0))]


def test_a_worse_claim_in_a_round_before_ours_does_not_hold_us_back() -> None:
    arbiter = connected("kitchen")
    arbiter.step(PeerClaimed(Claim("hall", level_db=-50.0)), 1.0)
    arbiter.step(PeerClaimed(Claim("attic", level_db=-45.0)), 1.0 + WINDOW + 0.05)
    mine = OwnClaim(Claim("kitchen", level_db=-40.0), WakeWord())
    window = window_of(arbiter.step(mine, 1.0 + WINDOW + 0.1))  # joins the attic's round
    assert len(delivered(arbiter.step(WindowEnded(WAKE, window.token), 1.5))) == 1


def test_ties_are_broken_the_same_way_everywhere() -> None:
    a = Claim("attic", level_db=-25.04, score=0.9)
    b = Claim("basement", level_db=-24.96, score=0.9)  # the same level to 0.1 dB
    for order in itertools.permutations([a, b]):
        assert best(list(order)) == a
    assert best([Claim("x", score=0.5), Claim("y", score=0.6)]).speaker == "y"


def test_every_speaker_agrees_on_one_winner_whatever_the_arrival_order() -> None:
    rng = random.Random(7)
    for _ in range(200):
        claims = [
            Claim(f"s{i}", level_db=rng.choice([-30.0, -20.0, -25.0]), score=rng.random())
            for i in range(rng.randint(2, 6))
        ]
        winners = []
        for me in claims:
            arbiter = connected(me.speaker)
            window = window_of(arbiter.step(OwnClaim(me, WakeWord()), 0.0))
            peers = [c for c in claims if c is not me]
            rng.shuffle(peers)
            for peer in peers:
                arbiter.step(PeerClaimed(peer), rng.uniform(0, WINDOW))
            if delivered(arbiter.step(WindowEnded(WAKE, window.token), 1.0)):
                winners.append(me.speaker)
        assert winners == [best(claims).speaker]


def test_asked_outranks_heard_and_engaged_outranks_both() -> None:
    heard = Claim("hall", level_db=-5.0, score=1.0)
    asked = Claim("kitchen", kind="asked")
    engaged = Claim("study", kind="engaged", level_db=-60.0)
    assert best([heard, asked]) == asked
    assert best([heard, asked, engaged]) == engaged


def test_a_wake_during_a_conversation_is_never_held_and_is_claimed_as_engaged() -> None:
    arbiter = connected("kitchen")
    wake = WakeWord("hey_jarvis")
    actions = arbiter.step(OwnClaim(Claim("kitchen", level_db=-30.0), wake, idle=False), 3.0)
    assert delivered(actions) == [wake]
    assert PublishClaim(Claim("kitchen", kind="engaged", level_db=-30.0)) in actions


def test_the_speech_after_a_waiting_wake_is_held_and_handed_on_after_it() -> None:
    arbiter = connected("kitchen")
    wake = WakeWord("hey_jarvis")
    window = window_of(arbiter.step(OwnClaim(Claim("kitchen", level_db=-30.0), wake), 0.0))
    speech = [MicSpeechAudio(b"\x01\x00"), MicSpeechAudio(b"\x02\x00"), MicSpeechEnded()]
    for event in speech:
        assert arbiter.step(Passing(event), 0.05) == []
    assert delivered(arbiter.step(WindowEnded(WAKE, window.token), 0.2)) == [wake, *speech]
    assert delivered(arbiter.step(Passing(speech[0]), 0.3)) == [speech[0]]


def test_a_speaker_that_stands_down_still_hands_on_the_end_of_the_segment() -> None:
    arbiter = connected("study")
    window = window_of(arbiter.step(OwnClaim(Claim("study", level_db=-40.0), WakeWord()), 0.0))
    arbiter.step(PeerClaimed(Claim("kitchen", level_db=-20.0)), 0.01)
    arbiter.step(Passing(MicSpeechEnded()), 0.05)
    actions = arbiter.step(WindowEnded(WAKE, window.token), 0.2)
    assert delivered(actions) == [MicSpeechEnded()]
    assert StoodDown(Claim("study", level_db=-40.0), Claim("kitchen", level_db=-20.0)) in actions


def test_losing_the_broker_while_waiting_answers_at_once() -> None:
    arbiter = connected("kitchen")
    wake = WakeWord("hey_jarvis")
    window = window_of(arbiter.step(OwnClaim(Claim("kitchen"), wake), 0.0))
    arbiter.step(PeerClaimed(Claim("hall", level_db=0.0)), 0.01)
    assert delivered(arbiter.step(BrokerChanged(False), 0.02)) == [wake]
    assert arbiter.step(WindowEnded(WAKE, window.token), 0.2) == []  # already decided


def test_stop_while_waiting_drops_the_wake() -> None:
    arbiter = connected("kitchen")
    window = window_of(arbiter.step(OwnClaim(Claim("kitchen"), WakeWord()), 0.0))
    stop = StopRequested("stop")
    assert delivered(arbiter.step(Passing(stop), 0.05)) == [stop]
    assert arbiter.step(WindowEnded(WAKE, window.token), 0.2) == []


def test_announcements_have_rounds_of_their_own() -> None:
    arbiter = connected("kitchen")
    wake_window = window_of(arbiter.step(OwnClaim(Claim("kitchen"), WakeWord()), 0.0))
    announce = StopRequested("stand-in for an announcement input")
    mine = Claim("kitchen", subject=ANNOUNCE, kind="asked")
    announce_window = window_of(arbiter.step(OwnClaim(mine, announce), 0.01))
    arbiter.step(PeerClaimed(Claim("attic", subject=ANNOUNCE, kind="asked")), 0.02)
    # The attic's announcement claim does not compete with the kitchen's wake.
    assert len(delivered(arbiter.step(WindowEnded(WAKE, wake_window.token), 0.2))) == 1
    # ...but it wins the announcement (same rank: the alphabetically first name).
    assert delivered(arbiter.step(WindowEnded(ANNOUNCE, announce_window.token), 0.2)) == []


def test_our_own_claim_echoed_by_the_broker_is_not_a_rival() -> None:
    arbiter = connected("kitchen")
    mine = Claim("kitchen", level_db=-50.0)
    window = window_of(arbiter.step(OwnClaim(mine, WakeWord()), 0.0))
    arbiter.step(PeerClaimed(mine), 0.001)
    actions = arbiter.step(WindowEnded(WAKE, window.token), 0.2)
    assert Answered(mine, (), alone=False) in actions


def test_a_better_claim_after_our_answer_makes_us_yield_once() -> None:
    arbiter = connected("kitchen")
    mine = OwnClaim(Claim("kitchen", level_db=-30.0), WakeWord())
    window = window_of(arbiter.step(mine, 1.0))
    assert len(delivered(arbiter.step(WindowEnded(WAKE, window.token), 1.0 + WINDOW))) == 1
    assert arbiter.step(PeerClaimed(Claim("attic", level_db=-40.0)), 1.3) == []
    better = Claim("hall", level_db=-20.0)
    assert arbiter.step(PeerClaimed(better), 1.4) == [Yielded(mine.claim, better)]
    assert arbiter.step(PeerClaimed(Claim("cellar", level_db=-10.0)), 1.5) == []


def test_no_yield_for_a_claim_of_a_later_wake() -> None:
    arbiter = connected("kitchen")
    window = window_of(arbiter.step(OwnClaim(Claim("kitchen", level_db=-30.0), WakeWord()), 1.0))
    arbiter.step(WindowEnded(WAKE, window.token), 1.0 + WINDOW)
    late = 1.0 + SAME_PHRASE_SECONDS + 0.1
    later = arbiter.step(PeerClaimed(Claim("hall", level_db=-20.0)), late)
    assert not any(isinstance(a, Yielded) for a in later)


def test_one_speaker_goes_on_answering_whatever_the_delays() -> None:
    """Speakers detect one phrase up to 0.4 s apart and claims take up to 0.4 s to arrive
    (windows of 0.15 s cannot hold them all): after the yields, exactly one answers, and it
    is the best claim that was published."""
    rng = random.Random(16)
    for trial in range(400):
        names = [f"s{i}" for i in range(rng.randint(2, 8))]
        arbiters = {n: connected(n) for n in names}
        queue: list[tuple[float, int, str, object]] = []
        order = itertools.count()
        for n in names:
            claim = Claim(n, level_db=round(rng.uniform(-60, -20), 1), score=0.9)
            queue.append((rng.uniform(0, 0.4), next(order), n, OwnClaim(claim, WakeWord())))
        answering: set[str] = set()
        published: list[Claim] = []
        while queue:
            queue.sort(key=lambda item: (item[0], item[1]))
            now, _, who, event = queue.pop(0)
            for action in arbiters[who].step(event, now):  # type: ignore[arg-type]
                if isinstance(action, PublishClaim):
                    published.append(action.claim)
                    for other in names:
                        if other != who:
                            at = now + rng.uniform(0.0, 0.4)
                            queue.append((at, next(order), other, PeerClaimed(action.claim)))
                elif isinstance(action, StartWindow):
                    ended = WindowEnded(action.subject, action.token)
                    queue.append((now + action.seconds, next(order), who, ended))
                elif isinstance(action, Answered):
                    answering.add(who)
                elif isinstance(action, Yielded):
                    answering.discard(who)
        assert answering == {best(published).speaker}, f"trial {trial}: {answering}"
