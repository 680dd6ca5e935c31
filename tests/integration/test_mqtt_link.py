"""The MQTT link (mqtt/link.py) against a real Mosquitto broker on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from support.ha_discovery import problems
from support.mosquitto import Broker, free_port, read_retained, tls_files
from support.mosquitto import broker as running_broker
from talkbox.config import MqttConfig
from talkbox.core.arbitration import Claim
from talkbox.mqtt.link import (
    Announcement,
    Command,
    HouseLink,
    HouseMessage,
    PeerClaim,
    StateReport,
)
from talkbox.mqtt.topics import CLAIMS_TOPIC, HOUSE_ANNOUNCE_TOPIC


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    with running_broker(tmp_path / "broker") as running:
        yield running


class Running:
    def __init__(self, link: HouseLink, task: asyncio.Task[None]) -> None:
        self.link = link
        self.task = task
        self.messages: list[HouseMessage] = []
        self.connections: list[bool] = []


async def start_link(port: int, device: str, **settings: object) -> Running:
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=port, device=device, **settings)
    holder: list[Running] = []
    link = HouseLink(
        cfg,
        None,
        version="0.1.0",
        on_message=lambda m: holder[0].messages.append(m),
        on_connected=lambda c: holder[0].connections.append(c),
    )
    running = Running(link, asyncio.create_task(link.run()))
    holder.append(running)
    return running


async def stop_link(running: Running) -> None:
    running.task.cancel()
    await asyncio.wait({running.task}, timeout=3)


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_discovery_is_retained_valid_and_the_speaker_online(broker: Broker) -> None:
    kitchen = await start_link(broker.port, "kitchen")
    await until(lambda: kitchen.link.connected, what="connected")
    kitchen.link.publish_state(StateReport("idle", False, ""))
    await asyncio.sleep(0.2)
    configs = await read_retained(broker.port, "homeassistant/#")
    assert sorted(configs) == [
        "homeassistant/binary_sensor/kitchen/ringing/config",
        "homeassistant/button/kitchen/stop/config",
        "homeassistant/button/kitchen/wake/config",
        "homeassistant/notify/kitchen/announce/config",
        "homeassistant/number/kitchen/volume/config",
        "homeassistant/sensor/kitchen/last_error/config",
        "homeassistant/sensor/kitchen/next_timer/config",
        "homeassistant/sensor/kitchen/state/config",
        "homeassistant/switch/kitchen/muted/config",
    ]
    unique_ids = set()
    for topic, payload in configs.items():
        config = json.loads(payload)
        assert problems(topic.split("/")[1], config) == [], topic
        assert config["device"]["identifiers"] == ["talkbox_kitchen"]
        assert config["availability_topic"] == "talkbox/kitchen/availability"
        unique_ids.add(config["unique_id"])
    assert len(unique_ids) == len(configs)
    own = await read_retained(broker.port, "talkbox/kitchen/#")
    assert own["talkbox/kitchen/availability"] == b"online"
    assert json.loads(own["talkbox/kitchen/state"]) == {
        "state": "idle", "muted": False, "last_error": "", "volume": None, "ringing": False,
        "next_timer": None, "next_timer_name": "",
    }
    volume = json.loads(configs["homeassistant/number/kitchen/volume/config"])
    assert volume["command_topic"] == "talkbox/kitchen/volume/set"
    assert (volume["min"], volume["max"], volume["step"], volume["mode"]) == (0, 100, 1, "slider")
    timer = json.loads(configs["homeassistant/sensor/kitchen/next_timer/config"])
    assert timer["device_class"] == "timestamp"
    await stop_link(kitchen)
    # A clean stop says offline itself.
    assert (await read_retained(broker.port, "talkbox/kitchen/availability")) == {
        "talkbox/kitchen/availability": b"offline"
    }


async def test_commands_announcements_and_peer_claims_arrive(broker: Broker) -> None:
    kitchen = await start_link(broker.port, "kitchen")
    hall = await start_link(broker.port, "hall")
    await until(lambda: kitchen.link.connected and hall.link.connected, what="both connected")
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="home-assistant") as ha:
        await ha.publish("talkbox/kitchen/muted/set", "ON")
        await ha.publish("talkbox/kitchen/wake", "PRESS")
        await ha.publish("talkbox/kitchen/stop", "PRESS")
        await ha.publish("talkbox/kitchen/muted/set", "OFF")
        await ha.publish("talkbox/kitchen/announce", "dinner is ready\x1b[2J")
        await ha.publish(HOUSE_ANNOUNCE_TOPIC, "the door is open")
        await ha.publish(CLAIMS_TOPIC, b"{not json")
    hall.link.publish_claim(Claim("hall", level_db=-31.5, score=0.97))
    await until(lambda: len(kitchen.messages) >= 7, what="kitchen's messages")
    commands = [m for m in kitchen.messages if isinstance(m, Command)]
    assert [c.name for c in commands] == ["mute", "wake", "stop", "unmute"]
    announcements = [m for m in kitchen.messages if isinstance(m, Announcement)]
    assert announcements == [
        Announcement("dinner is ready [2J", house=False),
        Announcement("the door is open", house=True),
    ]
    claims = [m.claim for m in kitchen.messages if isinstance(m, PeerClaim)]
    assert claims == [Claim("hall", level_db=-31.5, score=0.97)]
    # The hall got the house's announcement, not the kitchen's own.
    await until(lambda: any(isinstance(m, Announcement) for m in hall.messages), what="hall")
    assert [m for m in hall.messages if isinstance(m, Announcement)] == [
        Announcement("the door is open", house=True)
    ]
    await stop_link(kitchen)
    await stop_link(hall)


async def test_home_assistants_volume_slider_arrives_and_a_bad_level_is_one_line(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    kitchen = await start_link(broker.port, "kitchen")
    await until(lambda: kitchen.link.connected, what="connected")
    bad = ["loud", "101", "-1", "40.5", "nan", "inf", ""]
    with caplog.at_level(logging.WARNING, logger="talkbox.mqtt"):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="home-assistant") as ha:
            for payload in ["30", *bad, "55.0", "0", "100"]:
                await ha.publish("talkbox/kitchen/volume/set", payload, qos=1)
        await until(lambda: len(kitchen.messages) >= 4, what="the volume commands")
        await asyncio.sleep(0.2)
    assert kitchen.messages == [
        Command("volume", ("30",)), Command("volume", ("55",)), Command("volume", ("0",)),
        Command("volume", ("100",)),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(bad), warnings
    assert all("talkbox/kitchen/volume/set" in w and "0 to 100" in w for w in warnings)
    assert kitchen.link.connected and not kitchen.task.done()
    # What the daemon then reports: the level, and the next timer as Home Assistant's
    # timestamp sensor takes it.
    kitchen.link.publish_state(StateReport(
        "idle", False, "", volume=30, ringing=True,
        next_timer="2026-12-04T18:00:00+00:00", next_timer_name="timer 'pasta'"))
    await asyncio.sleep(0.2)
    state = json.loads((await read_retained(broker.port, "talkbox/kitchen/state"))[
        "talkbox/kitchen/state"])
    assert (state["volume"], state["ringing"], state["next_timer"], state["next_timer_name"]) == (
        30, True, "2026-12-04T18:00:00+00:00", "timer 'pasta'")
    await stop_link(kitchen)


async def test_a_broker_that_is_down_is_one_warning_then_found_again(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="talkbox.mqtt")
    broker = Broker(tmp_path / "broker")  # not started
    kitchen = await start_link(broker.port, "kitchen")
    await asyncio.sleep(3.5)  # several attempts
    assert kitchen.connections == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "answers alone" in warnings[0].getMessage()
    # Publishing meanwhile neither waits nor piles up.
    for _ in range(1000):
        kitchen.link.publish_claim(Claim("kitchen"))
    kitchen.link.publish_state(StateReport("listening", True, "the service said no"))
    broker.start()
    try:
        await until(lambda: kitchen.link.connected, timeout=12, what="reconnected")
        await asyncio.sleep(0.3)
        state = await read_retained(broker.port, "talkbox/kitchen/state")
        assert json.loads(state["talkbox/kitchen/state"])["muted"] is True
    finally:
        await stop_link(kitchen)
        broker.stop()


async def test_a_restarted_broker_gets_the_entities_and_state_again(
    tmp_path,
) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    kitchen = await start_link(broker.port, "kitchen")
    try:
        await until(lambda: kitchen.link.connected, what="connected")
        kitchen.link.publish_state(StateReport("listening", False, ""))
        broker.stop()
        # Its memory is lost too: only the speaker can bring the entities back.
        for stored in (tmp_path / "broker").glob("mosquitto.db*"):
            stored.unlink()
        await until(lambda: not kitchen.link.connected, what="disconnected")
        kitchen.link.publish_state(StateReport("responding", False, ""))
        broker.start()
        await until(lambda: kitchen.link.connected, timeout=12, what="reconnected")
        await asyncio.sleep(0.3)
        configs = await read_retained(broker.port, "homeassistant/#")
        assert len(configs) == 9
        own = await read_retained(broker.port, "talkbox/kitchen/#")
        assert own["talkbox/kitchen/availability"] == b"online"
        assert json.loads(own["talkbox/kitchen/state"])["state"] == "responding"
        assert kitchen.connections == [True, False, True]
    finally:
        await stop_link(kitchen)
        broker.stop()


def forget(tmp_path, port: int) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "talkbox.toml"
    config.write_text(
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\ndevice = "kitchen"\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "talkbox.mqtt.forget", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )


async def test_uninstalling_takes_the_speaker_out_of_home_assistant(tmp_path, broker) -> None:
    kitchen = await start_link(broker.port, "kitchen")
    await until(lambda: kitchen.link.connected, what="connected")
    kitchen.link.publish_state(StateReport("idle", False, ""))
    await asyncio.sleep(0.2)
    await stop_link(kitchen)
    assert len(await read_retained(broker.port, "homeassistant/#")) == 9
    done = await asyncio.to_thread(forget, tmp_path, broker.port)
    assert done.returncode == 0, done.stderr
    assert "removed kitchen from the broker (11 retained messages)" in done.stdout
    assert await read_retained(broker.port, "homeassistant/#") == {}
    assert await read_retained(broker.port, "talkbox/#") == {}


def test_uninstalling_with_the_broker_out_of_reach_does_not_fail(tmp_path) -> None:
    done = forget(tmp_path, free_port())
    assert done.returncode == 0
    assert "could not reach the MQTT broker" in done.stderr


@pytest.fixture
def tls_broker(tmp_path) -> tuple[Broker, Path]:
    """A broker that speaks TLS only, its certificate for 127.0.0.1 signed by a CA of the
    test's own; yields it and the CA's PEM file."""
    chain, key, ca = tls_files(tmp_path / "certs")
    running = Broker(tmp_path / "broker", tls=(chain, key))
    running.start()
    yield running, ca
    running.stop()


async def test_tls_with_the_owners_ca_connects_and_a_wrong_ca_file_is_one_clear_line(
    tls_broker: tuple[Broker, Path], tmp_path, caplog
) -> None:
    broker, ca_file = tls_broker
    kitchen = await start_link(broker.port, "kitchen", tls=True, ca_file=str(ca_file))
    await until(lambda: kitchen.link.connected, what="connected over TLS")
    hall = await start_link(broker.port, "hall", tls=True, ca_file=str(ca_file))
    await until(lambda: hall.link.connected, what="the hall connected over TLS")
    hall.link.publish_claim(Claim("hall", level_db=-30.0, score=0.9))
    await until(lambda: any(isinstance(m, PeerClaim) for m in kitchen.messages), what="a claim")

    # The system's CAs do not know the test's CA: refused, named, and no crash.
    with caplog.at_level(logging.WARNING, logger="talkbox.mqtt"):
        stranger = await start_link(broker.port, "attic", tls=True)
        await until(lambda: "unreachable or lost" in caplog.text, what="the refusal")
        assert "certificate" in caplog.text.lower()
        assert not stranger.link.connected and not stranger.task.done()
        missing = await start_link(
            broker.port, "cellar", tls=True, ca_file=str(tmp_path / "nowhere.pem")
        )
        await until(lambda: "ca_file" in caplog.text, what="the CA file named")
        assert str(tmp_path / "nowhere.pem") in caplog.text and not missing.task.done()
    # Without TLS, the TLS listener does not answer as a broker.
    plain = await start_link(broker.port, "garage")
    await asyncio.sleep(1.0)
    assert not plain.link.connected
    for running in (kitchen, hall, stranger, missing, plain):
        await stop_link(running)
