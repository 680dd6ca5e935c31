"""House arbitration (issue 16): does the wake phrase's level or the wake score pick the
speaker nearest the talker? And how far apart in time do the speakers of a house detect it?

Simulated houses: a talker says "hey jarvis" (espeak-ng, the wake tests' voices and speeds)
at some distance from each of several speakers. What each microphone hears: the direct sound,
down 6 dB per doubling of distance, and the room's diffuse reverberation, the same level
everywhere in the room (beyond the critical distance the reverberation dominates); so the
direct-to-reverberant ratio is 20 log10(critical distance / distance), given to
`support.room.impulse_response` (decaying noise, its own seed per speaker). Sound takes
distance / 343 m/s to arrive; each speaker's capture started at a random moment, so their
80 ms wake chunks do not line up; each microphone has its own noise floor and, in the
"uneven" houses, its own gain (microphones and their mixer settings differ by a few dB).

Each speaker runs the daemon's own front end (`build_front_end` with the default config: the
VAD, the speech gate and the openWakeWord detector) and makes the claim the daemon makes: the
wake model's score from `WakeDetected`, and `speech_level_db` of the speech audio the daemon
keeps before the wake (`Daemon._recent_audio`: the gate's pre-roll and speech frames, at most
RECENT_AUDIO_MS). Among the speakers that detected the wake word, a trial counts whether the
highest level and whether the highest score belong to the nearest speaker.

`python -m bench.house_arbitration` prints a table and writes
bench/results/house_arbitration.json (about 2 minutes here). What the figures mean:
docs/benchmarks.md, "House arbitration (issue 16)".
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from support.room import RoomSpec, impulse_response
from support.speech import speak
from support.wake_clips import SPEEDS, VOICES
from talkbox.audio.frontend import FrontEnd, WakeDetected
from talkbox.audio.level import speech_level_db
from talkbox.audio.vad import GateSpeechAudio, GateSpeechEnded, GateSpeechStarted
from talkbox.config import Config
from talkbox.shell.app import FRAME_MS, RECENT_AUDIO_MS, build_front_end

RESULTS = Path(__file__).resolve().parent / "results" / "house_arbitration.json"
RATE = 16000
SOUND_M_PER_S = 343.0
TALKER_DBFS_AT_1M = -26.0  # ITU-T P.56's nominal active speech level, at a metre
NOISE_DBFS = -60.0  # each microphone's own noise floor (a quiet house, a cheap microphone)
WAKE_CHUNK_S = 0.08
WINDOWS_MS = (50, 100, 150, 200, 300, 500)
LEAD_S = 1.0  # noise before the phrase reaches the first speaker
GAP_S = 3.0  # noise after it: past the detector's refractory time, the gate's turn closed


@dataclass(frozen=True)
class House:
    """Where the speakers stand: (metres from the talker, dB lost through walls and doors on
    the way; 0 in the talker's room). The first is the nearest."""

    name: str
    speakers: tuple[tuple[float, float], ...]
    rt60_s: float
    critical_m: float  # where the direct sound and the reverberation are equally loud
    mic_spread_db: float = 0.0  # each microphone's gain: uniform in +-this

    @property
    def distances_m(self) -> tuple[float, ...]:
        return tuple(distance for distance, _ in self.speakers)


HOUSES = (
    House("one room", ((1.5, 0), (3.0, 0)), rt60_s=0.4, critical_m=1.2),
    House("one room, close call", ((1.5, 0), (2.2, 0)), rt60_s=0.4, critical_m=1.2),
    House("open door, next room", ((1.5, 0), (4.0, 10), (7.0, 20)), rt60_s=0.4, critical_m=1.2),
    House("bare hall", ((2.0, 0), (3.0, 0), (6.0, 10)), rt60_s=0.9, critical_m=0.8),
    House("one room, uneven mics", ((1.5, 0), (3.0, 0)), rt60_s=0.4, critical_m=1.2,
          mic_spread_db=3.0),
    House("next room, uneven mics", ((1.5, 0), (4.0, 10), (7.0, 20)), rt60_s=0.4,
          critical_m=1.2, mic_spread_db=3.0),
)


@dataclass(frozen=True)
class Heard:
    speaker: int
    level_db: float
    score: float
    detected_s: float  # on the house's clock: 0 is when the talker started


@dataclass
class Trial:
    house: str
    voice: str
    speed: int
    heard: list[Heard]

    def pick(self, key: str, window_s: float = math.inf) -> int | None:
        """Who answers when claims rank by `key` ("level" as core/arbitration.rank: level to
        0.1 dB, then the score; or "score" first), among those detected within `window_s` of
        the first detection (a later claim stands down: the house has answered)."""
        if not self.heard:
            return None
        first = min(h.detected_s for h in self.heard)
        in_time = [h for h in self.heard if h.detected_s - first <= window_s]
        if key == "level":
            return max(in_time, key=lambda h: (round(h.level_db, 1), round(h.score, 3))).speaker
        return max(in_time, key=lambda h: (round(h.score, 3), round(h.level_db, 1))).speaker

    @property
    def score_tied(self) -> bool:
        top = max((round(h.score, 3) for h in self.heard), default=None)
        return sum(round(h.score, 3) == top for h in self.heard) > 1

    @property
    def spread_s(self) -> float | None:
        times = [h.detected_s for h in self.heard]
        return max(times) - min(times) if len(times) > 1 else None


@dataclass
class HouseResult:
    name: str
    trials: int = 0
    nearest_heard: int = 0  # trials in which the nearest speaker detected the wake word
    several_heard: int = 0  # ... and at least one other did too: a decision to make
    level_nearest: int = 0  # of those, how often the highest level is the nearest's
    score_nearest: int = 0
    score_ties: int = 0
    spreads_ms: list[float] = field(default_factory=list)


def at_distance(phrase: npt.NDArray[np.float64], house: House, speaker: int,
                rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], float]:
    """What speaker `speaker`'s microphone hears of `phrase` (PCM16 units, at 1 m at the
    talker level), and the moment its capture started relative to the talker's first sound."""
    distance, wall_db = house.speakers[speaker]
    direct_db = 20 * math.log10(house.critical_m / distance)
    spec = RoomSpec(rt60_s=house.rt60_s, direct_db=direct_db, seed=int(rng.integers(1 << 30)))
    wet = np.convolve(phrase, impulse_response(spec, RATE))
    # Energy: the direct sound's 1/r^2 plus the diffuse field's 1/rc^2, relative to 1 m.
    gain_db = 10 * math.log10(distance**-2 + house.critical_m**-2) - wall_db
    gain_db += rng.uniform(-house.mic_spread_db, house.mic_spread_db)
    wet *= 10 ** (gain_db / 20)
    # The capture began at a random phase of the 80 ms wake chunk; the sound is late by its way.
    phase = rng.uniform(0, WAKE_CHUNK_S)
    before = round((LEAD_S + phase + distance / SOUND_M_PER_S) * RATE)
    noise = rng.standard_normal(before + len(wet) + round(GAP_S * RATE))
    heard = noise * (32768 * 10 ** (NOISE_DBFS / 20))
    heard[before : before + len(wet)] += wet
    return heard, LEAD_S + phase


