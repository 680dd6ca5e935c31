"""Speech barge-in in simulated rooms, faster than real time: the daemon's listening pipeline
(`build_front_end` with its echo canceller, VAD and speech gate, exactly as `talkbox run`
builds them) against `tests/support/room.py`'s room, on a simulated device clock.

The speaker plays a long answer in 20 ms blocks (handed to the echo reference 60 ms before it
is heard, as a PortAudio stream does); the room turns what was heard into the microphone's
40 ms periods (both streams' stamps jitter by 3 ms); a person talks over the answer now and
then. A turn the gate opens while the answer plays and nobody talks is a false barge-in; one
that opens while the person talks is heard, and the time from the person's first sound to it
is the detection latency. The answer pauses or stops at once, but what was already handed to
the speaker (60-80 ms) still plays: the time to silence counts it, as the live bench does.
What each figure means: docs/benchmarks.md.

`python -m bench.echo_room` prints a table per room; `simulate()` is what bench/__main__.py
and the tuning use.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

import bench._paths  # noqa: F401  (puts tests/ on sys.path for the support imports)
from support.room import (
    INTERRUPTING_REQUESTS,
    PERSON_DBFS,
    ROOMS,
    SPEAKER_DBFS,
    EchoRoom,
    RoomSpec,
    from_first_sound,
    speech_level_dbfs,
)
from support.speech import ordinary_speech_stretch, speak
from talkbox.audio.echo_cancel import SpeakerReference
from talkbox.audio.frontend import WakeDetected
from talkbox.audio.vad import GateSpeechLikely, GateSpeechStarted
from talkbox.config import Config
from talkbox.core.conversation import HOLD_SECONDS
from talkbox.shell.app import build_front_end

MIC_RATE = 16000
SPEAKER_RATE = 24000
CAPTURE_S = 0.04
BLOCK_S = 0.02
HANDED_AHEAD_S = 0.06  # a block reaches the reference this long before it is heard
# After an interruption, the next answer starts this long after the person stopped (their turn
# ends after 0.5 s of silence; the answer comes some 100s of ms later).
RESUME_AFTER_S = 1.0
# The stamps of both streams jitter as PortAudio's callbacks do on a busy machine: ms, not
# samples. (Exact stamps hid that restarting the pairing at every answer made AEC3 re-learn.)
STAMP_JITTER_S = 0.003


# With barge_in = "wake" (`simulate(wake_word=True)`) the person says the wake word first.
WAKE_VOICES = (("hey jarvis, what time is it", "en-gb", 150), ("hey jarvis, stop", "en-us", 160),
               ("hey jarvis, tell me something else", "en-us+f3", 170),
               ("hey jarvis, who wrote the odyssey", "en-gb-x-rp", 140))


def at_level(pcm: npt.NDArray[np.int16], dbfs: float) -> npt.NDArray[np.float32]:
    gain = 10 ** ((dbfs - speech_level_dbfs(pcm)) / 20)
    return (pcm.astype(np.float32) * gain).astype(np.float32)


@dataclass
class RoomResult:
    room: str
    answer_s: float = 0.0
    echo_only_s: float = 0.0
    false_barge_ins: int = 0
    interruptions: int = 0
    heard: int = 0
    latencies_s: list[float] = field(default_factory=list)
    false_at: list[float] = field(default_factory=list)
    # Pauses (HoldPlayback) for a voice over the answer: for each one heard, the time from the
    # person's first sound to the answer's last sound (what was handed to the device before
    # the pause that lasted until the turn opened, else before the turn); and pauses while
    # nobody talked (it then plays on after HOLD_SECONDS).
    silent_s: list[float] = field(default_factory=list)
    false_pauses: int = 0
    talk_starts: list[float] = field(default_factory=list)
    raw_echo_dbfs: float = 0.0
    cleaned_echo_dbfs: float = 0.0
    cpu_s: float = 0.0

    @property
    def echo_reduction_db(self) -> float:
        return self.raw_echo_dbfs - self.cleaned_echo_dbfs

    @property
    def false_per_hour(self) -> float:
        return self.false_barge_ins / max(1e-9, self.echo_only_s) * 3600


def simulate(name: str, spec: RoomSpec, *, seconds: float = 120.0, talk_every_s: float = 8.0,
             echo_cancellation: bool = True, seed: int = 0, wake_word: bool = False
             ) -> RoomResult:
    """`seconds` of answer in room `spec`, the person talking over it every ~`talk_every_s`
    (0: never). Each barge-in silences the speaker until 1 s after the person stopped.
    With `wake_word`, as with barge_in = "wake": the person says the wake word first, and only
    the wake word barges in (a turn the gate opens does not; `heard` counts wake words)."""
    rng = np.random.default_rng(seed)
    jitter = np.random.default_rng(seed + 1)
    cfg = Config.model_validate({"audio": {"echo_cancellation": echo_cancellation}})
    reference = SpeakerReference()
    reference.rate = SPEAKER_RATE
    front_end = build_front_end(cfg, reference)
    # The daemon rests the wake word during speech barge-in, and runs it with wake barge-in.
    front_end.wake_enabled = wake_word
    room = EchoRoom(spec, wait_s=0.0)
    # (past the stretch's leading second of silence: the answer starts at once)
    answer = at_level(ordinary_speech_stretch(SPEAKER_RATE, seconds + 6, noise_volume=0.0,
                                              pauses=(0.3, 0.6, 0.2))[SPEAKER_RATE:],
                      SPEAKER_DBFS)
    voices = [at_level(from_first_sound(speak(t, voice=v, speed=s, rate=MIC_RATE,
                                              pad=(0.0, 0.0))), PERSON_DBFS)
              for t, v, s in (WAKE_VOICES if wake_word else INTERRUPTING_REQUESTS)]
    result = RoomResult(name, answer_s=seconds)

    # The script: when the person starts and what they say.
    talks: list[tuple[float, npt.NDArray[np.float32]]] = []
    if talk_every_s > 0:
        at = 3.0
        while at < seconds - 3:
            talks.append((at, voices[len(talks) % len(voices)]))
            at += talk_every_s * rng.uniform(0.7, 1.3)
    person = np.zeros(int((seconds + 5) * MIC_RATE), np.float32)
    for at, voice in talks:
        start = int(at * MIC_RATE)
        person[start : start + len(voice)] += voice
    result.interruptions = len(talks)
    result.talk_starts = [at for at, _ in talks]

    answer_pos = 0  # speaker samples of the answer played so far
    silenced_until = -1.0
    held_until = -1.0  # the answer is paused (MicSpeechLikely) until then, or a barge-in
    sounding_until = -1.0  # when the last sound handed to the speaker ends
    silent_from_hold = -1.0  # ...as it was when the pause began
    blocks_handed = 0
    block_n = int(BLOCK_S * SPEAKER_RATE)
    chunk_n = int(CAPTURE_S * MIC_RATE)
    talk_index = 0
    detected_for: set[int] = set()
    raw_sq = cleaned_sq = 0.0
    echo_frames = 0
    talking_until = -1.0
    cpu = 0.0
    mic_period_s = room.period_s(chunk_n)  # the microphone's own clock (drift_ppm apart)
    for k in range(int(seconds / CAPTURE_S)):
        now = (k + 1) * mic_period_s  # the end of this capture period
        # The speaker: blocks handed over until HANDED_AHEAD_S past now.
        while blocks_handed * BLOCK_S <= now + HANDED_AHEAD_S:
            begins = blocks_handed * BLOCK_S
            playing = begins >= silenced_until and now >= held_until
            pcm = np.zeros(block_n, np.int16)
            if playing:
                pcm = np.clip(answer[answer_pos : answer_pos + block_n], -32768, 32767).astype(
                    np.int16)
                answer_pos += block_n
                if pcm.any():
                    sounding_until = begins + BLOCK_S
            reference.played(pcm.tobytes(), begins + STAMP_JITTER_S * jitter.standard_normal(),
                             bool(pcm.any()), reply=True)  # all of it is the answer
            room.played(pcm.tobytes(), at=begins + BLOCK_S)
            blocks_handed += 1
        echo = room.echo(chunk_n, at=now)
        voice = person[k * chunk_n : (k + 1) * chunk_n]
        mic = np.clip(np.rint(echo + voice), -32768, 32767).astype(np.int16)
        while talk_index < len(talks) and talks[talk_index][0] + len(talks[talk_index][1]) / \
                MIC_RATE < now - CAPTURE_S:
            talk_index += 1
        current = talk_index if talk_index < len(talks) and talks[talk_index][0] <= now else None
        if current is not None:
            talking_until = talks[current][0] + len(talks[current][1]) / MIC_RATE
        started = time.process_time()
        stamp = now - mic_period_s + STAMP_JITTER_S * jitter.standard_normal()
        events = front_end.process(mic.tobytes(), stamp)
        cpu += time.process_time() - started
        quiet_person = not voice.any() and now > talking_until + 0.5
        speaker_on = now - 0.5 >= silenced_until
        if quiet_person and speaker_on:
            # Echo only: how loud it was before and after cancellation.
            echo_canceller = front_end.echo
            cleaned = (np.frombuffer(echo_canceller.last_cleaned, np.int16)
                       if echo_canceller is not None and echo_canceller.last_chunk_cleaned
                       else mic)
            raw_sq += float(np.mean(mic.astype(np.float64) ** 2))
            cleaned_sq += float(np.mean(cleaned.astype(np.float64) ** 2))
            echo_frames += 1
            result.echo_only_s += CAPTURE_S
        talker = current if current is not None else (
            talk_index - 1 if talk_index > 0 and now <= talking_until + 0.3 else None)
        for event in events:
            if (isinstance(event, GateSpeechLikely) and not wake_word and speaker_on
                    and now >= held_until):
                # As the machine does with barge_in = "speech": pause, and play on after
                # HOLD_SECONDS unless a turn opens.
                silent_from_hold, held_until = sounding_until, now + HOLD_SECONDS
                if talker is None:
                    result.false_pauses += 1
                continue
            # What barges in: the wake word, or a turn opened by the speech gate.
            if not isinstance(event, WakeDetected if wake_word else GateSpeechStarted):
                continue
            if current is not None or now <= talking_until + 0.3:
                index = current if current is not None else talk_index - 1
                if index not in detected_for and index >= 0:
                    detected_for.add(index)
                    result.heard += 1
                    result.latencies_s.append(now - talks[index][0])
                    silenced_until = talking_until + RESUME_AFTER_S
                    # Silent since the pause, if it lasted until now (else it played on).
                    silent_from = silent_from_hold if now <= held_until else sounding_until
                    result.silent_s.append(max(0.0, silent_from - talks[index][0]))
                    held_until = -1.0
            elif speaker_on:
                result.false_barge_ins += 1
                result.false_at.append(now)
    result.raw_echo_dbfs = 10 * np.log10(raw_sq / max(1, echo_frames) / 32768**2 + 1e-12)
    result.cleaned_echo_dbfs = 10 * np.log10(cleaned_sq / max(1, echo_frames) / 32768**2
                                             + 1e-12)
    result.cpu_s = cpu
    return result


@dataclass
class EchoSummary:
    """bench/__main__.py's figures from every room, simulated with and without cancellation."""

    rooms: list[RoomResult]
    cpu_without_aec: float

    @property
    def reduction_db_median(self) -> float:
        return float(np.median([r.echo_reduction_db for r in self.rooms]))

    @property
    def reduction_db_least(self) -> float:
        return min(r.echo_reduction_db for r in self.rooms)

    @property
    def echo_only_s(self) -> float:
        return sum(r.echo_only_s for r in self.rooms)

    @property
    def false_per_hour(self) -> float:
        return sum(r.false_barge_ins for r in self.rooms) / max(1e-9, self.echo_only_s) * 3600

    @property
    def detect_ms(self) -> list[float]:
        return [s * 1000 for r in self.rooms for s in r.latencies_s]

    @property
    def silent_ms(self) -> list[float]:
        return [s * 1000 for r in self.rooms for s in r.silent_s]

    @property
    def false_pauses_per_hour(self) -> float:
        return sum(r.false_pauses for r in self.rooms) / max(1e-9, self.echo_only_s) * 3600

    @property
    def heard(self) -> int:
        return sum(r.heard for r in self.rooms)

    @property
    def interruptions(self) -> int:
        return sum(r.interruptions for r in self.rooms)

    @property
    def cpu_with_aec(self) -> float:
        return sum(r.cpu_s for r in self.rooms) / sum(r.answer_s for r in self.rooms)

    def as_dict(self) -> dict[str, object]:
        return {"cpu_without_aec": self.cpu_without_aec, "rooms": [
            {"room": r.room, "answer_s": r.answer_s, "echo_reduction_db": r.echo_reduction_db,
             "false_barge_ins": r.false_barge_ins, "heard": r.heard,
             "interruptions": r.interruptions, "detect_ms": [s * 1000 for s in r.latencies_s],
             "silent_ms": [s * 1000 for s in r.silent_s], "false_pauses": r.false_pauses,
             "cpu_per_s": r.cpu_s / r.answer_s} for r in self.rooms]}


