"""Talking over the answer in a room that echoes: the real `talkbox run`, real PyAudio over
ALSA file devices, and a simulated room (support.room) in which the microphone hears the
speaker. With echo cancellation and the service detecting turns (`server_vad`), what the
service is sent while the answer plays has been through the canceller, and the person still
interrupts the answer; with the device detecting turns, talking over the answer stops it and
the request, whole, is the next turn.

How often speech barge-in is heard, how fast and how often it interrupts itself are
measurements, not pass/fail tests: `python -m bench.echo_room` (simulated device clock) and
docs/benchmarks.md (the real process in these rooms, issue 13, still open).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest import API_KEY, service_config
from support.audio_match import uploaded_share
from support.daemon import DaemonRun, run_daemon
from support.fake_realtime import ServerThread
from support.room import PERSON_DBFS, ROOMS, long_answer, person, rms_dbfs
from support.service import sessions
from support.speech import concat, silence

pytestmark = pytest.mark.slow

MIC_RATE = 16000
SPEAKER_RATE = 24000


def room_config(url_base: str, *, barge_in: str = "speech", detection: str = "local",
                follow_up: float = 6.0) -> str:
    return service_config(url_base, follow_up=follow_up, echo_cancellation=True, extra=f"""
[turn]
detection = "{detection}"
""").replace("[conversation]", f'[conversation]\nbarge_in = "{barge_in}"')


@contextlib.contextmanager
def rooms_running(tmp_path: Path, service: ServerThread, names: list[str], config: str
                  ) -> Iterator[dict[str, DaemonRun]]:
    """One daemon per named room, all running at once (they share the fake service)."""
    with contextlib.ExitStack() as stack:
        runs = {
            name: stack.enter_context(run_daemon(tmp_path / name, config, api_key=API_KEY,
                                                 room=ROOMS[name]))
            for name in names
        }
        for run in runs.values():
            run.wait_ready()
        yield runs


# ----- the service detecting turns


def test_with_server_vad_the_service_never_hears_the_answer_and_is_interrupted(
    tmp_path: Path, fake_service: ServerThread
) -> None:
    answer_s = 30.0
    fake_service.server.reply_pcm = long_answer(answer_s)
    config = room_config(fake_service.url_base, detection="server_vad")
    name = "kitchen-drift"
    with rooms_running(tmp_path, fake_service, [name], config) as runs:
        run = runs[name]
        mic = run.microphone()
        # The command after a clear pause: "hey jarvis, tell me" in one breath lets the
        # service's VAD end a turn after "hey jarvis" when its pause is near silence_duration_ms
        # (and under load the chime's echo keeps the device's turn open over it): then the
        # command itself would be counted below as sent while the answer played.
        mic.speak(concat(silence(0.5), person("hey jarvis"), silence(1.5),
                         person("tell me a long story")).tobytes())
        run.wait_for_log("state responding", timeout=30)
        [session] = sessions(fake_service)
        uploaded_before = len(session.appended_audio)
        heard_before = len(session.server_events_of("input_audio_buffer.speech_started"))
        time.sleep(12.0)  # the answer plays (echo as loud as a person); nobody talks
        [session] = sessions(fake_service)
        uploaded_during_answer = bytes(session.appended_audio[uploaded_before:])
        heard_during_answer = len(
            session.server_events_of("input_audio_buffer.speech_started")) - heard_before
        mic.speak(person("what is the weather like tomorrow").tobytes())
        run.wait_for_log("state listening (interrupted)", timeout=5)
        mic.wait_spoken()
        time.sleep(2.0)
        log = run.log()
    # Raw, the echo reaches the microphone as loud as a person (-26 dBFS). What is sent while
    # the answer plays (nothing, mostly; under load now and then a false start, which the
    # service's VAD may take for speech: issue 13) has been through the canceller.
    print(f"uploaded while the answer played: {len(uploaded_during_answer) / 48000:.2f} s; "
          f"the service heard speech in it {heard_during_answer} times")
    if uploaded_during_answer:
        assert rms_dbfs(uploaded_during_answer) <= PERSON_DBFS + ROOMS[name].echo_gain_db - 6
    assert log.count("state listening (interrupted)") >= 1, log
    [session] = sessions(fake_service)
    assert len(session.commits) >= 2  # the question, then the interrupting request



# ----- the device detecting turns


def test_talking_over_the_answer_stops_it_and_the_request_is_the_next_turn(
    tmp_path: Path, fake_service: ServerThread
) -> None:
    fake_service.server.reply_pcm = long_answer(30.0)
    config = room_config(fake_service.url_base)  # barge_in = "speech", local detection
    name = "kitchen-drift"  # the echo as loud as the person, 100 ppm of drift
    request = person("who wrote the odyssey", "en-gb-x-rp", 140)
    with rooms_running(tmp_path, fake_service, [name], config) as runs:
        run = runs[name]
        mic = run.microphone()
        mic.speak(concat(silence(0.5), person("hey jarvis, tell me a long story")).tobytes())
        run.wait_for_log("state responding", timeout=30)
        time.sleep(6.0)  # the answer plays; the canceller has learnt the room
        mic.speak(request.tobytes())
        run.wait_for_log("state listening (interrupted)", timeout=5)
        spoken_at = mic.utterance_starts[-1]
        mic.wait_spoken()
        time.sleep(2.0)
        log = run.log()
        sounding = run.drainer.sounding(spoken_at)
    # The answer fell silent soon after the person began (the benchmark measures how soon:
    # bench.barge_in_live): its last sound before a silence (the answer to the request comes
    # after the turn's end, more than half a second later).
    assert sounding, "the answer was not playing when the person spoke"
    last_sound = next(at for at, after in zip(sounding, [*sounding[1:], math.inf], strict=True)
                      if after - at >= 0.5)
    assert last_sound - spoken_at < 1.0, last_sound - spoken_at
    assert log.count("state listening (interrupted)") == 1, log
    [session] = sessions(fake_service)
    assert len(session.commits) == 2  # the question, then the interrupting request
    # The request, from its first syllable, is the next turn: its voiced samples are in it.
    assert uploaded_share(request, [bytes(session.commits[1].audio)]) >= 0.95