def listen(front_end: FrontEnd, pcm: npt.NDArray[np.float64]) -> tuple[float, float, float] | None:
    """Feed `pcm` as the daemon does; (level, score, audio time) of its first wake, if any."""
    recent: deque[bytes] = deque(maxlen=RECENT_AUDIO_MS // FRAME_MS)
    start = front_end.audio_time
    data = np.clip(np.rint(pcm), -32768, 32767).astype("<i2").tobytes()
    found = None
    period = RATE * 40 // 1000 * 2  # 40 ms capture periods
    for at in range(0, len(data), period):
        for event in front_end.process(data[at : at + period]):
            match event:  # the same bookkeeping as Daemon.on_front_end_events
                case WakeDetected() if found is None:
                    level = speech_level_db(b"".join(recent))
                    found = (level, event.score, event.audio_time - start)
                case GateSpeechStarted():
                    recent.clear()
                    recent.append(event.preroll)
                case GateSpeechAudio():
                    recent.append(event.pcm)
                case GateSpeechEnded():
                    recent.clear()
    return found


def run_house(
    house: House, front_ends: list[FrontEnd], seed: int
) -> tuple[HouseResult, list[Trial]]:
    rng = np.random.default_rng(seed)
    result = HouseResult(house.name)
    trials = []
    for voice in VOICES:
        for speed in SPEEDS:
            phrase = speak("hey jarvis", voice=voice, speed=speed, rate=RATE, pad=(0.0, 0.0))
            level = 20 * math.log10(max(1e-9, float(np.sqrt(np.mean((phrase / 32768.0) ** 2)))))
            # A talker a little louder or softer each time (+-4 dB around the nominal level).
            at_1m = phrase * 10 ** ((TALKER_DBFS_AT_1M - level + rng.uniform(-4, 4)) / 20)
            heard = []
            for i in range(len(house.distances_m)):
                pcm, capture_started = at_distance(at_1m, house, i, rng)
                found = listen(front_ends[i], pcm)
                if found is not None:
                    heard.append(Heard(i, found[0], found[1], found[2] - capture_started))
            trial = Trial(house.name, voice, speed, heard)
            trials.append(trial)
            result.trials += 1
            if any(h.speaker == 0 for h in heard):
                result.nearest_heard += 1
                if len(heard) > 1:
                    result.several_heard += 1
                    result.level_nearest += trial.pick("level") == 0
                    result.score_nearest += trial.pick("score") == 0
                    result.score_ties += trial.score_tied
            if trial.spread_s is not None:
                result.spreads_ms.append(trial.spread_s * 1000)
    return result, trials


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2,
                        help="times each house hears every voice (new reverberation, phases)")
    args = parser.parse_args()
    started = time.monotonic()
    cfg = Config()
    widest = max(len(h.distances_m) for h in HOUSES)
    front_ends = [build_front_end(cfg) for _ in range(widest)]
    results: list[HouseResult] = []
    all_trials: list[Trial] = []
    for house in HOUSES:
        merged = HouseResult(house.name)
        for round_ in range(args.rounds):
            part, trials = run_house(house, front_ends, seed=round_)
            all_trials += trials
            for name in ("trials", "nearest_heard", "several_heard", "level_nearest",
                         "score_nearest", "score_ties"):
                setattr(merged, name, getattr(merged, name) + getattr(part, name))
            merged.spreads_ms += part.spreads_ms
        results.append(merged)

    print(f"{'house':24} {'trials':>6} {'nearest':>7} {'decide':>6} {'level':>6} {'score':>6} "
          f"{'ties':>5} {'spread p50':>10} {'p95':>5} {'max ms':>6}")
    for r in results:
        print(f"{r.name:24} {r.trials:6} {r.nearest_heard:7} {r.several_heard:6} "
              f"{r.level_nearest:6} {r.score_nearest:6} {r.score_ties:5} "
              f"{percentile(r.spreads_ms, 0.5):10.0f} {percentile(r.spreads_ms, 0.95):5.0f} "
              f"{max(r.spreads_ms, default=float('nan')):6.0f}")
    spreads = [s for r in results for s in r.spreads_ms]
    decide = sum(r.several_heard for r in results)
    print(f"{'all':24} {sum(r.trials for r in results):6} "
          f"{sum(r.nearest_heard for r in results):7} {decide:6} "
          f"{sum(r.level_nearest for r in results):6} {sum(r.score_nearest for r in results):6} "
          f"{sum(r.score_ties for r in results):5} {percentile(spreads, 0.5):10.0f} "
          f"{percentile(spreads, 0.95):5.0f} {max(spreads, default=float('nan')):6.0f}")
    print(f"({time.monotonic() - started:.0f} s; 'decide': trials in which the nearest and at "
          "least one other speaker detected it; 'level'/'score': of those, how often that "
          "figure's highest was the nearest speaker)")
    # Who answers with a window: the nearest only if its claim came in time.
    decided = [t for t in all_trials if len(t.heard) > 1 and any(h.speaker == 0 for h in t.heard)]
    by_window = {}
    print(f"\n{'window ms':>9} {'level':>6} {'score':>6}   (of {len(decided)} decisions: how often "
          "the nearest answers)")
    for window_ms in WINDOWS_MS:
        level = sum(t.pick("level", window_ms / 1000) == 0 for t in decided)
        score = sum(t.pick("score", window_ms / 1000) == 0 for t in decided)
        by_window[window_ms] = {"level": level, "score": score, "decisions": len(decided)}
        print(f"{window_ms:9} {level:6} {score:6}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "houses": [{**asdict(h), "result": {**asdict(r), "spread_median_ms":
                    statistics.median(r.spreads_ms) if r.spreads_ms else None}}
                   for h, r in zip(HOUSES, results, strict=True)],
        "nearest_answers_by_window_ms": by_window,
        "trials": [asdict(t) for t in all_trials],
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