def simulate_rooms(seconds: float) -> EchoSummary:
    """Every room of support.room with cancellation, talked over; and one answer without it,
    for the CPU the canceller costs."""
    rooms = [simulate(name, spec, seconds=seconds) for name, spec in ROOMS.items()]
    name, spec = next(iter(ROOMS.items()))
    plain = simulate(name, spec, seconds=seconds, talk_every_s=0, echo_cancellation=False)
    return EchoSummary(rooms, plain.cpu_s / plain.answer_s)


def _percentile_ms(latencies_s: list[float], q: float) -> float:
    lat = sorted(latencies_s) or [float("nan")]
    return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--talk-every", type=float, default=8.0,
                        help="the person talks over the answer every ~this many s (0: never,"
                             " echo alone)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds (the talk schedule and the stamps' jitter);"
                             " each room runs once a seed, and the last rows pool them")
    parser.add_argument("--rooms", default=",".join(ROOMS),
                        help=f"comma-separated rooms of {', '.join(ROOMS)}")
    parser.add_argument("--off", action="store_true", help="without echo cancellation")
    parser.add_argument("--wake-word", action="store_true",
                        help='barge_in = "wake": the person says "hey jarvis, ..." over the answer'
                             " (latency: to the wake word's detection, the phrase included)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.rooms.split(",")
    unknown = [n for n in names if n not in ROOMS]
    if unknown:
        parser.error(f"unknown room(s) {', '.join(unknown)}; known: {', '.join(ROOMS)}")
    print("heard p50/p95: from the person's first sound to the turn opening; silent: to the "
          "answer's silence (a pause that lasted until the turn, else the turn); pauses: while "
          "nobody talked")
    print(f"{'room':18} {'seed':>4} {'reduction':>9} {'false':>5} {'echo s':>6} {'heard':>7} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'silent':>7} {'p95':>5} {'pauses':>6} {'cpu/s':>7}")
    pooled: dict[str, list[RoomResult]] = {}
    for name in names:
        for seed in seeds:
            r = simulate(name, ROOMS[name], seconds=args.seconds, talk_every_s=args.talk_every,
                         echo_cancellation=not args.off, seed=seed, wake_word=args.wake_word)
            pooled.setdefault(name, []).append(r)
            print(f"{name:18} {seed:4} {r.echo_reduction_db:8.1f}dB {r.false_barge_ins:5} "
                  f"{r.echo_only_s:6.0f} {r.heard:3}/{r.interruptions:<3} "
                  f"{_percentile_ms(r.latencies_s, 0.5):7.0f} "
                  f"{_percentile_ms(r.latencies_s, 0.95):7.0f} "
                  f"{_percentile_ms(r.silent_s, 0.5):7.0f} {_percentile_ms(r.silent_s, 0.95):5.0f} "
                  f"{r.false_pauses:6} {r.cpu_s / r.answer_s:7.4f}",
                  flush=True)
    if len(seeds) > 1 or len(names) > 1:
        print("pooled over seeds:")
        everything: list[RoomResult] = []
        for name, results in pooled.items():
            everything += results
            _print_pooled(name, results)
        _print_pooled("all rooms", everything)


def _print_pooled(name: str, results: list[RoomResult]) -> None:
    latencies = [s for r in results for s in r.latencies_s]
    silent = [s for r in results for s in r.silent_s]
    print(f"{name:18} {'':4} {'':9} {sum(r.false_barge_ins for r in results):5} "
          f"{sum(r.echo_only_s for r in results):6.0f} "
          f"{sum(r.heard for r in results):3}/{sum(r.interruptions for r in results):<3} "
          f"{_percentile_ms(latencies, 0.5):7.0f} {_percentile_ms(latencies, 0.95):7.0f} "
          f"{_percentile_ms(silent, 0.5):7.0f} {_percentile_ms(silent, 0.95):5.0f} "
          f"{sum(r.false_pauses for r in results):6} "
          f"{sum(r.cpu_s for r in results) / sum(r.answer_s for r in results):7.4f}")


if __name__ == "__main__":
    main()
