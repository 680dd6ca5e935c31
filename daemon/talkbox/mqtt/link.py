"""The connection to the house's MQTT broker (aiomqtt): one task, reconnecting forever.

Nothing local waits on it: `publish_claim` and `publish_state` only put a message in a small
queue (a claim while disconnected is dropped: it would be stale; the state is kept and sent
on the next connection). What arrives becomes a `HouseMessage` for the shell. A broker that
cannot be reached is one warning line, then quiet retries with a growing pause; the password
is never logged (it is an `ApiKey`, which prints as a mask).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import aiomqtt

from talkbox.config import MqttConfig
from talkbox.core.arbitration import Claim
from talkbox.mqtt import discovery
from talkbox.mqtt.topics import (
    CLAIMS_TOPIC,
    HOUSE_ANNOUNCE_TOPIC,
    MAX_ANNOUNCE_CHARS,
    OFFLINE,
    ONLINE,
    DeviceTopics,
    decode_claim,
    encode_claim,
)
from talkbox.safe_text import safe_line
from talkbox.secrets import ApiKey

log = logging.getLogger("talkbox.mqtt")

RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 10.0
KEEPALIVE_SECONDS = 30
OUTGOING_LIMIT = 64


@dataclass(frozen=True)
class PeerClaim:
    claim: Claim


@dataclass(frozen=True)
class Command:
    """Home Assistant (or anyone on the broker) asks this speaker for something."""

    name: Literal["mute", "unmute", "wake", "stop", "volume"]
    args: tuple[str, ...] = ()  # as `talkbox ctl NAME ARGS...` takes them


@dataclass(frozen=True)
class Announcement:
    text: str
    house: bool  # sent to the whole house: one speaker says it (arbitrated)


HouseMessage = PeerClaim | Command | Announcement


@dataclass(frozen=True)
class StateReport:
    state: str
    muted: bool
    last_error: str
    volume: int | None = None  # percent; None: not known yet
    ringing: bool = False  # a timer or alarm rings
    next_timer: str | None = None  # when the next timer or alarm is due: ISO 8601 with offset
    next_timer_name: str = ""  # how it is named ("timer 'pasta'")

    def payload(self) -> bytes:
        return json.dumps(
            {
                "state": self.state,
                "muted": self.muted,
                "last_error": self.last_error[:250],
                "volume": self.volume,
                "ringing": self.ringing,
                "next_timer": self.next_timer,
                "next_timer_name": self.next_timer_name[:100],
            }
        ).encode()


class HouseLink:
    """This speaker's connection to the broker; `run()` until cancelled."""

    def __init__(
        self,
        settings: MqttConfig,
        password: ApiKey | None,
        *,
        version: str,
        on_message: Callable[[HouseMessage], None],
        on_connected: Callable[[bool], None],
    ) -> None:
        self.settings = settings
        self._password = password
        self._version = version
        self._on_message = on_message
        self._on_connected = on_connected
        self.topics = DeviceTopics(settings.device)
        self.connected = False
        self._outgoing: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(OUTGOING_LIMIT)
        self._state: StateReport | None = None
        self.messages_sent = 0
        self.bytes_sent = 0

    # --- what the shell calls (never waits) ---------------------------------------------------

    def publish_claim(self, claim: Claim) -> None:
        if self.connected:
            self._put(CLAIMS_TOPIC, encode_claim(claim), retain=False)

    def publish_state(self, report: StateReport) -> None:
        self._state = report
        if self.connected:
            self._put(self.topics.state, report.payload(), retain=True)

    def _put(self, topic: str, payload: bytes, *, retain: bool) -> None:
        try:
            self._outgoing.put_nowait((topic, payload, retain))
        except asyncio.QueueFull:
            log.debug("MQTT: outgoing queue full, dropped a message for %s", topic)

    # --- the connection -----------------------------------------------------------------------

    def client(self, *, identifier: str = "", will: bool = True) -> aiomqtt.Client:
        """A client for these settings (not connected); with `will`, the broker says
        "offline" for this speaker when the connection dies."""
        s = self.settings
        tls_context = None
        if s.tls:
            tls_context = ssl.create_default_context(cafile=s.ca_file or None)
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username or None,
            password=None if self._password is None else self._password.reveal(),
            identifier=identifier or f"talkbox-{s.device}",
            will=aiomqtt.Will(self.topics.availability, OFFLINE, qos=1, retain=True)
            if will
            else None,
            timeout=CONNECT_TIMEOUT_SECONDS,
            keepalive=KEEPALIVE_SECONDS,
            tls_context=tls_context,
        )

    async def run(self) -> None:
        pause = RETRY_FIRST_SECONDS
        complained = False
        where = f"{self.settings.host}:{self.settings.port}"
        while True:
            try:
                client = self.client()
            except (OSError, ssl.SSLError) as error:
                # The CA file is missing, unreadable or not PEM: the owner can fix it while
                # this speaker runs alone; it is tried again with the same backoff.
                if not complained:
                    log.error(
                        "MQTT: [mqtt] ca_file %s cannot be used (%s); this speaker answers "
                        "alone and tries again", self.settings.ca_file, safe_line(str(error))
                    )
                    complained = True
                await asyncio.sleep(pause * random.uniform(0.8, 1.2))
                pause = min(RETRY_MAX_SECONDS, pause * 2)
                continue
            try:
                async with client:
                    log.info("MQTT: connected to %s as %s", where, self.settings.device)
                    complained = False
                    pause = RETRY_FIRST_SECONDS
                    await self._serve(client)
            except aiomqtt.MqttError as error:
                # paho's messages name the host and the reason, never the password.
                if not complained:
                    log.warning(
                        "MQTT: broker %s unreachable or lost (%s); this speaker answers alone "
                        "and retries quietly", where, safe_line(str(error))
                    )
                    complained = True
                else:
                    log.debug("MQTT: still no broker at %s: %s", where, safe_line(str(error)))
            finally:
                self._set_connected(False)
            await asyncio.sleep(pause * random.uniform(0.8, 1.2))
            pause = min(RETRY_MAX_SECONDS, pause * 2)

    async def _serve(self, client: aiomqtt.Client) -> None:
        for topic in (*self.topics.commands, CLAIMS_TOPIC, HOUSE_ANNOUNCE_TOPIC):
            await client.subscribe(topic, qos=0 if topic == CLAIMS_TOPIC else 1)
        for topic, payload in discovery.configs(
            self.settings.discovery_prefix, self.settings.device, self._version
        ):
            await self._send(client, topic, payload, retain=True, qos=1)
        await self._send(client, self.topics.availability, ONLINE.encode(), retain=True, qos=1)
        if self._state is not None:
            await self._send(client, self.topics.state, self._state.payload(), retain=True, qos=1)
        while not self._outgoing.empty():  # what queued up while offline is stale
            self._outgoing.get_nowait()
        self._set_connected(True)
        sender = asyncio.create_task(self._send_loop(client))
        try:
            async for message in client.messages:
                self._receive(str(message.topic), message.payload)
            raise aiomqtt.MqttError("the message stream ended")
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await sender
            with contextlib.suppress(aiomqtt.MqttError, asyncio.CancelledError):
                # A clean stop says offline itself (the will covers a crash).
                await client.publish(
                    self.topics.availability, OFFLINE, qos=1, retain=True, timeout=1.0
                )

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload, retain = await self._outgoing.get()
            await self._send(client, topic, payload, retain=retain, qos=0)

    async def _send(
        self, client: aiomqtt.Client, topic: str, payload: bytes, *, retain: bool, qos: int
    ) -> None:
        await client.publish(topic, payload, qos=qos, retain=retain)
        self.messages_sent += 1
        self.bytes_sent += len(payload)

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self._on_connected(connected)

    def _receive(self, topic: str, payload: bytes | bytearray | int | float | str | None) -> None:
        raw = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
        message = self._interpret(topic, bytes(raw))
        if message is None:
            log.debug("MQTT: ignored a message on %s", safe_line(topic))
            return
        self._on_message(message)

    def _interpret(self, topic: str, payload: bytes) -> HouseMessage | None:
        if topic == CLAIMS_TOPIC:
            claim = decode_claim(payload)
            return None if claim is None else PeerClaim(claim)
        text = payload.decode("utf-8", errors="replace").strip()
        if topic == self.topics.muted_set:
            return {"ON": Command("mute"), "OFF": Command("unmute")}.get(text.upper())
        if topic == self.topics.volume_set:
            return self._volume_command(text, topic)
        if topic == self.topics.wake:
            return Command("wake")
        if topic == self.topics.stop:
            return Command("stop")
        if topic in (self.topics.announce, HOUSE_ANNOUNCE_TOPIC) and text:
            # Outside text: one clean line, as everything from outside (safe_text).
            spoken = safe_line(text, MAX_ANNOUNCE_CHARS)
            return Announcement(spoken, house=topic == HOUSE_ANNOUNCE_TOPIC)
        return None

    @staticmethod
    def _volume_command(text: str, topic: str) -> Command | None:
        """Home Assistant's number sends "40" (or "40.0"); anything else is one line, ignored."""
        try:
            level = float(text)
        except ValueError:
            level = math.nan
        if not (level.is_integer() and 0 <= level <= 100):  # NaN and infinities are not
            log.warning("MQTT: ignored %r on %s: the volume is a whole number from 0 to 100",
                        safe_line(text, 40), safe_line(topic))
            return None
        return Command("volume", (str(int(level)),))
