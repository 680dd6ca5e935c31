"""A real Mosquitto broker for tests: on a free loopback port, with a generated config, stopped
by its pid (never the system's mosquitto service)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Broker:
    """`start()`, `stop()` and `start()` again on the same port (a broker restarted)."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        sys_interval: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """`tls`: (certificate chain, private key) PEM files: the listener speaks TLS only."""
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        # Retained messages survive a restart as on a real broker (persistence on), so that a
        # restart test sees what Home Assistant would.
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Run as root (a test in a container), it would switch to the mosquitto user and
            # could then read neither the test's certificates nor write its log.
            "user root\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            # $SYS/broker/... counters every this many seconds (bench/house_scale.py).
            + (f"sys_interval {sys_interval}\n" if sys_interval else "")
            + (f"certfile {tls[0]}\nkeyfile {tls[1]}\n" if tls else "")
        )

    def start(self, timeout: float = 5.0) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mosquitto did not start: {self.log_path.read_text(errors='replace')}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM to our own broker's pid (it saves its retained messages first)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@contextmanager
def broker(directory: Path) -> Iterator[Broker]:
    running = Broker(directory)
    running.start()
    try:
        yield running
    finally:
        running.stop()


async def read_retained(
    port: int, pattern: str, settle: float = 0.5, tls: ssl.SSLContext | None = None
) -> dict[str, bytes]:
    """What the broker holds retained under `pattern`, as a new subscriber (Home Assistant
    starting up) gets it: topic -> payload."""
    import aiomqtt

    got: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port, tls_context=tls) as client:
        await client.subscribe(pattern)

        async def collect() -> None:
            async for message in client.messages:
                if message.retain and isinstance(message.payload, bytes | bytearray):
                    got[str(message.topic)] = bytes(message.payload)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collect(), settle)
    return got


def retained(
    port: int, pattern: str, settle: float = 0.5, tls: ssl.SSLContext | None = None
) -> dict[str, bytes]:
    """`read_retained`, from synchronous code."""
    return asyncio.run(read_retained(port, pattern, settle, tls))


async def publish_once(
    port: int, topic: str, payload: str | bytes, tls: ssl.SSLContext | None = None
) -> None:
    """One message from a client of its own (Home Assistant pressing a button, say)."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, tls_context=tls) as client:
        await client.publish(topic, payload, qos=1)


def publish(
    port: int, topic: str, payload: str | bytes, tls: ssl.SSLContext | None = None
) -> None:
    """`publish_once`, from synchronous code."""
    asyncio.run(publish_once(port, topic, payload, tls))


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A CA of the test's own and a certificate it signed for 127.0.0.1, as PEM files in
    `directory`: (certificate chain, private key, CA certificate)."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    chain, key, ca = directory / "broker.pem", directory / "broker.key", directory / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(chain))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    return chain, key, ca
