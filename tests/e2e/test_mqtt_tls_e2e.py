"""A real `talkbox run` connecting to a real Mosquitto over TLS ([mqtt] tls, ca_file), with
a certificate from a CA of the test's own: Home Assistant (a TLS client) sees it online and
its Wake button opens a session."""

from __future__ import annotations

import ssl

import pytest

from e2e.conftest import API_KEY, service_config
from support.daemon import run_daemon
from support.mosquitto import Broker, publish, retained, tls_files
from talkbox.mqtt.discovery import entities

pytestmark = pytest.mark.slow


def test_a_speaker_joins_the_house_over_tls(tmp_path, fake_service) -> None:
    chain, key, ca = tls_files(tmp_path / "certs")
    broker = Broker(tmp_path / "broker", tls=(chain, key))
    broker.start()
    home_assistant = ssl.create_default_context(cafile=str(ca))
    config = service_config(fake_service.url_base, follow_up=1.0, extra=f"""
[mqtt]
enabled = true
host = "127.0.0.1"
port = {broker.port}
device = "kitchen"
tls = true
ca_file = "{ca}"
""")
    try:
        (tmp_path / "kitchen").mkdir()
        with run_daemon(tmp_path / "kitchen", config, api_key=API_KEY) as run:
            run.wait_ready(timeout=90)
            run.wait_for_log("MQTT: connected", timeout=15)
            topic = "talkbox/kitchen/availability"
            assert retained(broker.port, topic, tls=home_assistant) == {topic: b"online"}
            configs = retained(broker.port, "homeassistant/+/kitchen/+/config", tls=home_assistant)
            assert len(configs) == len(entities("kitchen"))
            publish(broker.port, "talkbox/kitchen/wake", "PRESS", tls=home_assistant)
            run.wait_for_log("state connecting", timeout=15)
            run.wait_for_log("state idle (no follow-up)", timeout=15)
    finally:
        broker.stop()
