"""A house of three real `talkbox run` processes on one real Mosquitto broker: each has its
own FIFO microphone and hears the same "hey jarvis" at its own level; exactly one of them
opens a session with the fake service, the one that heard it loudest. With the broker gone
each answers alone; a daemon killed with SIGKILL shows offline (its last will)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from e2e.conftest import API_KEY, one_breath, phrase, service_config
from support.daemon import DaemonRun, LiveMicrophone, run_daemon, wait_until
from support.fake_realtime import ServerThread
from support.mosquitto import Broker, publish, retained
from support.mosquitto import broker as running_broker
from support.service import sessions
from support.speech import concat, silence
from talkbox.core.alarms import new_timer
from talkbox.mqtt.discovery import entities
from talkbox.mqtt.topics import HOUSE_ANNOUNCE_TOPIC
from talkbox.tools.alarms import AlarmStore

pytestmark = pytest.mark.slow

NAMES = ("attic", "hall", "kitchen")
# The loudest, and the others 6 and 12 dB below it: speakers in other rooms.
GAINS = (1.0, 0.5, 0.25)
# Each of the three is the loudest three times.
TRIALS = 9


def config(service: ServerThread, port: int, device: str) -> str:
    return service_config(
        service.url_base,
        follow_up=1.0,
        extra=f"""
