"""Fixtures for end-to-end runs of the real `talkbox run` process."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from support.fake_realtime import ServerThread
from support.service import serving
from support.speech import concat, silence, speak

API_KEY = "e2e-secret-key-0123456789abcdef"
DEPLOYMENT = "gpt-4o-realtime-preview"


def phrase(text: str) -> np.ndarray:  # type: ignore[type-arg]
    """`text` spoken at 16 kHz with no padding."""
    return speak(text, rate=16000, pad=(0.0, 0.0))


def one_breath(wake: str, command: str, gap: float = 0.1) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """("hey jarvis" + a short breath + the command, the command alone) at 16 kHz."""
    spoken_command = phrase(command)
    return concat(phrase(wake), silence(gap), spoken_command), spoken_command


@pytest.fixture
def reply_speech() -> bytes:
    """A spoken answer at 24 kHz, as the service would send it."""
    pcm = speak("Paris is the capital of France.", rate=24000, pad=(0.0, 0.0))
    return bytes(pcm.tobytes())


@pytest.fixture
def fake_service() -> Iterator[ServerThread]:
    with serving(API_KEY, deployments={DEPLOYMENT}) as service:
        yield service


def service_config(
    url_base: str,
    follow_up: float = 2.0,
    extra: str = "",
    transcription_model: str = "",
    *,
    echo_cancellation: bool = False,
) -> str:
    """A daemon on the test sound card talking to the fake service. Without a room
    (support.room) its microphone does not hear the speaker: no echo to cancel, and AEC3,
    never seeing an echo, would only dull the person's voice while the speaker plays."""
    return f"""
[realtime]
provider = "azure"
endpoint = "{url_base}"
deployment = "{DEPLOYMENT}"
api_version = ""
connect_timeout_seconds = 5.0
transcription_model = "{transcription_model}"

[audio]
input_device = "mic"
output_device = "speaker"
echo_cancellation = {str(echo_cancellation).lower()}

[conversation]
follow_up_seconds = {follow_up}

[control]
socket = "{{control_socket}}"

[log]
level = "info"
transcripts = true
{extra}
"""