[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
device = "{device}"
arbitration_ms = 150
""",
    )


def availability(port: int, device: str) -> bytes | None:
    """The retained availability of `device`, as Home Assistant reads it."""
    topic = f"talkbox/{device}/availability"
    return retained(port, topic).get(topic)


Speakers = dict[str, tuple[DaemonRun, LiveMicrophone]]


@contextlib.contextmanager
def house(tmp_path: Path, service: ServerThread, broker: Broker) -> Iterator[Speakers]:
    with contextlib.ExitStack() as stack:
        runs = {}
        for name in NAMES:
            (tmp_path / name).mkdir()
            runs[name] = stack.enter_context(
                run_daemon(tmp_path / name, config(service, broker.port, name), api_key=API_KEY)
            )
        speakers = {}
        for name, run in runs.items():
            run.wait_ready(timeout=90)
            speakers[name] = (run, run.microphone())
        for run, _ in speakers.values():
            run.wait_for_log("MQTT: connected", timeout=15)
        yield speakers


def say_everywhere(speakers: Speakers, loudest: str, wake: np.ndarray) -> None:
    others = [name for name in NAMES if name != loudest]
    for name, gain in zip([loudest, *others], GAINS, strict=True):
        pcm = (wake.astype(np.float64) * gain).astype(np.int16)
        speakers[name][1].speak(pcm.tobytes())


def connecting(run: DaemonRun) -> int:
    return run.log().count("state connecting")


def test_only_the_loudest_speaker_answers_and_each_alone_without_a_broker(
    tmp_path, fake_service
) -> None:
    wake = concat(silence(1.0), phrase("hey jarvis"), silence(0.5))
    with (
        running_broker(tmp_path / "broker") as broker,
        house(tmp_path, fake_service, broker) as speakers,
    ):
        for trial in range(TRIALS):
            loudest = NAMES[trial % len(NAMES)]
            before = {name: connecting(run) for name, (run, _) in speakers.items()}
            winner = speakers[loudest][0]
            idle_before = winner.log().count("state idle")
            say_everywhere(speakers, loudest, wake)
            winner.wait_for_log("state connecting", count=before[loudest] + 1, timeout=15)
            # Its conversation is over (no command: the follow-up ran out); the others
            # decided within the window long before.
            winner.wait_for_log("state idle", count=idle_before + 1, timeout=15)
            after = {name: connecting(run) for name, (run, _) in speakers.items()}
            opened = [name for name in NAMES if after[name] > before[name]]
            assert opened == [loudest], f"trial {trial}: {opened} answered"
            time.sleep(2.0)  # past the wake word's refractory time
        assert len(sessions(fake_service)) == TRIALS

        # The broker is gone: each one hears the wake word and answers, alone, at once.
        broker.stop()
        for run, _ in speakers.values():
            run.wait_for_log("unreachable or lost", timeout=15)
        before = {name: connecting(run) for name, (run, _) in speakers.items()}
        say_everywhere(speakers, "kitchen", wake)
        for name, (run, _) in speakers.items():
            run.wait_for_log("state connecting", count=before[name] + 1, timeout=15)
            assert "alone" in run.log().split("answering the wake")[-1].splitlines()[0]
        wait_until(lambda: len(sessions(fake_service)) == TRIALS + 3, 15, "three sessions")

        # Back again; then a daemon killed outright is shown offline by its last will.
        broker.start()
        for run, _ in speakers.values():
            run.wait_for_log("MQTT: connected", count=2, timeout=30)
        # (Each says "online" just after that line: on a busy machine the fresh-root test
        # read the restarted broker's retained "offline" from before in between.)
        for name in NAMES:
            wait_until(lambda n=name: availability(broker.port, n) == b"online", 10,
                       f"the {name} online again")
        hall = speakers["hall"][0]
        os.kill(hall.process.pid, signal.SIGKILL)
        hall.process.wait(timeout=5)
        wait_until(
            lambda: availability(broker.port, "hall") == b"offline",
            10, "the hall offline",
        )
        assert availability(broker.port, "kitchen") == b"online"


def opened_sessions(speakers: Speakers) -> dict[str, int]:
    return {name: connecting(run) for name, (run, _) in speakers.items()}


def only_one_opened(speakers: Speakers, before: dict[str, int], who: str = "") -> str:
    """One speaker (`who`, if given) opens a session and its conversation ends; no one else
    opens one. Returns its name."""
    def newly_opened() -> list[str]:
        after = opened_sessions(speakers)
        return [name for name in NAMES if after[name] > before[name]]

    wait_until(lambda: bool(newly_opened()), 15, "a session")
    [first] = newly_opened()
    run = speakers[first][0]
    # Its conversation lasts a second at least (the follow-up time): not idle yet.
    run.wait_for_log("state idle", count=run.log().count("state idle") + 1, timeout=30)
    assert newly_opened() == [who or first], f"{newly_opened()} opened a session"
    return first


def test_an_announcement_is_spoken_through_the_service_by_one_speaker(
    tmp_path, fake_service, reply_speech
) -> None:
    fake_service.server.reply_pcm = reply_speech
    with (
        running_broker(tmp_path / "broker") as broker,
        house(tmp_path, fake_service, broker) as speakers,
    ):
        # The house's announce topic: one speaker says it through the service.
        before = opened_sessions(speakers)
        publish(broker.port, HOUSE_ANNOUNCE_TOPIC, "Dinner is ready.")
        wait_until(lambda: sum(opened_sessions(speakers).values()) > sum(before.values()),
                   15, "an announcement's session")
        [who] = [n for n, count in opened_sessions(speakers).items() if count > before[n]]
        speaker = speakers[who][0]
        speaker.wait_for_log("state idle (announcement made)", timeout=30)
        [session] = sessions(fake_service)
        [create] = session.client_events_of("response.create")
        assert "Dinner is ready." in create["response"]["instructions"]
        # (Drained by the daemon's count; the FIFO's reader gets the last of it after.)
        wait_until(lambda: reply_speech in speaker.heard(), 5, "the service's voice played")
        assert session.client_events_of("input_audio_buffer.commit") == []
        time.sleep(0.5)
        assert sum(opened_sessions(speakers).values()) == sum(before.values()) + 1
        for name, (run, _) in speakers.items():
            if name != who:
                assert f"{who} answers the announce" in run.log()
                assert reply_speech not in run.heard()

        # The attic is in a conversation: an idle speaker says the next one (hall, the
        # first name of the idle two), not the attic.
        attic = speakers["attic"][0]
        listening = attic.log().count("state listening")
        assert attic.ctl("wake").returncode == 0
        attic.wait_for_log("state listening", count=listening + 1, timeout=15)
        publish(broker.port, HOUSE_ANNOUNCE_TOPIC, "The post has come.")
        hall = speakers["hall"][0]
        made = hall.log().count("(announcement made)")
        hall.wait_for_log("announcement: The post has come.", timeout=15)
        hall.wait_for_log("(announcement made)", count=made + 1, timeout=30)
        assert "The post has come." not in attic.log()
        assert "The post has come." in str(
            sessions(fake_service)[-1].client_events_of("response.create"))

        # Home Assistant's notify entity of the hall: the hall says it, no one else.
        before = opened_sessions(speakers)
        publish(broker.port, "talkbox/hall/announce", "The washing is done.")
        only_one_opened(speakers, before, "hall")
        assert "The washing is done." in str(
            sessions(fake_service)[-1].client_events_of("response.create"))



def test_asked_wakes_open_one_session_and_a_broker_restart_loses_nothing(
    tmp_path, fake_service, reply_speech
) -> None:
    fake_service.server.reply_pcm = reply_speech
    with (
        running_broker(tmp_path / "broker") as broker,
        house(tmp_path, fake_service, broker) as speakers,
    ):
        # `talkbox ctl wake` on two speakers at once, and Home Assistant's Wake button:
        # each time one session.
        before = opened_sessions(speakers)
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda n: speakers[n][0].ctl("wake"), ["kitchen", "hall"]))
        assert all(r.returncode == 0 for r in replies), replies
        answered = only_one_opened(speakers, before)
        other = "kitchen" if answered == "hall" else "hall"
        assert f"{answered} answers the wake" in speakers[other][0].log()
        before = opened_sessions(speakers)
        publish(broker.port, "talkbox/kitchen/wake", "PRESS")
        only_one_opened(speakers, before, "kitchen")
        count = len(sessions(fake_service))
        assert count == 2

        # The broker restarted in the middle of a conversation: it goes on, and Home
        # Assistant gets the entities back.
        attic, attic_mic = speakers["attic"]
        idle_before = attic.log().count("state idle")
        attic_mic.speak(concat(silence(0.5), phrase("hey jarvis"), silence(0.2),
                               phrase("what is the capital of france"), silence(1.5)).tobytes())
        attic.wait_for_log("state connecting", count=before["attic"] + 1, timeout=15)
        broker.stop()
        attic.wait_for_log("unreachable or lost", timeout=15)
        broker.start()
        attic.wait_for_log("state responding", timeout=20)
        wait_until(lambda: reply_speech in attic.heard(), 30, "the answer played")
        attic.wait_for_log("state idle", count=idle_before + 1, timeout=30)
        for run, _ in speakers.values():
            run.wait_for_log("MQTT: connected", count=2, timeout=30)
        assert len(sessions(fake_service)) == count + 1
        assert sessions(fake_service)[-1].client_events_of("input_audio_buffer.commit")
        for name in NAMES:
            assert availability(broker.port, name) == b"online"
        configs = retained(broker.port, "homeassistant/+/attic/+/config")
        assert len(configs) == len(entities("attic"))


def house_state(port: int, device: str) -> dict[str, object]:
    """The speaker's retained state, as Home Assistant's entities read it."""
    topic = f"talkbox/{device}/state"
    payload = retained(port, topic).get(topic)
    return {} if payload is None else dict(json.loads(payload))


def test_home_assistant_sees_and_sets_the_volume_and_sees_timers_and_the_ring(
    tmp_path, fake_service
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    # A timer that came due while no talkbox ran: it rings as soon as the daemon is ready.
    store = AlarmStore(state_dir / "alarms.json")
    missed = dt.datetime.now().astimezone() - dt.timedelta(seconds=90)
    store.add(lambda pending: new_timer(60, "eggs", missed, pending))
    fake_service.server.reply_duration_ms = 200
    with running_broker(tmp_path / "broker") as broker:
        (tmp_path / "kitchen").mkdir()
        with run_daemon(tmp_path / "kitchen", config(fake_service, broker.port, "kitchen"),
                        api_key=API_KEY, extra_env={"STATE_DIRECTORY": str(state_dir)}) as run:
            microphone = run.microphone()
            run.wait_ready(timeout=90)
            run.wait_for_log("MQTT: connected", timeout=15)
            wait_until(lambda: house_state(broker.port, "kitchen").get("ringing") is True,
                       10, "ringing on")
            # Home Assistant's Stop button stops the ring, as `talkbox ctl stop` does.
            publish(broker.port, "talkbox/kitchen/stop", "PRESS")
            run.wait_for_log("ringing stopped: talkbox ctl stop", timeout=5)
            wait_until(lambda: house_state(broker.port, "kitchen").get("ringing") is False,
                       5, "ringing off")

            publish(broker.port, "talkbox/kitchen/volume/set", "30")
            wait_until(lambda: house_state(broker.port, "kitchen").get("volume") == 30,
                       5, "the volume in the state")
            publish(broker.port, "talkbox/kitchen/volume/set", "loud")
            run.wait_for_log("ignored 'loud' on talkbox/kitchen/volume/set", timeout=5)
            status = run.ctl("status")

            fake_service.server.function_calls = [
                [("set_timer", json.dumps({"duration_seconds": 600, "label": "pasta"}))]]
            idle_before = run.log().count("state idle")
            spoken, _ = one_breath("hey jarvis", "set a timer for pasta")
            microphone.speak(concat(silence(0.5), spoken, silence(1.0)).tobytes())
            run.wait_for_log("tool set_timer answered", timeout=30)
            set_at = time.time()
            wait_until(lambda: house_state(broker.port, "kitchen").get("next_timer"),
                       5, "the next timer")
            after_set = house_state(broker.port, "kitchen")
            run.wait_for_log("state idle", count=idle_before + 1, timeout=30)
            fake_service.server.function_calls = [
                [("cancel_timer", json.dumps({"label": "pasta"}))]]
            spoken, _ = one_breath("hey jarvis", "cancel the pasta timer")
            microphone.speak(concat(silence(0.5), spoken, silence(1.0)).tobytes())
            run.wait_for_log("tool cancel_timer answered", timeout=30)
            wait_until(lambda: house_state(broker.port, "kitchen").get("next_timer") is None,
                       5, "no next timer")
            code, _ = run.terminate()
            log = run.log()
    assert code == 0, log
    assert "volume: 30" in status.stdout, status.stdout
    assert after_set["next_timer_name"] == "timer 'pasta'", after_set
    due = dt.datetime.fromisoformat(str(after_set["next_timer"]))
    assert due.utcoffset() is not None, "Home Assistant's timestamp needs an offset"
    assert abs(due.timestamp() - (set_at + 600)) < 15, (after_set, set_at)
    assert fake_service.server.protocol_violations == [], log
